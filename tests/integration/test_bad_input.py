"""Bad input across the flow, met where a user meets it: ``jobs/classify_sky.py``'s ``main``.

Each kind of bad input must end in what a user can act on, and lose nothing else:

* a clear error that names the problem (exit status != 0, nothing published), or
* a per-row flag: the row is kept once, with null probabilities, and every other row is
  classified as usual.

Kinds covered here (unit-level checks of the same faults live in test_catalog.py, test_cutouts.py,
test_model.py and test_output.py): a missing column, wrong dtypes, NaN coordinates, a duplicate
``cntr``, an empty pixel, a corrupt Parquet partition, a missing tile, a FITS without WCS, a model
directory from another architecture or a newer format, an output path holding something else,
an order outside 0..29, and a checkpoint that is not a plain state_dict (refused by
``torch.load(weights_only=True)``, never unpickled).

The figures (faults injected, rows in / out / lost / duplicated) are written to
``$IIC_RELIABILITY_DIR/reliability_bad_input.json`` (default: pytest's basetemp) for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS

from iic_survey.core.constants import CLASSES
from iic_survey.core.flags import UNCLASSIFIABLE, QualityFlag
from iic_survey.model import directory
from iic_survey.output import reader as export
from iic_survey.synthetic import skyfiles
from iic_survey.testing.model import make_model_dir
from iic_survey.training import checkpoints
from tests.fixtures.jobs import load_job

SKY = skyfiles.SkyConfig(
    seed=7,
    n_sources=501,
    fields=skyfiles.DEFAULT_FIELDS[1:],
    field_size_deg=0.15,
    artefacts=False,  # no flagged rows by design: every flag in a damaged run is our damage
)
"""501 sources in three fields: a tile corner (4 tiles, 1 order-5 pixel), a pixel corner
(2 tiles, 4 pixels) and one at high declination (2 tiles, 2 pixels)."""

PROBS = [f"p_{c}" for c in CLASSES]
NAN_PIXEL = 11483
"""The order-5 pixel whose rows get NaN / out-of-range coordinates."""
EMPTY_PIXEL = 11480
"""An order-5 pixel near the sky's, given an empty partition file."""
MISSING_TILE = "1386p560_ac51"
"""The tile whose three band files are deleted (most of its rows lie on no other tile)."""
NO_WCS_TILE = "3180m531_ac51"
"""The tile whose W2 file loses its WCS keywords."""
STAMP_MARGIN_PX = 20
"""Half a 37-px stamp plus a little: rows this close to a damaged tile may use it."""


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def job(repo_root: Path) -> ModuleType:
    """jobs/classify_sky.py as a module (jobs/ is not a package)."""
    return load_job(repo_root / "jobs" / "classify_sky.py", "classify_sky_bad_input")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """Per-kind figures; written as JSON (and printed) when the module's tests are done."""
    rows: list[dict[str, Any]] = []
    yield rows
    folder = Path(os.environ.get("IIC_RELIABILITY_DIR") or tmp_path_factory.getbasetemp())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reliability_bad_input.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"\nbad-input figures ({path}):\n{json.dumps(rows, indent=1)}")


@pytest.fixture(scope="module")
def sky(tmp_path_factory: pytest.TempPathFactory) -> skyfiles.SkyManifest:
    return skyfiles.write_sky(tmp_path_factory.mktemp("bad_input") / "sky", SKY)


