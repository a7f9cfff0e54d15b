"""jobs/train.py through the real CLI: `ray job submit --working-dir . -- python jobs/train.py`.

Three submissions in all (each ~30-60 s on 2 shared cores): a run whose worker dies mid-epoch
and recovers, an interrupted run, and its resumption.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from iic_survey.model.directory import load_model_dir
from iic_survey.testing.training import make_fake_training_set
from iic_survey.training import config, loop
from tests.fixtures.jobs import load_job

TINY_ARGS = shlex.split(
    "--widths 4 8 8 8 8 8 --head-dim 16 --batch-size 16 --lr 1e-3 --num-workers 2 --use-gpu auto"
)


@pytest.fixture(scope="module")
def train_job(repo_root: Path) -> ModuleType:
    """jobs/train.py imported as a module (for build_parser / presets)."""
    return load_job(repo_root / "jobs" / "train.py", "train_job")


def test_parser_defaults_are_the_papers_schedule(train_job):
    args = train_job.parse_args([])
    assert (args.epochs, args.lr, args.lr_halve_epoch, args.arch) == (200, 1e-4, 50, "iicnet")
    assert args.use_gpu == "auto"


def test_demo_preset_sets_defaults_that_flags_override(train_job):
    args = train_job.parse_args(["--preset", "demo"])
    assert args.epochs == train_job.PRESETS["demo"]["epochs"] and args.name == "demo"
    args = train_job.parse_args(["--preset", "demo", "--epochs", "7", "--arch", "fusion"])
    assert args.epochs == 7 and args.arch == "fusion"


def _args(tmp_path: Path, name: str, max_failures: int) -> list[str]:
    """Two epochs of a tiny IICnet on a fake training set under ``tmp_path``."""
    return [
        *("--data", str(tmp_path / "ts"), "--epochs", "2", "--name", name),
        *("--storage-path", str(tmp_path / "runs"), "--model-dir", str(tmp_path / "model")),
        *("--max-failures", str(max_failures), *TINY_ARGS),
    ]


def _submit(local_ray, args: list[str], crash_at: str | None = None, marker: Path | None = None):
    """``jobs/train.py ARGS`` as a Ray job; with ``crash_at`` (``"epoch:step"``) its rank-0 worker
    dies there once (:class:`~tests.fixtures.crashes.CrashAt`, through ``tests.fixtures.jobs``)."""
    if crash_at is None:
        return local_ray.submit("jobs/train.py", *args, timeout=480)
    return local_ray.submit("-m", "tests.fixtures.jobs", crash_at, str(marker), *args, timeout=480)


def _summary(stdout: str) -> dict:
    """The JSON summary the job prints last."""
    start = stdout.rindex('{\n "model_dir"')
    return json.loads(stdout[start : stdout.index("\n}", start) + 2])


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_recovers_and_the_job_writes_a_model_dir(local_ray, tmp_path):
    make_fake_training_set(tmp_path / "ts", n=150)
    marker = tmp_path / "crashed"
    args = _args(tmp_path, "kill", max_failures=1)
    result = _submit(local_ray, args, crash_at="1:1", marker=marker)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert marker.exists(), "the worker never died: the test hook did not fire"
    bundle = load_model_dir(tmp_path / "model")
    # Epoch 0 ran once; the group restarted from its checkpoint and ran epoch 1 (not 0 again).
    assert bundle.meta["starts"] == [0, 1]
    assert [h["epoch"] for h in bundle.metrics["history"]] == [0, 1]
    assert bundle.config.arch == "iicnet" and bundle.temperature > 0
    assert (tmp_path / "model" / "report" / "report.md").is_file()
    assert _summary(result.stdout)["model_dir"] == str(tmp_path / "model")


@pytest.mark.slow
def test_rerun_after_an_interrupted_run_continues_from_its_checkpoint(local_ray, tmp_path):
    make_fake_training_set(tmp_path / "ts", n=150)
    args = _args(tmp_path, "resume", max_failures=0)
    # No failures allowed: the death at epoch 1 ends the job, after epoch 0's checkpoint.
    first = _submit(local_ray, args, crash_at="1:1", marker=tmp_path / "crashed")
    assert first.returncode != 0, "the interrupted run should have failed"
    assert not (tmp_path / "model").exists()
    assert list((tmp_path / "runs" / "resume").glob("epoch_00000"))
    second = _submit(local_ray, args)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    bundle = load_model_dir(tmp_path / "model")
    assert bundle.meta["starts"] == [0, 1]
    history = bundle.metrics["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    cfg = config.TrainConfig(data="x", lr=1e-3)
    assert [h["lr"] for h in history] == [loop.lr_at(e, cfg) for e in (0, 1)]
    # The best checkpoint (lowest validation loss) is the one the model directory holds.
    best = min(history, key=lambda h: h["val_loss"])["epoch"]
    assert bundle.meta["best_epoch"] == best
