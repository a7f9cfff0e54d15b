"""iic_survey.output.hatsfiles: the HATS metadata files, as the ``hats`` library reads them back.

The ``_metadata`` files it streams are compared with hats' own in
tests/output/test_metadata_stream.py; here, the small files, on a local and a memory file system
(where they go through the scratch folder and :func:`~iic_survey.core.atomic.write_atomic`).
"""

from __future__ import annotations

import pathlib
import uuid

import numpy as np
import pytest
from hats.catalog import CollectionProperties, PartitionInfo, TableProperties
from hats.io import file_io
from upath import UPath

from iic_survey.output import hatsfiles


@pytest.fixture(params=["file", "memory"])
def where(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    """A catalog folder on local disk or in memory."""
    if request.param == "file":
        yield UPath(tmp_path / "cat")
        return
    root = UPath(f"memory:///hatsfiles/{uuid.uuid4().hex}")
    yield root
    root.fs.rm(root.path, recursive=True)


def test_coverage_map_adds_the_markers_histograms() -> None:
    counts = hatsfiles.coverage_map([[[0, 2], [5, 1]], [], [[5, 3], [47, 7]]], order=1)
    assert counts.shape == (48,) and counts.dtype == np.int64
    assert counts[[0, 5, 47]].tolist() == [2, 4, 7] and counts.sum() == 13


def test_partition_info_is_what_hats_reads(where) -> None:
    root = where
    hatsfiles.write_partition_info(root, [(2, 40), (1, 5), (2, 3)])
    info = PartitionInfo.read_from_csv(root / "partition_info.csv")
    # In sky order, as hats sorts them: (2, 3) lies before (1, 5), which covers (2, 20..23).
    assert [(p.order, p.pixel) for p in info.get_healpix_pixels()] == [(2, 3), (1, 5), (2, 40)]


def test_properties_round_trip_and_hats_properties_is_written(where) -> None:
    root = where
    props = TableProperties.model_validate(
        {
            "obs_collection": "iic_allwise",
            "dataproduct_type": "object",
            "hats_nrows": 12,
            "hats_col_ra": "ra",
            "hats_col_dec": "dec",
            "hats_order": 5,
        }
    )
    hatsfiles.write_properties(root, props)
    assert (root / "properties").exists() and (root / "hats.properties").exists()
    back = hatsfiles.read_properties(root)
    assert (back.catalog_name, back.total_rows, int(back.hats_order)) == ("iic_allwise", 12, 5)


def test_coverage_files_hold_the_counts(where) -> None:
    root = where
    counts = hatsfiles.coverage_map([[[3, 9], [100, 1]]], order=3)
    hatsfiles.write_coverage(root, counts)
    point_map = file_io.read_fits_image(root / "point_map.fits")
    np.testing.assert_array_equal(point_map, counts)
    assert (root / "skymap.fits").exists()


def test_collection_names_the_first_margin_and_index_as_defaults(where) -> None:
    root = where
    hatsfiles.write_collection(root, "iic", "iic_allwise", ["m10", "m5"],
                               {"cntr": "cntr_index", "designation": "des_index"})  # fmt: skip
    props = CollectionProperties.read_from_dir(root)
    assert props.hats_primary_table_url == "iic_allwise"
    assert (props.all_margins, props.default_margin) == (["m10", "m5"], "m10")
    assert props.default_index == "cntr"
    assert props.all_indexes == {"cntr": "cntr_index", "designation": "des_index"}
    hatsfiles.write_collection(root, "iic", "iic_allwise", [])
    props = CollectionProperties.read_from_dir(root)
    assert props.all_margins is None and props.default_margin is None
