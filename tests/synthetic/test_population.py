"""iic_survey.synthetic.population: what a field holds, drawn from a seed.

The landmarks the population aims at (docs/design.md §2): classes in the proportions asked for,
stars at W1-W2 ~ 0 and W2-W3 ~ 0, quasars red in W1-W2, galaxies red in W2-W3 but not in W1-W2;
and the trouble real catalogs have, in the amounts drawn.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iic_survey.core.constants import CLASSES
from iic_survey.synthetic import population
from iic_survey.synthetic.rendering import Field

FIELD = Field(index=3, ra0=150.0, dec0=2.0, half=0.1, crops={})  # only its box is used
FRACTIONS = (0.3, 0.3, 0.4)  # galaxies, quasars, stars (CLASSES' order)


def _field(seed: int, n: int = 2000, artefacts: bool = True) -> pd.DataFrame:
    return population.draw_field(np.random.default_rng(seed), FIELD, n, FRACTIONS, artefacts)


def test_a_seed_fixes_the_field() -> None:
    pd.testing.assert_frame_equal(_field(1), _field(1))
    assert not _field(1)[["ra", "w1_true"]].equals(_field(2)[["ra", "w1_true"]])


def test_classes_follow_the_fractions_asked_for() -> None:
    objs = population.draw_population(np.random.default_rng(0), 20_000, FRACTIONS)
    share = objs["class"].value_counts(normalize=True)
    for name, want in zip(CLASSES, FRACTIONS, strict=True):
        assert share[name] == pytest.approx(want, abs=0.015), name


def test_colours_sit_where_the_published_loci_are() -> None:
    objs = population.draw_population(np.random.default_rng(0), 20_000, FRACTIONS)
    w12 = (objs["w1_true"] - objs["w2_true"]).groupby(objs["class"]).median()
    w23 = (objs["w2_true"] - objs["w3_true"]).groupby(objs["class"]).median()
    assert abs(w12["star"]) < 0.1 and abs(w23["star"]) < 0.3
    assert w12["quasar"] > 0.8  # Stern et al. (2012): W1-W2 >= 0.8
    assert 2.2 < w23["quasar"] < 4.2  # the Jarrett et al. (2011) wedge
    assert w12["galaxy"] < 0.4 and w23["galaxy"] > 1.5
    # ... yet they overlap: a fifth of quasars are not in the Stern cut
    quasars = objs[objs["class"] == "quasar"]
    assert 0.1 < float(((quasars["w1_true"] - quasars["w2_true"]) < 0.8).mean()) < 0.5


def test_the_field_holds_its_catalogued_rows_and_their_trouble() -> None:
    objs = _field(5)
    listed = objs[objs["catalogued"]]
    assert len(listed) == 2000 and (objs["field"] == 3).all()
    ra_lo, dec_lo = FIELD.box(np.array([-1.0]), np.array([-1.0]))
    ra_hi, dec_hi = FIELD.box(np.array([1.0]), np.array([1.0]))
    assert listed["ra"].between(ra_lo[0], ra_hi[0]).all()
    assert listed["dec"].between(dec_lo[0], dec_hi[0]).all()
    # Unlisted companions: one per hidden-companion row, 4 % of the rows, 1.5-5" away.
    assert (~objs["catalogued"]).sum() == listed["hidden_companion"].sum() == 80
    # Empty centres (1.5 %): catalogued 4 mag brighter than anything drawn at the position.
    empty = listed[listed["empty_centre"]]
    assert len(empty) == 30
    np.testing.assert_allclose(empty["w1_true"] - empty["w1_cat"], 4.0)
    # Off-centre rows (2 %): the true position lies the drawn offset away.
    off = listed[listed["offset_arcsec"] > 0]
    assert len(off) == 40 and off["offset_arcsec"].between(2.0, 5.0).all()
    dra = (off["ra_true"] - off["ra"]) * np.cos(np.radians(off["dec"]))
    sep = np.hypot(dra, off["dec_true"] - off["dec"]) * 3600
    np.testing.assert_allclose(sep, off["offset_arcsec"], rtol=1e-6)
    plain = listed[(listed["offset_arcsec"] == 0)]
    assert (plain["ra_true"] == plain["ra"]).all()


def test_no_bright_stars_without_artefacts() -> None:
    assert not _field(5, artefacts=False)["bright_star"].any()
