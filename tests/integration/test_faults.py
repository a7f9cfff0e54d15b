"""A long sky run meets dead workers, a killed driver, a flaky archive and a failing store.

Every test runs ``jobs/classify_sky.py`` (its ``main``, or the script itself as a separate
driver process) on the session's local Ray cluster over the ``tiny_sky``, injects real faults,
and checks the catalog that survives against a clean run of the same command:

1. a Ray worker process killed with SIGKILL mid-run (the inference actor, found through Ray's
   state API, and a worker running a cutout task): the job completes, each ``cntr`` once;
2. the driver killed with SIGKILL after k of n pixels, then the same command rerun: only the
   missing pixels are classified, and the catalog equals the uninterrupted run's, row for row;
3. IBE-style per-source cutouts from a local server injecting 5xx, slow answers and truncated
   FITS: the job completes; what still fails after retries is flagged FETCH_FAILED with null
   probabilities; no row lost;
4. output writes to S3 (moto) failing: transient 503s are retried; after writes stop for good
   the run fails, a reader never sees a pixel without its done marker nor an incomplete pixel,
   and the rerun redoes only the unfinished pixels.

Training that loses a worker mid-epoch and resumes from its last checkpoint (FailureConfig) is
covered by tests/integration/test_train_job.py
(``test_a_worker_killed_mid_epoch_recovers_and_the_job_writes_a_model_dir``).

The figures (faults injected / survived, rows lost / duplicated) are written to
``$IIC_RELIABILITY_DIR/reliability_faults.json`` (default: pytest's basetemp) for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest
from upath import UPath

from iic_survey.core.constants import CLASSES
from iic_survey.core.flags import UNCLASSIFIABLE, QualityFlag
from iic_survey.core.paths import as_path
from iic_survey.output import reader as export
from iic_survey.output import schema, staging
from iic_survey.survey.config import PipelineConfig
from iic_survey.survey.run import run_pipeline
from iic_survey.testing.model import make_model_dir
from tests.fixtures.jobs import classify_driver, load_job
from tests.fixtures.s3 import s3_filesystem, s3_storage_options

pytestmark = pytest.mark.slow

PROBS = [f"p_{c}" for c in CLASSES]
CHUNK = "100"
"""Rows per chunk: small, so that a 2,000-source sky makes ~20 chunks to kill workers among."""
OUT_BUCKET = "iic-faults-out"


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def job(repo_root: Path) -> ModuleType:
    """jobs/classify_sky.py as a module (jobs/ is not a package)."""
    return load_job(repo_root / "jobs" / "classify_sky.py", "classify_sky_faults")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[dict[str, Any]]]:
    """Per-fault figures; written as JSON (and printed) when the module's tests are done."""
    rows: list[dict[str, Any]] = []
    yield rows
    folder = Path(os.environ.get("IIC_RELIABILITY_DIR") or tmp_path_factory.getbasetemp())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reliability_faults.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"\nfault figures ({path}):\n{json.dumps(rows, indent=1)}")


