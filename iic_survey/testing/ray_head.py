"""A real local Ray head, started with ``ray start --head`` (tests' and benchmarks' cluster).

Tests use it two ways (``tests/fixtures/ray_cluster.py`` wraps it in session fixtures):
in-process (a driver connects to :attr:`LocalRay.gcs_address`, for Ray Data / Ray Train) and
through the real CLI (:meth:`LocalRay.submit` runs ``ray job submit --working-dir . -- python
jobs/...`` against the head's dashboard, exactly as a user would). Benchmarks use
:func:`local_ray` to hold one for the length of a measurement.

Every port is chosen free at start-up and the head gets its own temp dir, so several test
sessions (or a developer's own cluster) can run on one machine without clashing; teardown
kills only this head's process group, never ``ray stop`` (which would stop every cluster on the
machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The source checkout this package runs from (an editable install): ``submit``'s default
working directory."""
RAY = str(Path(sys.executable).with_name("ray"))
NUM_CPUS = 4
"""Logical CPUs the head advertises: more than the 2 real cores so that a 2-worker Ray Train
run and a Ray Data pipeline can be scheduled in the same session."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free right now on 127.0.0.1."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the head, its jobs and `ray job submit`.

    ``RAY_AUTH_MODE=disabled`` everywhere: a ``ray.init()`` elsewhere on the machine may have
    written ``~/.ray/auth_token``, after which a submit to a fresh head fails unless the auth
    mode is set consistently on both sides.
    """
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_DEDUP_LOGS="0",
        PYTHONUNBUFFERED="1",
        # Ray Data progress bars flood CI logs.
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
    )
    env.pop("RAY_ADDRESS", None)
    # Jobs run `python ...` through the head's environment: make that this interpreter (the
    # project's venv), whether or not the caller activated it.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(extra or {})
    return env


@dataclasses.dataclass
class LocalRay:
    """A running local head: where it listens and how to talk to it."""

    gcs_address: str
    dashboard_url: str
    temp_dir: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def submit(
        self,
        *args: str,
        timeout: float = 600,
        working_dir: Path = REPO,
        runtime_env_json: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``ray job submit --working-dir <repo> -- python <args...>`` and wait for it."""
        cmd = [
            RAY,
            "job",
            "submit",
            "--address",
            self.dashboard_url,
            "--working-dir",
            str(working_dir),
        ]
        if runtime_env_json:
            cmd += ["--runtime-env-json", runtime_env_json]
        cmd += ["--", "python", *args]
        return subprocess.run(
            cmd, env=self.env, cwd=working_dir, capture_output=True, text=True, timeout=timeout
        )


def _wait_for_dashboard(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start --head exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard at {url} did not come up within {timeout} s")


def start_local_ray(num_cpus: int = NUM_CPUS, timeout: float = 120, attempts: int = 3) -> LocalRay:
    """Start a local head, retrying when a start-up fails (e.g. a port taken in the meantime)."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_local_ray_once(num_cpus, timeout)
        except (RuntimeError, TimeoutError):
            if attempt == attempts:
                raise
            time.sleep(2)
    raise AssertionError("unreachable")


def _start_local_ray_once(num_cpus: int, timeout: float) -> LocalRay:
    """Start ``ray start --head --block`` in its own process group and wait for its dashboard."""
    (
        gcs,
        dash,
        client,
        node_mgr,
        obj_mgr,
        agent_grpc,
        agent_http,
        metrics,
        rt_env_agent,
        min_worker,
    ) = free_ports(10)
    # Ray's socket paths must stay under 107 characters: a short temp dir.
    temp_dir = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    env = ray_env()
    cmd = [
        RAY,
        "start",
        "--head",
        "--block",
        "--disable-usage-stats",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--ray-client-server-port={client}",
        f"--node-manager-port={node_mgr}",
        f"--object-manager-port={obj_mgr}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={rt_env_agent}",
        # A private worker-port range avoids clashing with another cluster on the machine.
        f"--min-worker-port={min_worker}",
        f"--max-worker-port={min_worker + 200}",
        "--object-store-memory=1000000000",
        f"--temp-dir={temp_dir}",
    ]
    log = open(Path(temp_dir) / "head.log", "wb")  # noqa: SIM115 - lives as long as the head
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    ray = LocalRay(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", temp_dir, proc, env)
    try:
        _wait_for_dashboard(ray.dashboard_url, proc, timeout)
    except Exception:
        stop_local_ray(ray)
        raise
    return ray


def stop_local_ray(ray: LocalRay) -> None:
    """Stop this head and everything it spawned (its process group), then its temp dir."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(ray.process.pid, sig)
        except ProcessLookupError:
            break
        try:
            ray.process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Workers are started by the raylet in new sessions; kill any left by session dir name.
    subprocess.run(["pkill", "-9", "-f", ray.temp_dir], check=False)
    shutil.rmtree(ray.temp_dir, ignore_errors=True)


@contextlib.contextmanager
def local_ray(num_cpus: int = NUM_CPUS, connect: bool = True) -> Iterator[LocalRay]:
    """A local head for the length of a ``with`` block, this process connected to it as a Ray
    driver unless ``connect`` is false (e.g. when only ``ray job submit`` talks to it)."""
    head = start_local_ray(num_cpus=num_cpus)
    try:
        if connect:
            import ray

            ray.init(address=head.gcs_address, log_to_driver=False)
        yield head
    finally:
        if connect:
            import ray

            ray.shutdown()
        stop_local_ray(head)
