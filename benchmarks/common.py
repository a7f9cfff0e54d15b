"""What the speed benchmarks share: the machine, the load, a synthetic sky, work folders.

The local Ray head they measure on is :mod:`iic_survey.testing.ray_head` (the tests' own), and
the results writer is :mod:`benchmarks.results`; this module holds the rest, once.
"""

from __future__ import annotations

import logging
import os
import pathlib
import platform
import threading
from typing import Any

from iic_survey.core import paths

logger = logging.getLogger(__name__)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    """The load average now, ``"1-min / 5-min / 15-min"``."""
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def workdir(name: str) -> pathlib.Path:
    """A benchmark's default work folder, ``<home>/benchmarks/<name>`` (``iic_survey.core.paths
    .home()``: ``$IIC_SURVEY_HOME`` or ``~/iic_survey``), kept between runs to reuse its sky."""
    return paths.home() / "benchmarks" / name


def sky_dir(n_sources: int) -> pathlib.Path:
    """Where a benchmark keeps the synthetic sky of ``n_sources`` by default (written once)."""
    return workdir(f"sky_{n_sources}")


def sky(path: str | os.PathLike[str], n_sources: int, field_size_deg: float | None = None) -> Any:
    """The synthetic sky at ``path``: read when it is there, else written with ``n_sources``
    (the default fields, or fields ``field_size_deg`` wide)."""
    from iic_survey.synthetic import skyfiles

    if (pathlib.Path(path) / "sky.json").is_file():
        return skyfiles.SkyManifest.load(path)
    logger.info("writing a synthetic sky (%d sources) to %s", n_sources, path)
    if field_size_deg is None:
        return skyfiles.write_sky(path, skyfiles.SkyConfig(n_sources=n_sources))
    return skyfiles.write_sky(
        path, skyfiles.SkyConfig(n_sources=n_sources, field_size_deg=field_size_deg)
    )


def model_dir(path: pathlib.Path, manifest: Any) -> str:
    """The paper-sized IICnet (untrained) with OOD statistics, as a model directory."""
    import torch

    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.model import ood
    from iic_survey.model.config import ModelConfig
    from iic_survey.model.directory import save_model_dir
    from iic_survey.model.network import build_model
    from iic_survey.stamps.maker import StampMaker
    from iic_survey.stamps.rgb import RGBParams

    if (path / "model.json").is_file():
        return str(path)
    cfg = ModelConfig()
    model = build_model(cfg, seed=0).eval()
    cat = open_catalog(manifest.catalog_url)
    rows = cat.read_pixel(int(manifest.pixels[0]), 5, columns=PIPELINE_COLUMNS).head(256)
    made = StampMaker.from_spec(manifest.images_url)(rows)
    logits, emb = ood.predict(model, made["image"], made["features"], torch.device("cpu"))
    extra = {
        "rgb": RGBParams().to_dict(),
        "temperature": 1.0,
        "feature_stats": ood.ood_statistics(emb, logits, 1.0),
        "meta": {"note": "untrained, for benchmarks"},
    }
    save_model_dir(path, model, cfg, extra)
    return str(path)


def process_label(cmdline: list[str], is_self: bool) -> str:
    """A process's kind: the driver, a Ray worker's title (``ray::...``), or Ray's own daemon."""
    if is_self:
        return "driver"
    text = " ".join(cmdline)
    if text.startswith("ray::"):
        return text.split(" ", 1)[0][:60]
    if "default_worker.py" in text:
        return "worker (starting)"
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "agent"):
        if key in text:
            return key
    return (cmdline[0].rsplit("/", 1)[-1] if cmdline else "?")[:40]


class MemorySampler:
    """Peak summed RSS and PSS of process trees (the Ray head's, ``also``'s) and this process
    (unless ``include_self`` is False)."""

    def __init__(
        self,
        root_pid: int,
        interval_s: float = 0.25,
        also: tuple[int, ...] = (),
        include_self: bool = True,
    ) -> None:
        self.roots, self.interval_s, self.include_self = (root_pid, *also), interval_s, include_self
        self.peak_rss = self.peak_pss = 0
        self.peak_by_kind: dict[str, tuple[int, int]] = {}
        """At the sample of the peak PSS: (processes, PSS bytes) by :func:`process_label`."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int, dict[str, tuple[int, int]]]:
        import psutil

        me = psutil.Process()
        procs = [me] if self.include_self else []
        for pid in self.roots:
            try:
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        rss = pss = 0
        kinds: dict[str, tuple[int, int]] = {}
        for p in procs:
            try:
                info = p.memory_full_info()
                label = process_label(p.cmdline(), p.pid == me.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            one = getattr(info, "pss", info.rss)
            pss += one
            n, b = kinds.get(label, (0, 0))
            kinds[label] = (n + 1, b + one)
        return rss, pss, kinds

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss, kinds = self._sample()
            if pss > self.peak_pss:
                self.peak_by_kind = kinds
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