@pytest.fixture(scope="module")
def model_dir(tiny_sky: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained tiny model: faults, not model quality, are under test."""
    path = tmp_path_factory.mktemp("faults_model") / "m"
    return make_model_dir(path, tiny_sky.images_url, tiny_sky.catalog_url)


def job_args(tiny_sky: Any, model: str, out: str | Path, *extra: str) -> list[str]:
    return [
        "--catalog", tiny_sky.catalog_url, "--images", "local", "--model", model,
        "--output", str(out), "--healpix-order", "5", "--chunk-size", CHUNK,
        "--inference-actors", "1", *extra,
    ]  # fmt: skip


def run_main(job: ModuleType, args: list[str]) -> tuple[int, str]:
    """``main(args)`` in this process (on the session cluster) -> (status, its output)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = job.main(args)
    return code, buf.getvalue()


def catalog_of(path: str | Path | UPath) -> pd.DataFrame:
    """What a reader gets: every committed row, sorted by cntr."""
    return export.read(path if isinstance(path, UPath) else str(path)).sort_values(
        "cntr", ignore_index=True
    )


def assert_same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Row for row, the same catalog (probabilities to float32 rounding of a batched CNN)."""
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-5, atol=1e-6)


def survived(injected: int, got: pd.DataFrame, want: pd.DataFrame) -> int:
    """Faults survived, measured: all of them if the run's catalog equals the clean one, else 0."""
    try:
        assert_same_rows(got, want)
    except AssertionError:
        return 0
    return injected


def tally(got: pd.DataFrame, want_cntr: pd.Series) -> dict[str, int]:
    """Rows lost and duplicated, against the input's cntr."""
    return {
        "rows_in": len(want_cntr),
        "rows_out": len(got),
        "rows_lost": len(set(want_cntr) - set(got["cntr"])),
        "rows_duplicated": int(got["cntr"].duplicated().sum()),
    }


@pytest.fixture(scope="module")
def input_cntr(tiny_sky: Any) -> pd.Series:
    from iic_survey.inputs.catalog import open_catalog

    cat = open_catalog(tiny_sky.catalog_url)
    return cat.read_pixels(tiny_sky.pixels, 5, columns=["cntr"])["cntr"]


@pytest.fixture(scope="module")
def clean(ray_cluster, job, tiny_sky, model_dir, tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted run every faulty run is compared with."""
    out = tmp_path_factory.mktemp("clean") / "catalog"
    code, log = run_main(job, job_args(tiny_sky, model_dir, out))
    assert code == 0, log[-4000:]
    return catalog_of(out)


def markers(out: Path) -> dict[int, Path]:
    return {
        int(m.group(1)): p
        for p in out.glob("_done/Norder=5/Npix=*.json")
        if (m := re.search(r"Npix=(\d+)\.json$", p.name))
    }


# ------------------------------------------------------- 1. worker processes killed mid-run


def _alive(kind: str, job_id: str, address: str) -> list[Any]:
    """Live processes of this job's pipeline, from Ray's state API: the inference actors
    (Ray Data's ``_MapWorker``) or the workers running one of its tasks."""
    from ray.util.state import list_actors, list_tasks

    if kind == "actor":
        # Ray Data names its pool actors after the UDF: MapWorker(MapBatches(ChunkStage)) on
        # CPU (cut, classify, stage in one actor), MapWorker(MapBatches(Classify)) on a GPU
        found = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
        return [a for a in found if a.job_id == job_id and _inference(a.class_name)]
    found = list_tasks(address=address, filters=[("state", "=", "RUNNING")], limit=1000)
    mine = [
        t
        for t in found  # tasks of the stages that run as plain tasks, not calls on the actor
        if t.job_id == job_id
        and t.worker_pid
        and t.type == "NORMAL_TASK"
        and "MapBatches(" in t.name
    ]
    # a cutout task if one is running (the slow stage), else any other stage's task
    return sorted(mine, key=lambda t: "StampMaker" not in t.name)


def _inference(class_name: str) -> bool:
    return "(ChunkStage)" in class_name or "(Classify)" in class_name


def test_workers_killed_mid_run_the_job_completes_each_cntr_once(
    ray_cluster, job, tiny_sky, model_dir, clean, input_cntr, tmp_path, ledger
):
    """SIGKILL a pipeline task's worker (a cutout task when one runs), then the inference
    actor, while the job runs."""
    import ray
    from ray.util.state import list_actors

    out = tmp_path / "catalog"
    job_id = ray.get_runtime_context().get_job_id()
    result: dict[str, Any] = {}

    def run() -> None:
        result["code"], result["log"] = run_main(job, job_args(tiny_sky, model_dir, out))

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    killed: list[dict[str, Any]] = []
    deadline = time.monotonic() + 240
    for kind in ("task", "actor"):
        while runner.is_alive() and time.monotonic() < deadline:
            targets = _alive(kind, job_id, ray_cluster.dashboard_url)
            # the actor: once it has classified something (a part is staged), so work is lost
            ready = kind == "task" or list(out.glob("_staging/*/*/part-*.parquet"))
            if targets and ready:
                target = targets[0]
                pid = int(target.pid if kind == "actor" else target.worker_pid)
                os.kill(pid, signal.SIGKILL)
                what = target.class_name if kind == "actor" else target.name
                killed.append(
                    {"kind": kind, "pid": pid, "what": what, "while_running": runner.is_alive()}
                )
                break
            time.sleep(0.05)
    runner.join(timeout=300)
    assert not runner.is_alive(), "the job did not finish"
    assert [k["kind"] for k in killed] == ["task", "actor"], f"killed only {killed}"
    assert result["code"] == 0, result["log"][-4000:]
    assert all(k["while_running"] for k in killed), killed
    assert killed[0]["pid"] != killed[1]["pid"], killed  # two processes, not the actor twice
    restarts = sum(
        int(a.num_restarts or 0)
        for a in list_actors(address=ray_cluster.dashboard_url, limit=1000, detail=True)
        if a.job_id == job_id and _inference(a.class_name)
    )
    got = catalog_of(out)
    figures = tally(got, input_cntr)
    ledger.append(
        {
            "fault": "SIGKILL of Ray worker processes during classify_sky: a task's worker "
            f"({killed[0]['what']}), the inference actor",
            "faults_injected": len(killed),
            "faults_survived": survived(len(killed), got, clean),
            "actor_restarts": restarts,
            **figures,
        }
    )
    assert figures["rows_lost"] == figures["rows_duplicated"] == 0, figures
    assert len(got) == len(input_cntr) and got["cntr"].is_unique
    assert_same_rows(got, clean)


# ------------------------------------------------------------ 2. the driver killed, rerun


def _fingerprint(path: str) -> tuple[int, str]:
    return os.stat(path).st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_driver_killed_after_k_pixels_then_rerun_equals_clean_run(
    local_ray, ray_cluster, tiny_sky, model_dir, clean, input_cntr, repo_root, tmp_path, ledger
):
    out = tmp_path / "catalog"
    args = job_args(tiny_sky, model_dir, out)
    n = len(tiny_sky.pixels)
    log = tmp_path / "driver.log"
    proc = classify_driver(local_ray, args, log)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline and not markers(out):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and anything in its session
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-4000:]
    before = markers(out)
    k = len(before)
    assert 1 <= k < n, f"killed after {k} of {n} pixels: {log.read_text()[-2000:]}"
    files = {p: schema.pixel_file(as_path(out), 5, p) for p in before}
    stamp = {p: _fingerprint(f) for p, f in files.items()}
    # a reader of the interrupted catalog sees exactly the k committed pixels, complete
    partial = catalog_of(out)
    want_partial = clean[np.isin(clean["_healpix_29"].to_numpy() >> 48, list(before))]
    assert_same_rows(partial, want_partial.reset_index(drop=True))

    # the same command again, as the user would type it
    rerun = subprocess.run(
        [sys.executable, "jobs/classify_sky.py", *args],
        cwd=repo_root,
        env={**local_ray.env, "RAY_ADDRESS": local_ray.gcs_address},
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, text[-4000:]
    assert f"{n - k} classified, {k} already done, {n} selected" in text, text[-2000:]
    assert {p: _fingerprint(f) for p, f in files.items()} == stamp  # skipped, not rewritten
    got = catalog_of(out)
    figures = tally(got, input_cntr)
    ledger.append(
        {
            "fault": f"SIGKILL of the driver after {k} of {n} pixels, then the same command",
            "faults_injected": 1,
            "faults_survived": survived(1, got, clean),
            "pixels_redone_by_rerun": n - k,
            **figures,
        }
    )
    assert figures["rows_lost"] == figures["rows_duplicated"] == 0, figures
    assert_same_rows(got, clean)
    assert not (out / "_staging").exists()


# ------------------------------------------------- 3. a flaky IBE in per-source service mode


def test_flaky_cutout_service_flags_what_still_fails_and_loses_nothing(
    ray_cluster, job, irsa, tiny_sky, model_dir, clean, tmp_path, ledger
):
    from iic_survey.inputs.catalog import open_catalog

    cat = open_catalog(tiny_sky.catalog_url)
    counts = {int(p): cat.count(int(p), 5) for p in tiny_sky.pixels}
    pixels = sorted(counts, key=counts.get)[:2]  # the two smallest: a few hundred sources
    n = sum(counts[p] for p in pixels)
    # 'timeout' answers are held 1.5 s against a 1 s client read time-out: real time-outs
    irsa.faults.configure(server_error=0.20, timeout=0.05, truncate=0.05, sleep_s=1.5, seed=3)
    out = tmp_path / "catalog"
    args = job_args(tiny_sky, model_dir, out, "--pixels", *map(str, pixels))
    args[args.index("--images") + 1] = irsa.ibe_url
    t0 = time.monotonic()
    code, log = run_main(job, [*args, "--cutout-mode", "service", "--service-timeout", "1"])
    elapsed = time.monotonic() - t0
    assert code == 0, log[-4000:]
    injected = dict(irsa.faults.injected)
    assert injected.get("server_error", 0) > 0 and injected.get("truncate", 0) > 0, injected
    assert injected.get("timeout", 0) > 0, injected

    got = catalog_of(out)
    want_cntr = cat.read_pixels(pixels, 5, columns=["cntr"])["cntr"]
    figures = tally(got, want_cntr)
    failed = (got["quality_flags"].to_numpy() & int(QualityFlag.FETCH_FAILED)) != 0
    # rows whose cutouts came through, retried or not, are the rows of the clean tile-mode run
    ref = clean.set_index("cntr").loc[got.loc[~failed, "cntr"]]
    same = got.loc[~failed].set_index("cntr")
    came_through_equal = bool(
        np.allclose(
            same[PROBS].to_numpy(np.float64), ref[PROBS].to_numpy(np.float64), rtol=1e-4, atol=1e-5
        )
    )
    whole = figures["rows_lost"] == figures["rows_duplicated"] == 0
    ledger.append(
        {
            "fault": "IBE cutouts: 20% HTTP 503, 5% answers held 1.5 s against the client's 1 s "
            "read time-out (--service-timeout 1), 5% truncated FITS",
            "requests": int(irsa.stats.requests["cutout"]),
            "faults_injected": sum(injected.values()),
            "faults_by_kind": injected,
            "rows_fetch_failed_after_retries": int(failed.sum()),
            "faults_survived": sum(injected.values()) if whole and came_through_equal else 0,
            "elapsed_s": round(elapsed, 1),
            **figures,
        }
    )
    assert figures["rows_lost"] == figures["rows_duplicated"] == 0 and len(got) == n, figures
    assert got.loc[failed, PROBS].isna().all().all() and got.loc[failed, "class"].isna().all()
    ok = ~((got["quality_flags"].to_numpy() & int(UNCLASSIFIABLE)) != 0)
    np.testing.assert_allclose(got.loc[ok, PROBS].to_numpy(np.float64).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        same[PROBS].to_numpy(np.float64), ref[PROBS].to_numpy(np.float64), rtol=1e-4, atol=1e-5
    )


# --------------------------------------------------------- 4. S3 output writes that fail


class S3WriteFaults:
    """WSGI middleware in front of moto: fails writes into one bucket on demand (thread-safe).

    ``every``: every ``every``-th PUT/POST is answered ``503 SlowDown`` (clients retry it);
    ``deny_after_markers``: once this many pixel done markers have been stored, every further
    write is answered ``403 AccessDenied`` (writes stop for good, as when credentials expire).
    """

    def __init__(self, app: Any, bucket: str) -> None:
        self.app, self.bucket = app, bucket
        self.lock = threading.Lock()
        self.every = 0
        self.deny_after_markers: int | None = None
        self.markers = 0
        self.injected: Counter[str] = Counter()
        self.writes = 0

    def configure(self, every: int, deny_after_markers: int | None) -> None:
        with self.lock:
            self.every, self.deny_after_markers = every, deny_after_markers
            self.markers = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if method in ("PUT", "POST") and path.startswith(f"/{self.bucket}/"):
            with self.lock:
                self.writes += 1
                if self.deny_after_markers is not None and self.markers >= self.deny_after_markers:
                    fault = ("403 Forbidden", "AccessDenied", "Access Denied")
                elif self.every and self.writes % self.every == 0:
                    fault = ("503 Slow Down", "SlowDown", "Please reduce your request rate.")
                else:
                    fault = None
                    self.markers += "/_done/" in path
                if fault:
                    self.injected[fault[1]] += 1
            if fault:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                if length:
                    environ["wsgi.input"].read(length)
                body = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault[1]}</Code>'
                    f"<Message>{fault[2]}</Message><RequestId>faults</RequestId></Error>"
                ).encode()
                start_response(
                    fault[0],
                    [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))],
                )
                return [body]
        return self.app(environ, start_response)


