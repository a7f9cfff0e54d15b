"""jobs/classify_sky.py: its command line, its errors, and a real `ray job submit` run."""

from __future__ import annotations

import pandas as pd
import pytest

from iic_survey.output import staging
from tests.fixtures.jobs import load_job


@pytest.fixture(scope="module")
def job(repo_root):
    """The job module, imported from its file (jobs/ is not a package)."""
    return load_job(repo_root / "jobs" / "classify_sky.py", "classify_sky")


def test_parser(job):
    p = job.build_parser()
    a = p.parse_args(["--healpix-order", "6", "--cone", "10,-5,0.5", "--limit", "2"])
    assert a.healpix_order == 6 and a.cone == (10.0, -5.0, 0.5) and a.limit == 2
    assert p.parse_args(["--pixels", "1", "2"]).pixels == [1, 2]
    with pytest.raises(SystemExit):
        p.parse_args(["--pixels", "1", "--all"])
    with pytest.raises(SystemExit):
        p.parse_args(["--cone", "10,5"])
    with pytest.raises(SystemExit):
        p.parse_args(["--cutout-mode", "tile"])
    assert p.parse_args([]).service_timeout == 30.0
    assert p.parse_args(["--service-timeout", "90"]).service_timeout == 90.0


def test_missing_model_says_train_first(job, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IIC_SURVEY_HOME", str(tmp_path))
    assert job.main(["--all"]) == 2
    err = capsys.readouterr().err
    assert "jobs/train.py" in err and str(tmp_path / "model") in err


def test_bad_arguments_are_errors_not_tracebacks(job, tiny_sky, tiny_model_dir, capsys):
    code = job.main(
        ["--catalog", tiny_sky.catalog_url, "--model", tiny_model_dir, "--healpix-order", "9"]
    )
    assert code == 2 and "0..8" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_job_submit_then_resume_in_process(
    job, local_ray, ray_cluster, tiny_sky, tiny_model_dir, tmp_path
):
    """The user's command: a limited run through `ray job submit`, completed by main()."""
    model = tiny_model_dir
    out = str(tmp_path / "catalog")
    args = ["--catalog", tiny_sky.catalog_url, "--images", "local", "--model", model,
            "--output", out, "--healpix-order", "5", "--chunk-size", "500",
            "--inference-actors", "1"]  # fmt: skip
    proc = local_ray.submit("jobs/classify_sky.py", *args, "--limit", "1", timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "partial" in proc.stdout and "sources/s" in proc.stdout
    assert len(staging.finished_pixels(out, 5)) == 1
    assert job.main(args) == 0  # in-process, on the same cluster: resumes the rest
    assert len(staging.finished_pixels(out, 5)) == len(tiny_sky.pixels)
    df = pd.read_parquet(out + "/iic_allwise/dataset", columns=["cntr"])
    assert len(df) == tiny_sky.n_sources and df["cntr"].is_unique
