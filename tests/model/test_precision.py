"""iic_survey.model.precision and inference, survey.classify's gate: reduced precision, gated.

The gate must pass on a model that bf16 does not disturb (the paper-sized IICnet on real
stamps) and must fall back to fp32 when forced to disagree: a tolerance of zero, or a model made
numerically fragile (its three class rows equal up to far below bf16's resolution, so bf16
rounds them into a tie while fp32 still tells them apart). When full bf16 fails, the gate tries
the mixed plan ``bf16-late`` (early layers fp32, conv4/conv5/CBAM2 in bf16, the head in fp32):
the fragile head stays fp32 there, so that plan passes and is what the run records.
"""

from __future__ import annotations

import dataclasses
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from iic_survey.core.calibration import DepthCalibration
from iic_survey.core.constants import CLASSES
from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
from iic_survey.inputs.catalog import open_catalog
from iic_survey.model import agreement, inference, precision, quantized
from iic_survey.model.config import ModelConfig
from iic_survey.model.directory import save_model_dir
from iic_survey.model.network import build_model, optimize_for_inference
from iic_survey.model.ood import predict
from iic_survey.stamps.maker import StampMaker
from iic_survey.stamps.rgb import RGBParams
from iic_survey.survey import config as survey_config
from iic_survey.survey.classify import (
    DEFAULT_CONFIDENCE_THRESHOLD,
    Classify,
    Scoring,
    _catalog_view,
    gate_precision,
)
from iic_survey.testing.model import TINY_MODEL

CPU = torch.device("cpu")
needs_bf16 = pytest.mark.skipif(
    not precision.cpu_has_native_bf16(), reason="this CPU has no native bf16"
)


@pytest.fixture(scope="module")
def made(tiny_sky) -> dict[str, np.ndarray]:
    """160 rows of the tiny sky's first pixel, as the CPU stage makes them (images)."""
    cat = open_catalog(tiny_sky.catalog_url)
    rows = cat.read_pixel(int(tiny_sky.pixels[0]), 5, columns=PIPELINE_COLUMNS).head(160)
    rows["_pixel"], rows["_row"], rows["_chunk"] = int(tiny_sky.pixels[0]), range(160), 0
    return dict(StampMaker.from_spec(tiny_sky.images_url)(rows))


@pytest.fixture(scope="module")
def sky_rows(tiny_sky) -> dict[str, np.ndarray]:
    """Every classifiable row of the tiny sky as the CPU stage makes it, with its true class."""
    from iic_survey.core.flags import unclassifiable
    from iic_survey.synthetic.skyfiles import read_truth

    cat = open_catalog(tiny_sky.catalog_url)
    maker = StampMaker.from_spec(tiny_sky.images_url)
    parts = []
    for pixel in tiny_sky.pixels:
        rows = cat.read_pixel(int(pixel), 5, columns=PIPELINE_COLUMNS)
        rows["_pixel"], rows["_row"], rows["_chunk"] = int(pixel), range(len(rows)), 0
        made = dict(maker(rows))
        good = ~unclassifiable(np.asarray(made["quality_flags"], dtype=np.int64))
        parts.append({k: np.asarray(v)[good] for k, v in made.items()})
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    truth = read_truth(tiny_sky.root).set_index("cntr")["class"]
    out["label"] = np.array([CLASSES.index(c) for c in truth.loc[out["cntr"]]])
    return out


TRAINED = dataclasses.replace(TINY_MODEL, arch="fusion")
"""The trained tiny model: image and colour encoders (the colours teach it fast)."""