@pytest.fixture(scope="module")
def model_dir(sky: skyfiles.SkyManifest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained tiny model: what it says does not matter here, only that rows get through."""
    return make_model_dir(
        tmp_path_factory.mktemp("bad_model") / "m", sky.images_url, sky.catalog_url
    )


def copy_sky(sky: skyfiles.SkyManifest, dest: Path) -> Path:
    """A private copy of the sky to damage; returns its catalog root."""
    shutil.copytree(sky.root, dest)
    return Path(skyfiles.catalog_url(dest))


def partition_path(cat_root: Path, k5: int) -> Path:
    return cat_root / f"healpix_k0={k5 // 1024}" / f"healpix_k5={k5}" / "part0.snappy.parquet"


def rewrite_catalog(
    cat_root: Path,
    edit: Callable[[int, pa.Table], pa.Table] = lambda k5, t: t,
    add: dict[int, pa.Table] | None = None,
) -> None:
    """Apply ``edit`` to every partition, add partitions, and rebuild the two metadata files
    from the files' footers (the way IRSA's and the synthetic catalogs carry them)."""
    for path in sorted(cat_root.glob("healpix_k0=*/healpix_k5=*/*.parquet")):
        k5 = int(path.parent.name.split("=")[1])
        pq.write_table(edit(k5, pq.ParquetFile(path).read()), path, compression="snappy")
    for k5, table in (add or {}).items():
        path = partition_path(cat_root, k5)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="snappy")
    collected, schema = [], None
    for path in sorted(cat_root.glob("healpix_k0=*/healpix_k5=*/*.parquet")):
        md = pq.read_metadata(path)
        md.set_file_path(path.relative_to(cat_root).as_posix())
        collected.append(md)
        schema = schema or pq.read_schema(path)
    assert schema is not None
    pq.write_metadata(schema, cat_root / "_common_metadata")
    pq.write_metadata(schema, cat_root / "_metadata", metadata_collector=collected)


def job_args(
    catalog: Path | str, model: str, out: Path | str, *extra: str, order: str = "5"
) -> list[str]:
    return [
        "--catalog", str(catalog), "--images", "local", "--model", model, "--output", str(out),
        "--healpix-order", order, "--chunk-size", "200", "--inference-actors", "1", *extra,
    ]  # fmt: skip


def run_job(
    job: ModuleType, capsys: pytest.CaptureFixture[str], args: list[str]
) -> tuple[int, str]:
    """``main(args)`` -> (exit status, stdout + stderr). A traceback instead of a status fails."""
    capsys.readouterr()
    try:
        code = job.main(args)
    except Exception as exc:
        pytest.fail(
            f"classify_sky.main raised {type(exc).__name__} instead of printing an error and "
            f"returning a status: {str(exc)[:500]}"
        )
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def catalog_rows(cat_root: Path) -> pd.DataFrame:
    """Every input row (cntr, coadd_id, ra, dec, partition), read without our reader."""
    frames = []
    for path in sorted(cat_root.glob("healpix_k0=*/healpix_k5=*/*.parquet")):
        df = pq.ParquetFile(path).read(columns=["cntr", "coadd_id", "ra", "dec"]).to_pandas()
        frames.append(df.assign(k5=int(path.parent.name.split("=")[1])))
    return pd.concat(frames, ignore_index=True)


def published(out: Path | str) -> pd.DataFrame:
    """What a reader sees (committed pixels only), sorted by cntr."""
    return export.read(str(out)).sort_values("cntr", ignore_index=True)


def assert_nothing_published(out: Path) -> None:
    # anywhere under the output: the main catalog's and the margin's dataset/ alike
    assert not list(out.rglob("Npix=*.parquet")), "a pixel was published"
    assert not list(out.glob("_done/*/*.json")), "a pixel was committed"


def flagged(df: pd.DataFrame, flag: int) -> np.ndarray:
    return (df["quality_flags"].to_numpy(np.int64) & int(flag)) != 0


def on_tile(rows: pd.DataFrame, header: fits.Header, margin_px: float) -> np.ndarray:
    """Rows whose position falls on the image of ``header`` (or within ``margin_px`` of it),
    by astropy's WCS: an independent account of which rows a damaged tile can touch."""
    wcs = WCS(header)
    ra, dec = rows["ra"].to_numpy(np.float64), rows["dec"].to_numpy(np.float64)
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90)
    x = np.full(len(rows), np.nan)
    y = np.full(len(rows), np.nan)
    x[ok], y[ok] = wcs.world_to_pixel_values(ra[ok], dec[ok])
    nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
    with np.errstate(invalid="ignore"):
        return (
            (x > -0.5 - margin_px)
            & (x < nx - 0.5 + margin_px)
            & (y > -0.5 - margin_px)
            & (y < ny - 0.5 + margin_px)
        )


def tile_file(root: Path, coadd_id: str, band: int) -> Path:
    return root / skyfiles.IMAGES_PREFIX / skyfiles.tile_relpath(coadd_id, band)


# ------------------------------------------------------ errors before any work (no Ray run)


@pytest.mark.parametrize("order", ["-1", "30"])
def test_order_outside_0_29_is_a_clear_error(job, sky, model_dir, tmp_path, capsys, ledger, order):
    out = tmp_path / "out"
    code, msg = run_job(job, capsys, job_args(sky.catalog_url, model_dir, out, order=order))
    assert code == 2 and "0..29" in msg and order in msg, msg
    assert not out.exists()
    ledger.append({"kind": f"order {order}", "behaviour": "error (exit 2)", "written": "nothing"})


