"""The shared local Ray cluster works both in-process and through `ray job submit`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_in_process_tasks_run_on_the_local_head(ray_cluster):
    import ray

    @ray.remote
    def square(x: int) -> int:
        return x * x

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert ray.cluster_resources()["CPU"] >= 2


def test_job_submit_runs_a_python_entrypoint_from_the_repo(local_ray):
    result = local_ray.submit("-c", "import iic_survey; print('CLASSES', iic_survey.CLASSES)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CLASSES ('galaxy', 'quasar', 'star')" in result.stdout


def test_a_failing_job_makes_submit_exit_non_zero(local_ray):
    result = local_ray.submit("-c", "raise SystemExit(3)")
    assert result.returncode != 0