def _train(rows: dict[str, np.ndarray], steps: int = 300) -> torch.nn.Module:
    """A tiny fusion model with its colour encoder and head trained on the rows' true classes.

    The image encoder keeps its seeded weights (training it takes minutes on a loaded CPU), its
    pooled output computed once; the trained head reads it beside the colours, so the logits
    are a classifier's, well above chance, and depend on the image encoder that int8 rounds.
    """
    import torch.nn.functional as F

    model = build_model(TRAINED, seed=0).eval()
    with torch.no_grad():
        pooled = torch.cat([model.image(torch.from_numpy(rows["image"][i : i + 256]))
                            for i in range(0, len(rows["image"]), 256)])  # fmt: skip
    f = torch.from_numpy(np.asarray(rows["features"], dtype=np.float32))
    y = torch.from_numpy(rows["label"])
    model.colour.norm.running_mean.copy_(torch.nan_to_num(f).mean(0))
    model.colour.norm.running_var.copy_(torch.nan_to_num(f).var(0) + 1e-3)
    trained = [*model.colour.parameters(), *model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adam(trained, lr=0.01)
    for _ in range(steps):
        x = torch.cat([pooled, model.colour(f)], dim=1)  # (N, C5 + H)
        loss = F.cross_entropy(model.fc2(F.relu(model.fc1(x))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.requires_grad_(False)


@pytest.fixture(scope="module")
def trained_dir(sky_rows, tmp_path_factory) -> str:
    """A model directory of a trained tiny IICnet with T(W1), OOD statistics and a gate set."""
    from iic_survey.model import ood

    model = _train(sky_rows)
    logits, emb = ood.predict(model, sky_rows["image"], sky_rows["features"], CPU, 64)
    assert (logits.argmax(1) == sky_rows["label"]).mean() > 0.6  # it learned something
    path = tmp_path_factory.mktemp("trained") / "model"
    depth = DepthCalibration(knots=(13.0, 16.0), log_t=(0.0, np.log(0.6)), temperature=0.9)
    extra = {"rgb": RGBParams().to_dict(), "temperature": 0.9, "calibration": depth,
             "feature_stats": ood.ood_statistics(emb, logits, temperature=0.9)}  # fmt: skip
    save_model_dir(path, model, TRAINED, extra)
    quantized.write_gate_set(path, sky_rows, sky_rows["image"][::7])
    return str(path)


def _fragile(model: torch.nn.Module) -> torch.nn.Module:
    """Class rows of the head equal, biases 1 + (0, 1, 2) x 1e-5: bf16 (8 bits of mantissa)
    rounds the three logits into a tie, fp32 still ranks them."""
    with torch.no_grad():
        w = model.fc2.weight
        w.copy_(w[:1].expand_as(w))
        model.fc2.bias.copy_(1.0 + 1e-5 * torch.arange(len(w), dtype=w.dtype))
    return model


def _model_dir(path: Path, cfg: ModelConfig, fragile: bool = False, gate_rows=None) -> str:
    model = build_model(cfg, seed=0).eval()
    if fragile:
        _fragile(model)
    save_model_dir(path, model, cfg, {"rgb": RGBParams().to_dict(), "temperature": 1.0})
    if gate_rows is not None:
        quantized.write_gate_set(path, gate_rows, gate_rows["image"][:64])
    return str(path)


# ------------------------------------------------------------------------------ pure pieces


def test_choices_match_the_command_line():
    assert survey_config.PRECISIONS == precision.PRECISIONS
    with pytest.raises(ValueError, match="did you mean 'bf16'"):
        precision.check_precision("bf61")
    with pytest.raises(ValueError, match="precision"):
        survey_config.PipelineConfig.create("c", "i", "m", "o", precision="fp8")
    assert precision.autocast_dtype("fp32") is None
    assert precision.autocast_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="resolve"):
        precision.autocast_dtype("auto")


def test_plans_of_the_precisions_a_run_may_use():
    assert precision.plan("fp32") == precision.Plan(None)
    assert precision.plan("bf16") == precision.Plan(torch.bfloat16)  # the whole model
    mixed = precision.plan(precision.MIXED)
    assert mixed.dtype is torch.bfloat16 and mixed.modules == precision.LATE_MODULES
    assert precision.MIXED in precision.RUN_PRECISIONS
    assert precision.MIXED not in precision.PRECISIONS  # not a --precision choice
    assert precision.plan("int8") == precision.Plan(None, int8=True)  # a model, not an autocast
    with pytest.raises(ValueError, match="quantized"):
        precision.autocast_dtype("int8")
    with pytest.raises(ValueError, match="plan"):
        precision.autocast_dtype(precision.MIXED)  # never silently the whole model in bf16
    linear = torch.nn.Linear(2, 2)
    with (
        pytest.raises(ValueError, match="no submodule"),
        precision.autocast_modules(linear, CPU, torch.bfloat16, ("conv4",)),
    ):
        pass


def test_auto_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.candidates("auto", "cpu")[0] == ("bf16", "bf16-late", "int8")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.candidates("auto", "cpu")[0] == ("int8",)  # AVX2: int8 only, timed first
    assert precision.candidates("fp16", "cpu")[0] == ("fp16",)  # asked for: kept, then gated
    assert precision.candidates("bf16", "cpu")[0] == ("bf16", "bf16-late")
    assert precision.candidates("fp32", "cpu") == ((), "fp32 asked for")
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda: False)
    assert precision.candidates("auto", "cuda")[0] == ()  # no int8 on a GPU


def test_cpu_flags_are_read_from_cpuinfo():
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    expected = "avx512_bf16" in flags or "amx_bf16" in flags
    if text:
        assert precision.cpu_has_native_bf16() == expected


def test_compare_counts_classes_and_probabilities():
    a = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    agree, diff = precision.compare(a, a)
    assert agree == 1.0 and diff == 0.0
    agree, diff = precision.compare(a, a[::-1])
    assert agree == 0.0 and diff > 0.3


def test_a_nan_is_a_disagreement_never_skipped():
    a = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    b = a.copy()
    b[1] = np.nan
    assert precision.compare(a, b) == (2 / 3, float("inf"))
    ref, cand = agreement.softmax_view(a), agreement.softmax_view(b)
    assert agreement.compare(ref, cand) == (2, 3, float("inf"))
    both = agreement.compare(cand, cand)  # NaN where fp32 is NaN too (an unclassifiable row)
    assert both[0] == 3 and both[2] == 0.0
    many = np.random.default_rng(0).normal(size=(3000, 3))
    broken = many.copy()
    broken[7] = np.nan  # one NaN row in 3,000: agreement is fine, the difference is not
    res = precision.check_gate(lambda p: broken if p == "int8" else many, "int8", "cpu")
    assert res.used == "fp32" and res.tried[0]["max_prob_diff"] == float("inf"), res.reason


def test_the_bound_is_a_one_sided_95_percent_binomial_lower_bound():
    from scipy.stats import binom

    for k, n in ((2048, 2048), (2040, 2048), (250, 256), (1, 10)):
        lb = agreement.lower_bound(k, n)
        # independent: the rate at which seeing >= k of n agreeing has probability 5 %
        assert binom.sf(k - 1, n, lb) == pytest.approx(0.05, rel=1e-6)
    assert agreement.lower_bound(0, 10) == 0.0 and agreement.lower_bound(0, 0) == 0.0
    ref = np.random.default_rng(2).normal(size=(2048, 3))

    classes_only = precision.Gate(max_prob_diff=1.0)  # isolate the agreement bound

    def gate_with(n: int, flips: int) -> precision.GateResult:
        cand = ref[:n].copy()
        cand[:flips] = np.roll(cand[:flips], 1, axis=1)  # each of these rows changes class
        runs = {"fp32": ref[:n], "int8": cand}
        return precision.check_gate(runs.__getitem__, "int8", "cpu", classes_only)

    perfect_small = gate_with(256, 0)  # 100 % of 256: the bound is 98.84 %, below 99.5 %
    assert perfect_small.used == "fp32" and perfect_small.agreement == 1.0
    assert perfect_small.lower_bound == pytest.approx(0.05 ** (1 / 256))
    assert gate_with(2048, 3).used == "int8"  # 99.85 %: bound 99.62 %
    flipped = gate_with(2048, 10)  # 99.51 % observed, bound 99.16 %: not enough evidence
    assert flipped.used == "fp32" and flipped.agreement > precision.MIN_AGREEMENT
    assert flipped.lower_bound < precision.MIN_AGREEMENT


def _views_under(calibration: DepthCalibration, logits: np.ndarray, w1: np.ndarray) -> dict:
    """What the catalog gets of rows (``_catalog_view``, the run's own scoring)."""
    n = len(logits)
    scoring = Scoring(calibration, DEFAULT_CONFIDENCE_THRESHOLD, None, "m")
    actor = types.SimpleNamespace(ood=None, scoring=scoring)
    rows = {"quality_flags": np.zeros(n, np.int64), "w1mpro": w1, "_pixel": np.zeros(n),
            "_row": np.arange(n), "_chunk": np.zeros(n)}  # fmt: skip
    return _catalog_view(actor, rows, logits, np.zeros((n, 4)))


def test_the_gate_judges_probabilities_as_the_catalog_gets_them():
    """A plan that is within the gate at the single temperature but not under T(W1) (T = 0.25
    for faint rows sharpens the difference) must fail; the outlier flag counts as a change."""
    rng = np.random.default_rng(3)
    n = 3000
    ref = rng.normal(scale=0.5, size=(n, 3))
    cand = ref.copy()
    cand[:, 0] += 0.012  # every row's logit moves a little: classes mostly kept
    w1 = np.where(np.arange(n) % 2 == 0, 12.0, 17.0)  # bright and faint rows
    single = DepthCalibration.constant(1.0)
    depth = DepthCalibration(knots=(13.0, 16.0), log_t=(0.0, np.log(0.25)), temperature=1.0)
    one_t = {p: _views_under(single, x, w1) for p, x in (("fp32", ref), ("int8", cand))}
    by_w1 = {p: _views_under(depth, x, w1) for p, x in (("fp32", ref), ("int8", cand))}
    lenient = precision.Gate(min_agreement=0.9)  # isolate the probability bound
    assert precision.check_gate(one_t.__getitem__, "int8", "cpu", lenient).used == "int8"
    res = precision.check_gate(by_w1.__getitem__, "int8", "cpu", lenient)
    assert res.used == "fp32" and res.max_prob_diff > precision.MAX_PROB_DIFF, res.reason
    # the outlier flag is part of the row: a confidence moved across the threshold changes it
    edge, nudge = np.log(np.array([[0.6, 0.2, 0.2]])), np.array([[0.001, 0.0, 0.0]])
    a = _views_under(single, np.repeat(edge + nudge, 10, 0), np.full(10, 12.0))
    b = _views_under(single, np.repeat(edge - nudge, 10, 0), np.full(10, 12.0))
    assert (a["class"] == b["class"]).all() and agreement.compare(a, b)[0] == 0


def test_auto_never_picks_a_plan_slower_than_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    ref = np.random.default_rng(4).normal(size=(2048, 3))
    calls: list[str] = []

    def run(p: str) -> np.ndarray:
        calls.append(p)
        return ref

    def timing(speeds: dict[str, float]):
        return lambda p: speeds[p]

    slow = {"bf16": 0.23, "bf16-late": 0.5, "int8": 1.05}  # an AVX2 CPU: bf16 emulated
    res = precision.check_gate(run, "auto", "cpu", speed=timing(slow))
    assert res.used == "fp32" and calls == [], res.reason  # nothing faster: nothing compared
    assert [t["speed"] for t in res.tried] == [0.23, 0.5, 1.05]
    assert all("not compared" in t["error"] for t in res.tried)
    fast = {"bf16": 1.8, "bf16-late": 1.3, "int8": 2.5}
    res = precision.check_gate(run, "auto", "cpu", speed=timing(fast))
    assert res.used == "int8" and res.speed == 2.5 and calls == ["fp32", "int8"]  # fastest first
    assert res.warning is None and res.lower_bound > precision.MIN_AGREEMENT
    calls.clear()
    res = precision.check_gate(run, "bf16", "cpu", speed=timing(slow))  # asked for: honoured
    assert res.used == "bf16" and res.speed == 0.23 and calls == ["fp32", "bf16"]
    assert "0.23x the speed of fp32" in res.warning
    assert json.loads(json.dumps(res.to_dict()))["warning"] == res.warning  # into _run.json


def test_a_plan_that_fails_to_build_is_recorded_and_the_run_falls_back(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    ref = np.random.default_rng(5).normal(size=(2048, 3))

    def no_engine(p: str) -> float:
        raise RuntimeError("this PyTorch has no 'x86' quantized engine")

    res = precision.check_gate({"fp32": ref}.__getitem__, "auto", "cpu", speed=no_engine)
    assert res.used == "fp32" and "int8 failed to build" in res.reason
    assert res.tried[0]["error"].startswith("RuntimeError") and res.n_stamps == 0

    def broken(p: str) -> np.ndarray:
        if p != "fp32":
            raise RuntimeError("no kernel")
        return ref

    res = precision.check_gate(broken, "fp16", "cpu")
    assert res.used == "fp32" and "failed to run" in res.reason
    assert precision.check_gate(broken, "fp32", "cpu").n_stamps == 0  # no gate for fp32


def test_the_gate_tries_the_mixed_plan_when_full_bf16_fails(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    ref = np.random.default_rng(1).normal(size=(2000, 3))
    flipped = ref.copy()
    flipped[:40] = np.roll(flipped[:40], 1, axis=1)  # 2 % of the classes change
    runs = {"fp32": ref, "bf16": flipped, "bf16-late": ref + 1e-4, "int8": flipped}
    speeds = {"bf16": 2.5, "bf16-late": 1.4, "int8": 1.2}
    for requested in ("bf16", "auto"):
        res = precision.check_gate(runs.__getitem__, requested, "cpu", speed=speeds.__getitem__)
        assert res.used == "bf16-late", res.reason
        assert "bf16 gate failed" in res.reason and "bf16-late gate passed" in res.reason
        assert res.agreement == 1.0 and res.max_prob_diff < 1e-3 and res.n_stamps == 2000
        first, second = res.tried[:2]
        assert not first["passed"] and first["agreement"] == 0.98 and second["passed"]
        assert precision.GateResult(**json.loads(json.dumps(res.to_dict()))).used == "bf16-late"
    runs["bf16"] = ref  # full bf16 passes: the mixed plan is not tried
    res = precision.check_gate(runs.__getitem__, "bf16", "cpu")
    assert res.used == "bf16" and len(res.tried) == 1

    def no_plan(p: str) -> np.ndarray:
        if p == "bf16-late":
            raise ValueError("this model has no submodule 'image.conv4'")
        return runs["fp32"] if p == "fp32" else flipped

    res = precision.check_gate(no_plan, "bf16", "cpu")  # e.g. the colour-only model
    assert res.used == "fp32" and "bf16-late failed to run" in res.reason
    assert res.tried[-1]["error"].startswith("ValueError") and res.agreement == 0.98
    res = precision.check_gate({"fp32": ref, "fp16": flipped}.__getitem__, "fp16", "cpu")
    assert res.used == "fp32" and len(res.tried) == 1  # no mixed plan for fp16


# ------------------------------------------------------------------------------ the model


def test_predictor_in_fp32_equals_predict_exactly(made):
    net = optimize_for_inference(build_model(TINY_MODEL, seed=1).eval())
    old = predict(net, made["image"], made["features"], CPU, 16)
    new = inference.Predictor(net, CPU, None, 16)(made["image"], made["features"])
    np.testing.assert_array_equal(old[0], new[0])
    np.testing.assert_array_equal(old[1], new[1])


def _output_dtypes(net: torch.nn.Module, names: tuple[str, ...]) -> tuple[dict, list]:
    """Record the output dtype of each named submodule; (record, hook handles)."""
    seen: dict[str, torch.dtype] = {}
    handles = []
    for name in names:

        def hook(module, args, out, name=name):
            seen[name] = out.dtype

        handles.append(net.get_submodule(name).register_forward_hook(hook))
    return seen, handles


@needs_bf16
def test_the_mixed_plan_runs_only_the_late_layers_in_bf16(made):
    net = optimize_for_inference(build_model(TINY_MODEL, seed=1).eval())
    fp32 = inference.Predictor(net, CPU, None, 16)
    late = fp32.with_precision("bf16-late")
    inner = ("image.stem.0", "image.rfb", "image.conv3.0", "image.conv4.0", "image.conv5.0")
    seen, handles = _output_dtypes(net, (*inner, "image.cbam2", "fc1", "fc2"))
    got = late(made["image"], made["features"])
    for handle in handles:
        handle.remove()
    assert seen["image.stem.0"] == seen["image.rfb"] == seen["image.conv3.0"] == torch.float32
    assert seen["image.conv4.0"] == seen["image.conv5.0"] == torch.bfloat16  # inside: bf16
    assert seen["image.cbam2"] == seen["fc1"] == seen["fc2"] == torch.float32  # cast back
    for name in precision.LATE_MODULES:  # the plan's hooks are gone after the call
        module = net.get_submodule(name)
        assert not module._forward_hooks and not module._forward_pre_hooks
    want = fp32(made["image"], made["features"])
    whole = fp32.with_precision("bf16")(made["image"], made["features"])
    assert np.abs(got[0] - want[0]).max() < 0.05 and not np.array_equal(got[0], want[0])
    assert not np.array_equal(got[0], whole[0])  # not the whole model in bf16 either
    np.testing.assert_array_equal(fp32(made["image"], made["features"])[0], want[0])  # fp32 kept


@needs_bf16
@pytest.mark.slow
def test_gate_passes_on_the_paper_model_and_fails_when_forced(made):
    net = optimize_for_inference(build_model(ModelConfig(), seed=0).eval())
    fp32 = inference.Predictor(net, CPU, None, 16)

    def run_logits(p: str) -> np.ndarray:
        return fp32.with_precision(p)(made["image"], made["features"])[0]

    few = precision.Gate(min_agreement=0.98)  # 160 stamps: even 160 of 160 bound it at 98.1 %
    res = precision.check_gate(run_logits, "bf16", CPU, few)
    assert res.used == "bf16", res.reason
    assert res.agreement >= precision.MIN_AGREEMENT and res.max_prob_diff <= 0.01
    forced = precision.check_gate(run_logits, "bf16", CPU, precision.Gate(max_prob_diff=0.0))
    assert forced.used == "fp32" and "gate failed" in forced.reason
    assert [t["precision"] for t in forced.tried] == ["bf16", "bf16-late"]
    late = forced.tried[1]  # the mixed plan moves the probabilities less than full bf16
    assert 0 < late["max_prob_diff"] < forced.tried[0]["max_prob_diff"]


@needs_bf16
def test_gate_in_the_actor_falls_back_on_a_fragile_model(made, sky_rows, tmp_path):
    good_dir = _model_dir(tmp_path / "good", TINY_MODEL, gate_rows=sky_rows)
    good = gate_precision(good_dir, "cpu", "bf16", made)
    assert good["used"] == "bf16", good["reason"]
    bad_dir = _model_dir(tmp_path / "bad", TINY_MODEL, fragile=True, gate_rows=sky_rows)
    bad = gate_precision(bad_dir, "cpu", "bf16", made)
    # full bf16 ties the fragile head's logits; the mixed plan keeps the head in fp32
    assert bad["used"] == "bf16-late" and "bf16 gate failed" in bad["reason"], bad["reason"]
    first, second = bad["tried"]
    assert first["agreement"] < precision.MIN_AGREEMENT and second["passed"]
    assert bad["lower_bound"] >= precision.MIN_AGREEMENT
    assert bad["n_stamps"] == len(sky_rows["image"])
    assert first["speed"] is not None and second["speed"] == bad["speed"]  # timed on this CPU
    json.dumps(bad)  # goes into _run.json as it is


@needs_bf16
def test_classify_in_bf16_agrees_with_fp32(made, tmp_path):
    model_dir = _model_dir(tmp_path / "m", TINY_MODEL)
    a = Classify(model_dir, "cpu", 16, None, precision="fp32")(made)
    b = Classify(model_dir, "cpu", 16, None, precision="bf16")(made)
    c = Classify(model_dir, "cpu", 16, None, precision="bf16-late")(made)
    pa, pb, pc = (
        np.stack([r[f"p_{k}"] for k in ("star", "galaxy", "quasar")], 1) for r in (a, b, c)
    )
    ok = np.isfinite(pa).all(axis=1)
    assert np.nanmax(np.abs(pa - pb)) < 0.01 and not np.array_equal(pa[ok], pb[ok])
    assert np.nanmax(np.abs(pa - pc)) < 0.01 and not np.array_equal(pa[ok], pc[ok])
    assert not np.array_equal(pb[ok], pc[ok])  # the actor runs the plan it was given


def test_int8_passes_the_gate_on_a_trained_model(trained_dir, made):
    res = gate_precision(trained_dir, "cpu", "int8", {})  # the model's gate set, not the chunk
    n = len(quantized.load_gate_set(trained_dir)["image"])
    assert res["used"] == "int8" and res["n_stamps"] == n > 1000, res["reason"]
    assert res["lower_bound"] >= precision.MIN_AGREEMENT and "gate set" in res["gate_set"]
    assert res["speed"] is not None and res["tried"][0]["speed"] == res["speed"]
    a = Classify(trained_dir, "cpu", 16, None, precision="fp32")(made)
    b = Classify(trained_dir, "cpu", 16, None, precision="int8")(made)
    pa, pb = (np.stack([r[f"p_{k}"] for k in CLASSES], 1) for r in (a, b))
    ok = np.isfinite(pa).all(axis=1)
    assert np.abs(pa[ok] - pb[ok]).max() < precision.MAX_PROB_DIFF
    assert not np.array_equal(pa[ok], pb[ok])  # the actor runs the int8 model it was given
    assert (a["class"][ok] == b["class"][ok]).mean() > 0.99


def test_int8_is_the_image_encoder_in_int8_and_needs_a_gate_set(trained_dir, made, tmp_path):
    import shutil

    bundle_model = build_model(TINY_MODEL, seed=0).eval()
    q = quantized.quantize_int8(optimize_for_inference(bundle_model), made["image"][:32], 16)
    kinds = {type(m).__module__ for m in q.image.modules()}
    assert any("quantized" in k for k in kinds)  # int8 kernels inside the image encoder
    for name in ("cbam1", "cbam2"):  # the attention stays fp32: faster so
        inner = {type(m).__module__ for m in getattr(q.image, name).modules()}
        assert not any("quantized" in k for k in inner), (name, inner)
    assert type(q.fc2) is torch.nn.Linear and type(bundle_model.image.stem[0]).__name__ == "Conv2d"
    bare = tmp_path / "bare"
    shutil.copytree(trained_dir, bare)
    (bare / quantized.GATE_SET).unlink()
    res = gate_precision(str(bare), "cpu", "int8", made)
    assert res["used"] == "fp32" and "no gate set" in res["tried"][0]["error"], res["reason"]
    assert f"no gate set in {bare}" in res["gate_set"]  # says it used the run's first rows
    colour = ModelConfig(arch="colour")
    with pytest.raises(ValueError, match="no image encoder"):
        quantized.quantize_int8(build_model(colour, seed=0).eval(), made["image"][:16], 16)


# ------------------------------------------------------------------------------ whole runs


def _run(tiny_sky, model_dir: str, out: Path, requested: str) -> dict:
    from iic_survey.output.reader import read_properties
    from iic_survey.survey.run import run_pipeline

    cfg = survey_config.PipelineConfig.create(
        catalog=tiny_sky.catalog_url,
        images=tiny_sky.images_url,
        model_dir=model_dir,
        output=str(out),
        pixels=(int(tiny_sky.pixels[0]),),
        chunk_size=400,
        inference_actors=1,
        precision=requested,
    )
    run_pipeline(cfg)
    record = json.loads((out / "_run.json").read_text())
    return {"record": record, "props": read_properties(str(out))}


@pytest.mark.slow
def test_a_run_records_its_precision_and_falls_back_on_a_fragile_model(
    ray_cluster, tiny_sky, sky_rows, tmp_path
):
    fp32 = _run(tiny_sky, _model_dir(tmp_path / "m", TINY_MODEL), tmp_path / "a", "fp32")
    assert fp32["record"]["args"]["precision"] == "fp32"
    assert [r["used"] for r in fp32["record"]["precision_runs"]] == ["fp32"]
    assert fp32["props"]["iic_precision"] == "fp32"
    assert '"precision": "fp32"' in fp32["props"]["iic_run_args"]

    bad_dir = _model_dir(tmp_path / "bad", TINY_MODEL, fragile=True, gate_rows=sky_rows)
    bad = _run(tiny_sky, bad_dir, tmp_path / "b", "bf16")
    (run,) = bad["record"]["precision_runs"]
    assert run["requested"] == "bf16" and run["n_stamps"] == len(sky_rows["image"])
    assert "gate set" in run["gate_set"] and run["tried"][0]["speed"] is not None
    assert [t["precision"] for t in run["tried"]] == ["bf16", "bf16-late"]
    if precision.cpu_has_native_bf16():  # full bf16 fails, the mixed plan (fp32 head) passes
        assert run["used"] == "bf16-late" and "bf16 gate failed" in run["reason"], run["reason"]
        assert bad["props"]["iic_precision"] == "bf16-late"
    else:  # elsewhere the slow emulated bf16 may do either; the record says which
        assert bad["props"]["iic_precision"] == run["used"]


@pytest.mark.slow
def test_auto_runs_what_the_gate_found_faster(ray_cluster, tiny_sky, trained_dir, tmp_path):
    got = _run(tiny_sky, trained_dir, tmp_path / "a", "auto")
    (run,) = got["record"]["precision_runs"]
    assert got["props"]["iic_precision"] == run["used"], run["reason"]
    assert "int8" in [t["precision"] for t in run["tried"]]  # an x86 CPU: int8 is a candidate
    if run["used"] != "fp32":  # which plan wins is the machine's; never a slower one
        assert run["speed"] >= precision.AUTO_MIN_SPEEDUP and run["warning"] is None


# ------------------------------------------------------------------------------ the split stage


def test_cut_then_colour_in_the_actor_equals_the_stamp_maker(tiny_sky, tiny_model_dir):
    """StampCutter (CPU stage) + Classify's RGB on the stamps == StampMaker + Classify, exactly."""
    from iic_survey.stamps.split import StampCutter

    cat = open_catalog(tiny_sky.catalog_url)
    rows = cat.read_pixel(int(tiny_sky.pixels[-1]), 5, columns=PIPELINE_COLUMNS).head(300)
    rows["_pixel"], rows["_row"], rows["_chunk"] = int(tiny_sky.pixels[-1]), range(len(rows)), 0
    whole = StampMaker.from_spec(tiny_sky.images_url)(rows)
    cut = StampCutter.from_spec(tiny_sky.images_url)(rows)
    assert "image" not in cut and cut["stamp"].shape == (len(rows), 3, 37, 37)
    assert cut["stamp"].nbytes * 4.5 < whole["image"].nbytes
    classify = Classify(tiny_model_dir, "cpu", 16, None, precision="fp32")
    a, b = classify(whole), classify(cut)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    assert (a["quality_flags"] != np.asarray(cut["quality_flags"], np.int32)).any()  # RGB flags


# ------------------------------------------------------------------------------ training


def test_training_autocast_choice(monkeypatch):
    from iic_survey.training import loop

    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: True)
    assert loop.autocast_dtype("bf16", CPU) is torch.bfloat16
    assert loop.autocast_dtype("auto", CPU) is None  # CPU training stays fp32 unless asked
    assert loop.autocast_dtype("fp16", CPU) is None
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: False)
    assert loop.autocast_dtype("bf16", CPU) is None


@needs_bf16
def test_a_bf16_training_step_on_cpu_lowers_the_loss():
    import torch.nn.functional as F

    model = build_model(TINY_MODEL, seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    x, f = torch.rand(32, 3, 80, 80, generator=gen), torch.rand(32, 7, generator=gen)
    y = torch.randint(0, 3, (32,), generator=gen)
    losses = []
    for _ in range(8):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x, f).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_the_gpu_way_of_finishing_a_chunk_runs_on_cpu_too(tiny_sky, tiny_model_dir, monkeypatch):
    """The CUDA branch (torch RGB, flags packed into the one copy back), forced on a CPU."""
    from iic_survey.stamps.rgb_torch import make_rgb_torch
    from iic_survey.stamps.split import StampCutter
    from iic_survey.survey import classify as classify_mod

    cat = open_catalog(tiny_sky.catalog_url)
    rows = cat.read_pixel(int(tiny_sky.pixels[1]), 5, columns=PIPELINE_COLUMNS).head(200)
    rows["_pixel"], rows["_row"], rows["_chunk"] = int(tiny_sky.pixels[1]), range(len(rows)), 0
    cut = StampCutter.from_spec(tiny_sky.images_url)(rows)
    actor = Classify(tiny_model_dir, "cpu", 16, None, precision="fp32")
    want = actor(cut)
    monkeypatch.setattr(
        classify_mod, "finish_images", lambda s, p, d: make_rgb_torch(torch.as_tensor(s), p)
    )
    got = actor(cut)
    np.testing.assert_array_equal(got["quality_flags"], want["quality_flags"])
    for c in ("galaxy", "quasar", "star"):
        np.testing.assert_allclose(got[f"p_{c}"], want[f"p_{c}"], atol=1e-5, equal_nan=True)


def test_a_predictor_refuses_int8_as_a_dtype():
    """int8 is a quantized model, not an autocast dtype: asking a Predictor for it must fail
    rather than run fp32 under int8's name."""
    model = optimize_for_inference(build_model(TINY_MODEL).eval())
    fp32 = inference.Predictor(model, torch.device("cpu"), None, 16)
    with pytest.raises(ValueError, match="quantized model"):
        fp32.with_precision("int8")
