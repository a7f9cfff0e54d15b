"""The paper's experiments (Zhao et al. 2023) on the synthetic sky, as one study.

    .venv/bin/python -m experiments.paper --part all --write-results      # everything
    .venv/bin/python -m experiments.paper --part cost --write-results     # one part
    .venv/bin/python -m experiments.paper --render --write-results        # re-render only

Parts (each writes its own sub-section of "## Paper experiments (experiments/paper)" in
experiments/RESULTS.md):

* ``cost``: Table 3's cost side: parameters, MACs (1x3x80x80) and CPU images/s at the
  pipeline's settings of IICnet and the six comparison networks (:mod:`.cost`).
* ``compare``: Table 3's accuracy side / Fig. 15a: every network trained with the same budget
  on the same rows and scored on the same test split (:mod:`.train`); a network whose
  training loss stays at chance under it (in any seed) gets a second chance, one seed with the
  learning rate / 10 and one at full width (:func:`retries`), reported apart from the ranking.
* ``ablate``: Figs. 8, 12, 15b: 5x5 vs 3x3 stem; input size 64..128 px in steps of 8 (the 80 px
  stamps resampled bilinearly: same 50" field of view, other pixel counts); 3 bands vs 4 (W4
  cut from the sky's W4 tiles, :mod:`.data`); IICnet without RFB / CBAM 1 / CBAM 2 /
  both CBAMs / all three.
* ``errors``: Figs. 11, 19-21, Table 4: K-means groups of the misclassified test stamps,
  low-confidence correct stamps, feature maps, as PNGs under ``<workdir>/errors``
  (:mod:`.errors`).

The data (a seeded synthetic sky with W4 tiles, its training set, W4 stamps) is built once into
``--workdir`` and reused; every trained run is kept in ``<workdir>/paper.json`` (keyed by the
budget, network, variant, input, seed), so a rerun trains only what is missing and
``--render`` rewrites the section from the kept results. ``--budget cpu`` (the default without
CUDA) is the reduced budget of :data:`train.BUDGETS`; ``--budget paper`` (the default
when CUDA is present) is the paper's: full width, every training row, 30 epochs, three seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np
import torch

from benchmarks.results import EXPERIMENTS, write_section
from experiments.paper import data, nets, report, train
from iic_survey.core import paths

PARTS = ("cost", "compare", "errors", "ablate")
"""Run order of ``--part all``: the long ablations last, published run by run."""
SIZES = tuple(range(64, 129, 8))
ABLATE_VARIANTS = ("stem3x3", "no_rfb", "no_cbam1", "no_cbam2", "no_cbam", "no_rfb_no_cbam")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build(
    net: str, variant: str = "full", width: float = 1.0, size: int = 80, bands: int = 3
) -> torch.nn.Module:
    """A fresh images -> logits network: IICnet (a variant) or a comparison network."""
    if net == "iicnet":
        return train.ImageOnly(train.iicnet(variant, width, size, bands))
    return nets.build(net, in_ch=bands, width=width)


class Runs:
    """The kept results (``<workdir>/paper.json``) and the data they are trained on."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = pathlib.Path(args.workdir)
        self.file = self.work / "paper.json"
        self.state: dict[str, Any] = json.loads(self.file.read_text()) if self.file.exists() else {}
        self.state.setdefault("runs", {})
        self.budget = train.BUDGETS[args.budget]
        if args.seeds:
            self.budget = dataclasses.replace(self.budget, seeds=tuple(args.seeds))
        self._data: dict[bool, dict[str, Any]] = {}

    def save(self) -> None:
        self.file.write_text(json.dumps(self.state, indent=1, default=str))

    def data(self, w4: bool = False) -> dict[str, Any]:
        if w4 not in self._data:
            self._data[w4] = {s: data.load_split(self.work, s, w4) for s in ("train", "test")}
        return self._data[w4]

    @staticmethod
    def key(b: train.Budget, net: str, variant: str, size: int, bands: int, seed: int) -> str:
        """The run's key in ``paper.json`` (a changed learning rate or net revision is in it)."""
        lr = "" if b.lr == train.Budget.lr else f":lr{b.lr:g}"
        rev = nets.REVISION.get(net)
        name = net if rev is None else f"{net}@r{rev}"
        budget = f"{b.name}:e{b.epochs}:r{b.rows}:w{b.width:g}{lr}"
        return f"{budget}|{name}|{variant}|{size}|{bands}|{seed}"

    def run(
        self, net: str, variant: str = "full", size: int = 80, bands: int = 3, seed: int = 0,
        budget: train.Budget | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """The kept result of one training run (with ``budget``, default the run's), training
        it first if it is missing."""
        b = budget or self.budget
        key = self.key(b, net, variant, size, bands, seed)
        if key in self.state["runs"]:
            return self.state["runs"][key]
        print(f"training {key} (load {_load()})", flush=True)
        out = train.train(
            lambda: build(net, variant, b.width, size, bands), self.data(bands == 4), b, seed, size
        )
        if net == "iicnet" and variant == "full" and size == 80 and bands == 3 and b is self.budget:
            models = self.work / "models"
            models.mkdir(exist_ok=True)
            stem = f"iicnet_{self.budget.name}_s{seed}"
            torch.save(out["model"].state_dict(), models / f"{stem}.pt")
            np.save(models / f"{stem}_logits.npy", out["logits"])
        rep = out["report"]
        self.state["runs"][key] = {
            "net": net, "variant": variant, "size": size, "bands": bands, "seed": seed,
            "accuracy": rep["accuracy"], "n": rep["n"],
            "per_class": {c: {k: v[k] for k in ("accuracy", "recall", "auc")}
                          for c, v in rep["per_class"].items()},
            "macro_auc": rep["macro"]["auc"], "confusion": rep["confusion"],
            "losses": out["losses"], "train_seconds": out["train_seconds"],
            "train_rows": out["train_rows"], "load": _load(), "lr": b.lr, "width": b.width,
        }  # fmt: skip
        self.save()
        print(f"  -> accuracy {rep['accuracy']:.4f}, AUC {rep['macro']['auc']:.4f}, "
              f"{out['train_seconds']:.0f} s", flush=True)  # fmt: skip
        return self.state["runs"][key]


RETRY_MAX_MACS = 600e6
"""A full-width retry is run only for a network under this many MACs per 80 px image at full
width: MobileNet v1's 77 M is; VGG16's 2.1 G is not (16x the MACs of its x0.25 form, whose run
takes about a minute here, and for VGG16 width is not what the shared schedule lacks)."""


def part_compare(runs: Runs) -> dict[str, Any]:
    """Every network, every seed of the budget (seeds interleaved: seed 0 of all nets first);
    then a second chance for each network the shared schedule left at chance in any seed
    (:func:`retries`)."""
    out: dict[str, list[Any]] = {}
    for seed in runs.budget.seeds:
        for net in ("iicnet", *nets.NETS):
            out.setdefault(net, []).append(runs.run(net, seed=seed))
    stuck = {k: report.stuck_seeds(v) for k, v in out.items()}
    return {"nets": out, "retries": {k: retries(runs, k, s[0]) for k, s in stuck.items() if s}}


def retries(runs: Runs, net: str, seed: int) -> dict[str, Any]:
    """``net``'s stuck ``seed`` again with the shared schedule changed one way at a time: the
    learning rate divided by 10, and full width (when under :data:`RETRY_MAX_MACS`); which one
    lets it learn says what the shared budget denied it."""
    from experiments.paper import cost

    b = runs.budget
    out: dict[str, Any] = {
        "lr / 10": runs.run(net, seed=seed, budget=dataclasses.replace(b, lr=b.lr / 10))
    }
    if b.width < 1:
        full = cost.macs(build(net))
        if full <= RETRY_MAX_MACS:
            out["width 1"] = runs.run(net, seed=seed, budget=dataclasses.replace(b, width=1.0))
        else:
            out["width 1"] = {"skipped": f"{full / 1e6:,.0f} M MACs at full width"}
    return out


def _mean_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several seeds of one configuration as one row: means, and the accuracy of each seed."""
    keys = ("accuracy", "macro_auc", "train_seconds")
    out = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
    return {**runs[0], **out, "seeds": [r["seed"] for r in runs],
            "accs": [r["accuracy"] for r in runs]}  # fmt: skip


def part_ablate(runs: Runs, publish: Any) -> dict[str, Any]:
    """Stem, modules, bands, input size, every seed of the budget (means);
    ``publish(partial)`` is called after every configuration, so an interrupted part still
    leaves the rows it finished."""
    seeds = runs.budget.seeds

    def row(**kw: Any) -> dict[str, Any]:
        return _mean_run([runs.run("iicnet", seed=s, **kw) for s in seeds])

    base = row()
    res: dict[str, Any] = {"base": base, "variants": {}, "sizes": {80: base}, "bands4": None}
    for v in ABLATE_VARIANTS:
        res["variants"][v] = row(variant=v)
        publish(res)
    res["bands4"] = row(bands=4)
    publish(res)
    for size in SIZES:
        if size != 80:
            res["sizes"][size] = row(size=size)
            publish(res)
    res["sizes"] = dict(sorted(res["sizes"].items()))
    return res


def part_errors(runs: Runs) -> dict[str, Any]:
    """Error analysis of IICnet (the budget's first seed, trained on 3 bands at 80 px)."""
    from experiments.paper import errors

    seed = runs.budget.seeds[0]
    runs.run("iicnet", seed=seed)
    stem = runs.work / "models" / f"iicnet_{runs.budget.name}_s{seed}"
    model = train.ImageOnly(train.iicnet("full", runs.budget.width))
    model.load_state_dict(torch.load(f"{stem}.pt", weights_only=True))
    logits = np.load(f"{stem}_logits.npy")
    return errors.analyse(model, logits, runs.data()["test"], runs.args)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the parts asked for, render and optionally write the section."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.paper", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    parser.add_argument("--render", action="store_true", help="only re-render kept results")
    parser.add_argument(
        "--workdir",
        default=str(paths.home() / "experiments" / "paper"),
        help="the data and every trained run, kept between runs (default <home>/experiments/paper)",
    )
    parser.add_argument(
        "--budget", choices=tuple(train.BUDGETS),
        default="paper" if torch.cuda.is_available() else "cpu",
    )  # fmt: skip
    parser.add_argument("--sky-sources", type=int, default=14_000)
    parser.add_argument("--sky-seed", type=int, default=19)
    parser.add_argument("--field-size", type=float, default=0.5)
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: all cores, 1 when the load average exceeds the cores)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument("--clusters", type=int, default=4, help="K-means groups of the errors")
    parser.add_argument("--low-conf", type=float, default=0.6, help="low-confidence threshold")
    parser.add_argument("--seed", type=int, default=0, help="K-means seed")
    parser.add_argument(
        "--write-results", action="store_true", help="update experiments/RESULTS.md"
    )
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    threads = args.threads or (1 if os.getloadavg()[0] > cores else cores)
    torch.set_num_threads(threads)
    runs = Runs(args)
    if not args.render:
        runs.state["data"] = data.prepare(args)
        for part in PARTS if args.part == "all" else (args.part,):
            run_part(runs, part, threads, argv)
            render(runs, args.write_results)
    text = render(runs, args.write_results)
    print(text)
    return 0


def run_part(runs: Runs, part: str, threads: int, argv: list[str] | None) -> None:
    """Run one part and keep its result (with when, load and command) in ``paper.json``."""
    t0, load0 = time.perf_counter(), _load()
    print(
        f"== part {part} (budget {runs.budget.name}, {threads} threads, load {load0})", flush=True
    )
    args = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m experiments.paper", *args])

    def publish(res: dict[str, Any]) -> dict[str, Any]:
        res.update(budget=runs.budget.describe(), command=command, threads=threads,
                   load_before=load0, load_after=_load(), wall_seconds=time.perf_counter() - t0,
                   when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))  # fmt: skip
        runs.state.setdefault("parts", {})[part] = res
        runs.save()
        render(runs, runs.args.write_results)
        return res

    if part == "cost":
        from experiments.paper import cost

        publish(cost.cost())
    elif part == "ablate":
        res = part_ablate(runs, lambda partial: publish({**partial, "complete": False}))
        publish({**res, "complete": True})
    else:
        publish({"compare": part_compare, "errors": part_errors}[part](runs))


def render(runs: Runs, write: bool) -> str:
    """The section from the kept results; written to RESULTS.md when ``write``."""
    text = report.section(runs.state)
    if write:
        write_section(report.SECTION, text, EXPERIMENTS)
    return text


if __name__ == "__main__":
    sys.exit(main())