def test_pixel_outside_its_order_is_a_clear_error(job, sky, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, msg = run_job(
        job, capsys, job_args(sky.catalog_url, model_dir, out, "--pixels", "12288")
    )  # order 5 has pixels 0..12287
    assert code == 2 and "12288" in msg, msg
    assert not out.exists()


# ----------------------------------------------- errors found when the inputs are opened


@pytest.mark.slow
def test_missing_column_is_named(job, ray_cluster, sky, model_dir, tmp_path, capsys, ledger):
    cat = copy_sky(sky, tmp_path / "sky")
    rewrite_catalog(cat, lambda k5, t: t.drop_columns(["w2mpro"]))
    code, msg = run_job(job, capsys, job_args(cat, model_dir, tmp_path / "out"))
    assert code != 0 and "w2mpro" in msg and "lacks required column" in msg, msg
    assert not (tmp_path / "out").exists()
    ledger.append({"kind": "missing column", "behaviour": "error", "written": "nothing"})


@pytest.mark.slow
def test_wrong_dtypes_are_named(job, ray_cluster, sky, model_dir, tmp_path, capsys, ledger):
    def edit(k5: int, t: pa.Table) -> pa.Table:
        t = t.set_column(t.schema.get_field_index("ra"), "ra", t["ra"].cast(pa.string()))
        return t.set_column(t.schema.get_field_index("cntr"), "cntr", t["cntr"].cast(pa.float64()))

    cat = copy_sky(sky, tmp_path / "sky")
    rewrite_catalog(cat, edit)
    code, msg = run_job(job, capsys, job_args(cat, model_dir, tmp_path / "out"))
    assert code != 0 and "wrong type" in msg, msg
    assert "ra: string" in msg and "cntr: double" in msg, msg
    assert not (tmp_path / "out").exists()
    ledger.append({"kind": "wrong dtypes", "behaviour": "error", "written": "nothing"})


def _edit_model_json(path: Path, **changes: Any) -> None:
    doc = json.loads((path / directory.META_FILE).read_text())
    doc.update(changes)
    (path / directory.META_FILE).write_text(json.dumps(doc))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["other_architecture", "newer_format"])
def test_foreign_model_directory_is_refused(
    job, ray_cluster, sky, model_dir, tmp_path, capsys, ledger, fault
):
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    doc = json.loads((bad / directory.META_FILE).read_text())
    if fault == "other_architecture":  # weights of an iicnet, model.json says fusion
        _edit_model_json(bad, config={**doc["config"], "arch": "fusion"})
        expect = "does not fit a 'fusion' model"
    else:
        _edit_model_json(bad, format_version=directory.FORMAT_VERSION + 1)
        expect = "upgrade iic_survey"
    code, msg = run_job(job, capsys, job_args(sky.catalog_url, str(bad), tmp_path / "out"))
    assert code != 0 and expect in msg and str(bad) in msg, msg
    assert not (tmp_path / "out").exists()
    ledger.append({"kind": f"model dir: {fault}", "behaviour": "error", "written": "nothing"})


@pytest.mark.slow
def test_output_path_holding_something_else_is_left_alone(
    job, ray_cluster, sky, model_dir, tmp_path, capsys, ledger
):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    for extra in ((), ("--overwrite",)):  # not even --overwrite deletes a folder we did not write
        code, msg = run_job(job, capsys, job_args(sky.catalog_url, model_dir, foreign, *extra))
        assert code != 0 and "not an iic_survey output" in msg, msg
        assert sorted(p.name for p in foreign.iterdir()) == ["chapter1.tex"]
        assert (foreign / "chapter1.tex").read_text() == "precious"
    a_file = tmp_path / "catalog.parquet"
    a_file.write_bytes(b"PAR1 not ours")
    code, msg = run_job(job, capsys, job_args(sky.catalog_url, model_dir, a_file))
    assert code != 0 and "is a file" in msg, msg
    assert a_file.read_bytes() == b"PAR1 not ours"
    ledger.append(
        {
            "kind": "output path holds something else",
            "behaviour": "error",
            "written": "nothing (contents untouched)",
        }
    )


