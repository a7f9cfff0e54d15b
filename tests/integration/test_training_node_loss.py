"""A whole Ray node lost mid-training (issue 24 item 6): Ray Train resumes from its last
checkpoint on the node that is left, and no epoch is lost or run twice.

A private head (3 CPUs) and a second node (2 CPUs) on this machine (tests/fixtures/nodes.py);
``jobs/train.py`` runs as its own driver with two workers placed ``SPREAD`` (one per node; with
the default ``PACK`` both would sit on the head and the node's loss would touch nothing). Once
Ray Train has committed a checkpoint (``checkpoint_manager_snapshot.json`` lists it: every
worker reported it) and a worker is alive on the second node, the whole node is SIGKILLed.
``FailureConfig(max_failures)`` then restarts the worker group on the head, which has
room for both workers, from the last checkpoint; a run that fails instead (the node took the
controller with it) is resumed by the same command, as the README tells users to do. Either way
the model directory's record says what happened: ``starts`` (the first epoch of each start of the
workers) begins at 0 and then at an epoch after a checkpoint, never 0 again, and ``history``
holds every epoch exactly once.

Measured here (AMD EPYC, 2 cores): the node died after epoch 0's checkpoint, taking one worker
and 9 processes; the run finished by itself with ``starts`` [0, 1] and epochs 0-5 once each.
Checked by breaking it: with ``_resume`` restarting at the checkpoint's own epoch instead of the
next one, the history held [0, 0, 1, 2, 2, 3, 4, 5] and the test failed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from iic_survey.model.directory import load_model_dir
from iic_survey.testing.ray_head import LocalRay
from iic_survey.testing.training import make_fake_training_set
from tests.fixtures.jobs import job_driver
from tests.fixtures.nodes import SecondNode, alive_actors_on, finish

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

EPOCHS = 6
RUN_TIMEOUT_S = 480
TINY_ARGS = shlex.split(
    "--widths 4 8 8 8 8 8 --head-dim 16 --batch-size 16 --lr 1e-3 --num-workers 2 --use-gpu no"
)


def train_args(tmp_path: Path) -> list[str]:
    return [
        *("--data", str(tmp_path / "ts"), "--epochs", str(EPOCHS), "--name", "nodeloss"),
        *("--storage-path", str(tmp_path / "runs"), "--model-dir", str(tmp_path / "model")),
        *("--max-failures", "2", "--placement-strategy", "SPREAD", *TINY_ARGS),
    ]


def committed_checkpoints(tmp_path: Path) -> list[str]:
    """Checkpoints Ray Train has registered (every worker reported them), by folder name.

    A folder alone is not enough: rank 0 writes it before the other ranks report, and a round
    whose reports die with the node is rightly not committed (the restart then redoes it).
    """
    snapshot = tmp_path / "runs" / "nodeloss" / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snapshot.read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted(r["checkpoint_dir_name"] for r in results)


def kill_after_first_checkpoint(
    head: LocalRay, node: SecondNode, proc: subprocess.Popen[bytes], tmp_path: Path
) -> dict[str, Any]:
    """Wait for a committed checkpoint and a Ray Train worker on the second node, then kill
    the node."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        done = committed_checkpoints(tmp_path)
        if done and (workers := alive_actors_on(head, node.node_id, "RayTrainWorker")):
            pids = node.kill()
            return {"checkpoints_at_kill": done, "workers_lost": len(workers),
                    "processes_killed": len(pids)}  # fmt: skip
        time.sleep(0.05)
    return {}


def test_a_node_lost_mid_training_resumes_from_the_last_checkpoint(two_nodes, tmp_path):
    head, node = two_nodes
    make_fake_training_set(tmp_path / "ts", n=150)
    log = tmp_path / "driver.log"
    args = train_args(tmp_path)
    proc = job_driver(head, "jobs/train.py", args, log)
    killed = kill_after_first_checkpoint(head, node, proc, tmp_path)
    assert killed, f"no Ray Train worker on the second node while training: {log.read_text()}"
    assert len(killed["checkpoints_at_kill"]) < EPOCHS, killed  # killed mid-run
    code = finish(proc, log, RUN_TIMEOUT_S)
    figures: dict[str, Any] = {"first_run_exit": code, **killed}
    if code != 0:  # failed: the same command again, on the remaining node
        proc = job_driver(head, "jobs/train.py", args, log)
        figures["rerun_exit"] = finish(proc, log, RUN_TIMEOUT_S)
        assert figures["rerun_exit"] == 0, log.read_text()[-4000:]
    bundle = load_model_dir(tmp_path / "model")
    epochs = [h["epoch"] for h in bundle.metrics["history"]]
    starts = list(bundle.meta["starts"])
    figures.update({"starts": starts, "epochs_in_history": epochs})
    print(f"\ntraining node loss figures: {json.dumps(figures)}")
    assert epochs == list(range(EPOCHS)), figures  # every epoch once: none lost, none twice
    assert starts[0] == 0 and len(starts) >= 2, figures  # the workers did restart
    assert all(s > 0 for s in starts[1:]), figures  # from a checkpoint, never from scratch
    assert starts == sorted(starts), figures