@pytest.fixture(scope="module")
def faulty_s3() -> Iterator[tuple[str, S3WriteFaults]]:
    """A moto server whose writes into ``OUT_BUCKET`` fail on demand; (endpoint, faults)."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wsgi = getattr(server, "_server", None)
    if wsgi is None or not hasattr(wsgi, "app"):
        server.stop()
        raise RuntimeError("moto's ThreadedMotoServer changed: cannot attach the fault layer")
    faults = S3WriteFaults(wsgi.app, OUT_BUCKET)
    wsgi.app = faults
    endpoint = f"http://127.0.0.1:{port}"
    # Anonymous writers (the pipeline's default without AWS credentials) need a bucket that
    # takes anonymous writes; credentials are another test's subject.
    s3_filesystem(endpoint).mkdir(OUT_BUCKET, acl="public-read-write")
    try:
        yield endpoint, faults
    finally:
        server.stop()


class Reader(threading.Thread):
    """Polls the catalog as a user would while it is written: every committed work pixel must
    be complete (its marker's rows = the plan's count; each partition file it lists has the
    marker's sha256 and rows). An error other than a file not yet there is kept in ``errors``
    (a reader thread that died silently would see nothing and report no violation)."""

    def __init__(self, root: UPath, planned: dict[int, int]) -> None:
        super().__init__(daemon=True)
        self.root, self.planned = root, planned
        self.stop = threading.Event()
        self.looks = 0
        self.pixels_seen: set[int] = set()
        self.violations: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.look()
            except FileNotFoundError:
                pass
            except Exception as exc:  # kept for the test to fail on, with its reason
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.1)

    def look(self) -> None:
        root = self.root
        for markers in staging.commit_markers(root).values():
            for pixel, marker in markers.items():
                if marker["rows"] != self.planned[pixel]:
                    self.violations.append(
                        f"pixel {pixel}: {marker['rows']} committed, {self.planned[pixel]} planned"
                    )
                for part in marker["partitions"]:
                    order, p = int(part["order"]), int(part["pixel"])
                    data = root.fs.cat_file(schema.pixel_file(root, order, p).path)
                    rows = export.read(root, pixels=(order, [p]))
                    if hashlib.sha256(data).hexdigest() != part["sha256"]:
                        self.violations.append(f"partition {order}/{p}: file differs from marker")
                    if len(rows) != int(part["rows"]):
                        self.violations.append(
                            f"partition {order}/{p}: {len(rows)} rows read, "
                            f"{part['rows']} committed"
                        )
                self.pixels_seen.add(pixel)
        self.looks += 1


@pytest.fixture(scope="module")
def s3_first_run(ray_cluster, faulty_s3, tiny_sky, model_dir, clean) -> Iterator[dict[str, Any]]:
    """A run whose S3 writes fail now and then (503) and then for good (403) after 2 commits,
    watched by a reader polling the catalog; the reader keeps watching until module teardown."""
    endpoint, faults = faulty_s3
    saved = {k: os.environ.pop(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE") if k in os.environ}
    url = f"s3://{OUT_BUCKET}/catalog"
    # the reader's own client (no instance or listing cache), as another process would have
    reader_root = UPath(url, **s3_storage_options(endpoint))
    k5 = clean["_healpix_29"].to_numpy() >> 48
    planned = {int(p): int((k5 == p).sum()) for p in tiny_sky.pixels}
    config = PipelineConfig.create(
        catalog=tiny_sky.catalog_url,
        images=tiny_sky.images_url,
        model_dir=model_dir,
        output=url,
        chunk_size=int(CHUNK),
        inference_actors=1,
        endpoint_url=endpoint,
    )
    reader = Reader(reader_root, planned)
    reader.start()
    faults.configure(every=4, deny_after_markers=2)
    error: BaseException | None = None
    try:
        run_pipeline(config)
    except Exception as exc:
        error = exc
    committed = {p for _, p in export.partitions(reader_root)}
    first = dict(faults.injected)
    try:
        yield {
            "url": url, "root": reader_root, "config": config, "faults": faults, "reader": reader,
            "planned": planned, "error": error, "committed": committed, "injected": first,
        }  # fmt: skip
    finally:
        faults.configure(every=0, deny_after_markers=None)
        reader.stop.set()
        reader.join(timeout=30)
        os.environ.update(saved)


def test_s3_writes_stopping_mid_run_never_show_a_partial_pixel(s3_first_run, clean, ledger):
    run = s3_first_run
    assert run["error"] is not None, "the run should fail once the store refuses writes"
    assert re.search(r"(?i)denied|forbidden|permission", str(run["error"])), run["error"]
    n, k = len(run["planned"]), len(run["committed"])
    assert 2 <= k < n, f"{k} of {n} pixels committed before writes stopped"
    assert run["injected"].get("SlowDown", 0) > 0 and run["injected"].get("AccessDenied", 0) > 0
    # what a reader gets now: exactly the committed pixels, each complete and equal to the clean run
    got = catalog_of(run["root"])
    k5 = clean["_healpix_29"].to_numpy() >> 48
    want = clean[np.isin(k5, list(run["committed"]))].reset_index(drop=True)
    reader = run["reader"]
    ledger.append(
        {"fault": "S3 (moto) output writes: every 4th answered 503 SlowDown; every write "
         "refused (403) after 2 pixel commits", "writes": run["faults"].writes,
         "faults_injected": sum(run["injected"].values()), "faults_by_kind": run["injected"],
         "run_outcome": "failed with a clear error (access denied)",
         "pixels_committed_before_stop": k, "reader_looks": reader.looks,
         "partial_pixels_seen_by_reader": len(reader.violations),
         "rows_lost": len(set(want["cntr"]) - set(got["cntr"])),
         "rows_duplicated": int(got["cntr"].duplicated().sum())}
    )  # fmt: skip
    assert_same_rows(got, want)
    assert not reader.errors, reader.errors[:3]
    assert reader.looks > 3 and not reader.violations, reader.violations[:5]


def test_s3_rerun_after_failed_writes_redoes_only_the_missing_pixels(
    s3_first_run, clean, input_cntr, ledger
):
    run, faults = s3_first_run, s3_first_run["faults"]
    n, k = len(run["planned"]), len(run["committed"])
    before = dict(faults.injected)
    faults.configure(every=4, deny_after_markers=None)  # flaky, but writes go through
    summary = run_pipeline(run["config"])
    assert summary.pixels_skipped == k and summary.pixels_done == n - k
    reader = run["reader"]
    time.sleep(0.5)  # one more look at the finished catalog
    assert not reader.errors, reader.errors[:3]
    assert not reader.violations, reader.violations[:5]
    assert reader.pixels_seen == set(run["planned"])
    got = catalog_of(run["root"])
    figures = tally(got, input_cntr)
    retried = faults.injected["SlowDown"] - before.get("SlowDown", 0)
    ledger.append(
        {"fault": "S3 (moto) output writes: every 4th answered 503 SlowDown during the rerun",
         "faults_injected": retried, "faults_survived": survived(retried, got, clean),
         "pixels_skipped": k, "pixels_redone_by_rerun": n - k, "reader_looks": reader.looks,
         "partial_pixels_seen_by_reader": len(reader.violations), **figures}
    )  # fmt: skip
    assert figures["rows_lost"] == figures["rows_duplicated"] == 0, figures
    assert_same_rows(got, clean)
    assert retried > 0
