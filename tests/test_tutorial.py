"""docs/tutorial.ipynb runs, start to end, on a catalog of the tiny sky (so it cannot rot)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from iic_survey.output import margin
from iic_survey.testing.catalog import fake_results, write_catalog

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


@pytest.mark.slow
def test_tutorial_notebook_runs(tmp_path: Path, tiny_sky: Any, monkeypatch) -> None:
    cols = ["cntr", "designation", "ra", "dec", "w1mpro", "w2mpro", "w3mpro"]
    src = pd.read_parquet(tiny_sky.catalog_url, columns=cols)
    rows, _ = fake_results(len(src), seed=11)
    for name in cols:
        rows[name] = src[name].to_numpy()
    out = str(tmp_path / "catalog")
    write_catalog(out, rows, order=5, run_args={"images": tiny_sky.root})
    margin.build_margin(out, 10.0)
    monkeypatch.setenv("IIC_TUTORIAL_CATALOG", out)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": os.getcwd()}}).execute()  # fmt: skip
    text = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert f"{len(rows)} rows in" in text
    assert "margin: iic_allwise_10arcs 10.0 arcsec" in text
    assert "equal: True" in text
    assert "cutouts: " in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the map and the cutout grid