# ------------------------------------- a checkpoint that is not a plain state_dict (pickle)


class _Payload:
    """Unpickling this *creates the file* at ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def _plant(path: Path, obj: Any) -> None:
    torch.save(obj, path)
    # A marker file made by torch.save's own pickling would void the test.
    assert not Path(getattr(obj, "path", "/nonexistent")).exists()


@pytest.mark.parametrize("payload", ["reduce_payload", "whole_module"])
def test_model_weights_that_are_not_a_state_dict_are_never_unpickled(
    sky, model_dir, tmp_path, ledger, payload
):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    obj: Any = _Payload(marker)
    if payload == "whole_module":  # a pickled nn.Module (not a state_dict): code by reference
        obj = {"model": directory.load_model_dir(model_dir).model, "hook": _Payload(marker)}
    _plant(bad / directory.WEIGHTS_FILE, obj)
    doc = json.loads((bad / directory.META_FILE).read_text())  # the hash matches: only
    _edit_model_json(  # weights_only=True stands between the file and its code
        bad, weights={**doc["weights"], "sha256": directory._sha256(bad / directory.WEIGHTS_FILE)}
    )
    with pytest.raises((pickle.UnpicklingError, ValueError), match=r"(?i)weights.only"):
        directory.load_model_dir(bad)
    assert not marker.exists(), "the checkpoint's pickle was executed"
    ledger.append(
        {
            "kind": f"model weights: {payload}",
            "behaviour": "refused (weights_only)",
            "code_executed": marker.exists(),
        }
    )


@pytest.mark.slow
def test_job_refuses_a_pickle_payload_model(job, ray_cluster, sky, model_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = tmp_path / "model"
    shutil.copytree(model_dir, bad)
    _plant(bad / directory.WEIGHTS_FILE, _Payload(marker))
    doc = json.loads((bad / directory.META_FILE).read_text())
    _edit_model_json(
        bad, weights={**doc["weights"], "sha256": directory._sha256(bad / directory.WEIGHTS_FILE)}
    )
    code, msg = run_job(job, capsys, job_args(sky.catalog_url, str(bad), tmp_path / "out"))
    assert code != 0 and str(bad / directory.WEIGHTS_FILE) in msg, msg
    assert not marker.exists(), "the model's pickle was executed"
    assert not (tmp_path / "out").exists()


def test_training_checkpoint_that_is_not_a_state_dict_is_never_unpickled(tmp_path, ledger):
    """Resuming training loads the last checkpoint with ``training.load_state``."""
    marker = tmp_path / "pwned"
    ck = tmp_path / "checkpoint"
    ck.mkdir()
    _plant(ck / checkpoints.STATE_FILE, {"epoch": 3, "model": _Payload(marker)})
    (ck / checkpoints.HISTORY_FILE).write_text("[]")
    with pytest.raises((pickle.UnpicklingError, ValueError), match=r"(?i)weights.only"):
        checkpoints.load_state(ck)
    assert not marker.exists(), "the checkpoint's pickle was executed"
    ledger.append(
        {
            "kind": "training checkpoint: reduce_payload",
            "behaviour": "refused (weights_only)",
            "code_executed": marker.exists(),
        }
    )


# --------------------------------- per-row damage: one run over a sky damaged four ways


@pytest.fixture(scope="module")
def damaged(ray_cluster, job, sky, model_dir, tmp_path_factory) -> dict[str, Any]:
    """One run of the job over a copy of the sky with NaN coordinates, an empty partition,
    a missing tile and a tile band without WCS. The job must finish and flag, not fail."""
    base = tmp_path_factory.mktemp("damaged")
    root = base / "sky"
    cat = copy_sky(sky, root)
    nan_rows: list[int] = []

    def edit(k5: int, t: pa.Table) -> pa.Table:
        if k5 != NAN_PIXEL:
            return t
        df = t.to_pandas()
        df.loc[0, "ra"] = np.nan  # NaN ra
        df.loc[1, "dec"] = np.nan  # NaN dec
        df.loc[2, ["ra", "dec"]] = np.nan  # both
        df.loc[3, "dec"] = 95.0  # off the sphere
        nan_rows.extend(df.loc[:3, "cntr"].tolist())
        return pa.Table.from_pandas(df, schema=t.schema, preserve_index=False)

    empty = pq.ParquetFile(partition_path(cat, NAN_PIXEL)).schema_arrow.empty_table()
    rewrite_catalog(cat, edit, add={EMPTY_PIXEL: empty})
    headers = {}
    for band in (1, 2, 3):  # the missing tile: all three bands gone
        path = tile_file(root, MISSING_TILE, band)
        headers[MISSING_TILE] = fits.getheader(path)
        path.unlink()
    no_wcs = tile_file(root, NO_WCS_TILE, 2)
    headers[NO_WCS_TILE] = fits.getheader(no_wcs)
    with fits.open(no_wcs, mode="update") as hdul:
        for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2"):
            hdul[0].header.remove(key, ignore_missing=True)
    out = base / "out"
    err = io.StringIO()  # capsys is per test: capture the module-wide run by hand
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        code = job.main(job_args(cat, model_dir, out))
    return {
        "code": code,
        "log": err.getvalue(),
        "cat": cat,
        "out": out,
        "input": catalog_rows(cat),
        "nan_rows": nan_rows,
        "headers": headers,
    }


@pytest.mark.slow
def test_damaged_sky_run_completes_and_loses_nothing(damaged, ledger):
    assert damaged["code"] == 0, damaged["log"][-3000:]
    got, want = published(damaged["out"]), damaged["input"]
    assert len(got) == len(want) and got["cntr"].is_unique
    assert set(got["cntr"]) == set(want["cntr"])
    bad = flagged(got, UNCLASSIFIABLE)
    p = got[PROBS].to_numpy(np.float64)
    assert np.isnan(p[bad]).all() and got.loc[bad, "class"].isna().all()
    np.testing.assert_allclose(p[~bad].sum(axis=1), 1.0, rtol=1e-5)
    assert got.loc[~bad, "class"].notna().all()
    ledger.append(
        {
            "kind": "damaged sky run (NaN coords, empty pixel, missing tile, no WCS)",
            "rows_in": len(want),
            "rows_out": len(got),
            "rows_lost": len(set(want["cntr"]) - set(got["cntr"])),
            "rows_duplicated": int(got["cntr"].duplicated().sum()),
            "rows_flagged_unclassifiable": int(bad.sum()),
        }
    )


@pytest.mark.slow
def test_nan_coordinates_are_flagged_rows_kept(damaged, ledger):
    got = published(damaged["out"]).set_index("cntr")
    rows = got.loc[damaged["nan_rows"]]
    assert len(rows) == 4
    assert (flagged(rows, QualityFlag.BAD_COORDINATES)).all()
    assert rows[PROBS].isna().all().all() and rows["class"].isna().all()
    # they stay in the partition they came from
    pix = rows["_healpix_29"].to_numpy() >> (2 * (29 - 5))
    assert (pix == NAN_PIXEL).all()
    assert flagged(got, QualityFlag.BAD_COORDINATES).sum() == 4  # no other row
    ledger.append(
        {
            "kind": "NaN coordinates",
            "behaviour": "flag BAD_COORDINATES",
            "rows_damaged": len(damaged["nan_rows"]),
            "rows_flagged": int(flagged(rows, QualityFlag.BAD_COORDINATES).sum()),
            "rows_lost": len(set(damaged["nan_rows"]) - set(got.index)),
        }
    )


@pytest.mark.slow
def test_empty_pixel_is_skipped_not_an_error(damaged, job, model_dir, tmp_path, capsys, ledger):
    committed = {p for _, p in export.partitions(str(damaged["out"]))}
    assert EMPTY_PIXEL not in committed and committed == set(damaged["input"]["k5"])
    # asking for nothing but the empty pixel is a clear error, and writes nothing
    code, msg = run_job(
        job,
        capsys,
        job_args(damaged["cat"], model_dir, tmp_path / "o", "--pixels", str(EMPTY_PIXEL)),
    )
    assert code != 0 and "no catalog sources" in msg, msg
    assert_nothing_published(tmp_path / "o")
    ledger.append(
        {
            "kind": "empty pixel",
            "behaviour": "skipped (--all); error (--pixels)",
            "pixels_published": len(committed),
            "written": "nothing (--pixels)",
        }
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tile", "flag"),
    [(MISSING_TILE, QualityFlag.BAND_MISSING), (NO_WCS_TILE, QualityFlag.FETCH_FAILED)],
    ids=["missing_tile", "fits_without_wcs"],
)
def test_damaged_tile_flags_only_the_rows_it_holds(damaged, ledger, tile, flag):
    got = published(damaged["out"]).set_index("cntr")
    inp = damaged["input"].set_index("cntr").loc[got.index]
    reach = on_tile(inp, damaged["headers"][tile], STAMP_MARGIN_PX)
    mine = inp["coadd_id"].to_numpy() == tile
    hit = flagged(got, flag)
    assert hit.sum() >= 1, f"no row of {tile} was flagged {flag.name}"
    assert mine.sum() >= 1
    # every row catalogued on the tile is either flagged or classified from another tile,
    # and only rows within a stamp's reach of the tile carry the flag
    assert not (hit & ~reach).any(), got.index[hit & ~reach].tolist()[:5]
    assert got.loc[hit, PROBS].isna().all().all()
    # rows out of reach of both damaged tiles, with good coordinates, lost nothing
    near_damage = np.zeros(len(inp), dtype=bool)
    for header in damaged["headers"].values():
        near_damage |= on_tile(inp, header, STAMP_MARGIN_PX)
    other = ~near_damage & ~flagged(got, QualityFlag.BAD_COORDINATES)
    assert other.sum() >= 100  # about half the sky (243 of 500 rows)
    assert not flagged(got[other], UNCLASSIFIABLE).any()
    catalogued = damaged["input"].loc[damaged["input"]["coadd_id"] == tile, "cntr"]
    ledger.append(
        {
            "kind": "missing tile" if flag == QualityFlag.BAND_MISSING else "FITS without WCS",
            "behaviour": f"flag {flag.name}",
            "rows_on_tile": int(mine.sum()),
            "rows_flagged": int(hit.sum()),
            "rows_lost": len(set(catalogued) - set(got.index)),
        }
    )


# ---------------------------------------------- errors met mid-run (one Ray run each)


@pytest.mark.slow
def test_duplicate_cntr_is_a_clear_error_and_nothing_half_written(
    job, ray_cluster, sky, model_dir, tmp_path, capsys, ledger
):
    cat = copy_sky(sky, tmp_path / "sky")
    victim = min(sky.pixels, key=lambda p: pq.read_metadata(partition_path(cat, p)).num_rows)
    dup: list[int] = []

    def edit(k5: int, t: pa.Table) -> pa.Table:
        if k5 != victim:
            return t
        dup.append(int(t["cntr"][0].as_py()))
        return pa.concat_tables([t, t.slice(0, 1)])

    rewrite_catalog(cat, edit)
    out = tmp_path / "out"
    code, msg = run_job(job, capsys, job_args(cat, model_dir, out, "--pixels", str(victim)))
    assert code != 0 and "repeated cntr" in msg and str(dup[0]) in msg, msg[-3000:]
    assert_nothing_published(out)
    ledger.append(
        {
            "kind": "duplicate cntr",
            "behaviour": "error naming the cntr; pixel not published",
            "written": "nothing",
        }
    )


@pytest.mark.slow
def test_corrupt_partition_is_named_and_a_rerun_after_repair_completes(
    job, ray_cluster, sky, model_dir, tmp_path, capsys, ledger
):
    cat = copy_sky(sky, tmp_path / "sky")
    victim = partition_path(cat, NAN_PIXEL)
    good = victim.read_bytes()
    victim.write_bytes(good[:4] + b"\0garbage" * (len(good) // 8))  # planned from _metadata
    out = tmp_path / "out"
    args = job_args(cat, model_dir, out)
    code, msg = run_job(job, capsys, args)
    assert code != 0 and f"healpix_k5={NAN_PIXEL}" in msg, msg[-3000:]
    assert NAN_PIXEL not in {p for _, p in export.partitions(str(out))}
    victim.write_bytes(good)  # the user repairs the file and reruns the same command
    code, msg = run_job(job, capsys, args)
    assert code == 0, msg[-3000:]
    got, want = published(out), catalog_rows(cat)
    assert len(got) == len(want) and got["cntr"].is_unique
    assert set(got["cntr"]) == set(want["cntr"])
    ledger.append(
        {
            "kind": "corrupt Parquet partition",
            "behaviour": "error naming the file; rerun after repair completes",
            "rows_in": len(want),
            "rows_out": len(got),
            "rows_lost": len(set(want["cntr"]) - set(got["cntr"])),
            "rows_duplicated": int(got["cntr"].duplicated().sum()),
        }
    )
