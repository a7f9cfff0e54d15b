"""A source's numbers do not depend on its batch-mates (issue 24, COORDINATION "batching").

The forward pass sees one fixed shape (:class:`~iic_survey.model.inference.Predictor` pads the
last batch), so neither ``--chunk-size`` nor ``--model-batch-size`` nor the chunk a source lands
in may change a single bit of its row. Checked at the Predictor and over a whole run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from iic_survey.model import inference, machine
from iic_survey.model.network import build_model, optimize_for_inference
from iic_survey.output import reader
from iic_survey.survey import classify
from iic_survey.survey.config import PipelineConfig
from iic_survey.survey.run import run_pipeline
from iic_survey.testing.model import TINY_MODEL

CPU = torch.device("cpu")


def _inputs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 80, 80)).astype(np.float32)
    return x, rng.normal(size=(n, TINY_MODEL.n_features)).astype(np.float32)


@pytest.fixture(scope="module")
def net():
    return optimize_for_inference(build_model(TINY_MODEL, seed=0).eval())


def test_a_row_is_bit_identical_whatever_batch_size_and_batch_mates(net) -> None:
    x, f = _inputs(37)
    want_l, want_e = inference.Predictor(net, CPU, None, 16)(x, f)
    for batch in (1, 7, 16, 40, 128):
        pred = inference.Predictor(net, CPU, None, batch)
        assert pred.shape == inference.CPU_MICRO_BATCH and pred.batch % pred.shape == 0
        for rows in (slice(0, 37), slice(3, 4), slice(5, 22)):  # whole, alone, a short tail
            got_l, got_e = pred(x[rows], f[rows])
            np.testing.assert_array_equal(got_l, want_l[rows], err_msg=f"batch {batch} {rows}")
            np.testing.assert_array_equal(got_e, want_e[rows], err_msg=f"batch {batch} {rows}")


def test_the_forward_pass_only_sees_one_shape(net, monkeypatch) -> None:
    seen: list[int] = []
    embed = net.embed

    def spy(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return embed(x, f)

    monkeypatch.setattr(net, "embed", spy)
    x, f = _inputs(21)
    inference.Predictor(net, CPU, None, 7)(x, f)
    assert seen == [inference.CPU_MICRO_BATCH] * 2  # 16 + 5 padded to 16


def test_a_cpu_actor_classifies_a_chunk_in_slices_that_change_no_bit(
    tiny_model_dir, monkeypatch
) -> None:
    n = 2 * classify.CPU_SLICE_ROWS + 37  # two whole slices and a short one
    x, f = _inputs(n, seed=1)
    rng = np.random.default_rng(2)
    chunk = {"image": x, "features": f, "quality_flags": np.zeros(n, np.int64),
             "cntr": np.arange(n), "w1mpro": rng.uniform(8, 17, n),
             **{k: np.zeros(n, np.int64) for k in ("_pixel", "_row", "_chunk")}}  # fmt: skip
    actor = classify.Classify(tiny_model_dir, "cpu", None, None)
    seen: list[int] = []
    whole = actor._logits
    monkeypatch.setattr(actor, "_logits", lambda b: seen.append(len(b["image"])) or whole(b))
    sliced = pd.DataFrame(actor(chunk))
    assert seen == [classify.CPU_SLICE_ROWS, classify.CPU_SLICE_ROWS, 37]  # never all at once
    monkeypatch.setattr(classify, "CPU_SLICE_ROWS", 10 * n)
    at_once = pd.DataFrame(actor(chunk))
    assert seen[3:] == [n]
    pd.testing.assert_frame_equal(sliced, at_once, check_exact=True)


def _rows(out: str) -> pd.DataFrame:
    return reader.read(out).sort_values("cntr", ignore_index=True)


@pytest.mark.slow
def test_chunk_and_model_batch_sizes_do_not_change_a_bit_of_the_catalog(
    ray_cluster, tiny_sky, tiny_model_dir, tmp_path
) -> None:
    outs = []
    for chunk, batch in ((400, 128), (97, 7)):
        out = str(tmp_path / f"c{chunk}b{batch}")
        run_pipeline(
            PipelineConfig.create(
                catalog=tiny_sky.catalog_url,
                images=tiny_sky.images_url,
                model_dir=tiny_model_dir,
                output=out,
                chunk_size=chunk,
                model_batch_size=batch,
                inference_actors=1,
                progress_interval_s=2.0,
            )
        )
        outs.append(_rows(out))
    with open(f"{out}/_run.json", encoding="utf-8") as f:
        record = json.load(f)
    (used,) = record["machines"]  # what the rows were computed with
    assert used["torch_cpu_capability"] in machine.LEVELS
    assert used["precision"] == record["precision_runs"][-1]["used"]  # bf16 where native
    assert record["ood"] == {"estimator": "pca-ledoit-wolf", "legacy": False}
    a, b = outs
    assert len(a) > 0 and a["cntr"].is_unique
    pd.testing.assert_frame_equal(a, b, check_exact=True)
