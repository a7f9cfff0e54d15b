"""Running a classifier over a chunk of inputs on CPU or GPU, in fp32 or a reduced precision.

:class:`Predictor` holds an inference-ready model (:func:`~iic_survey.model.network.
optimize_for_inference`), its device, its autocast dtype and its batch size, and turns a chunk
into (logits, embeddings). On a GPU it keeps the device busy: the chunk goes up through a
reused pinned host buffer with a ``non_blocking`` copy, the batches run back to back in
channels-last layout, their results are gathered on the device, and one copy brings the whole
chunk's results back (the only host sync of the chunk).

**One forward shape.** The network only ever sees batches of exactly :attr:`Predictor.shape`
images: the last batch of a chunk is padded with zeros and the padding's outputs dropped. A
convolution's kernel, blocking and so its rounding are chosen by the batch shape (measured on
this project's tiny model on CPU: batches of 1 to 8 differ from 16 by up to 1.5e-8 in the
logits), and a source must not get other numbers because its chunk was short or
``--chunk-size`` changed. On a CPU the shape is :data:`CPU_MICRO_BATCH` whatever batch size is
asked for: a larger ``batch_size`` (``--model-batch-size``) is rounded up to a multiple of it
and only says how many rows go to the loop at once, so it cannot change a row's numbers
either. On a GPU the shape is ``batch_size`` (sized from memory or ``--model-batch-size``):
there a different ``--model-batch-size`` may change the last bits (the chunk size does not).

:func:`gpu_batch_size` sizes the forward pass from the GPU's free memory, measured with a
trial batch.

A :class:`Predictor` runs one :class:`~iic_survey.model.precision.Plan`: fp32, a whole model
under autocast, or only some submodules under it (the mixed plan ``bf16-late``,
:meth:`Predictor.with_precision`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from iic_survey.core.constants import CLASSES
from iic_survey.model.precision import autocast, autocast_modules, plan

logger = logging.getLogger(__name__)

CPU_MICRO_BATCH = 16
"""Images per forward pass on a CPU, whatever batch size is asked for (see the module note)."""

MIN_GPU_BATCH = 256
MAX_GPU_BATCH = 4096
GPU_MEMORY_SHARE = 0.5
"""Share of the GPU's free memory the forward pass may take (the rest: the chunk, RGB,
allocator slack, another process)."""


def upload(array: np.ndarray, device: torch.device, pinned: torch.Tensor | None = None) -> Any:
    """A float32 numpy array as a tensor on ``device``; returns (tensor, pinned buffer).

    On CPU the tensor shares the array's memory where it can (read-only or non-contiguous
    arrays, e.g. Arrow-backed batches, are copied). On CUDA the data goes through ``pinned``
    (grown when too small) and a ``non_blocking`` copy; the caller must not refill the buffer
    before the device has consumed it (a later copy back to the host is enough).
    """
    host = torch.from_numpy(np.require(array, np.float32, ["C", "W"]))
    if device.type != "cuda":
        return host, pinned
    n = host.numel()
    if pinned is None or pinned.numel() < n:
        pinned = torch.empty(max(n, 1), dtype=torch.float32, pin_memory=True)
    staged = pinned[:n].view(host.shape)
    staged.copy_(host)
    return staged.to(device, non_blocking=True), pinned


class Predictor:
    """An inference-ready classifier on one device: chunk -> (logits (N, 3), embeddings (N, D)).

    Parameters
    ----------
    model
        The output of :func:`~iic_survey.model.network.optimize_for_inference` (or any
        :class:`~iic_survey.model.network.Classifier` in eval mode), already on ``device``.
    device
        Where it runs.
    dtype
        Autocast dtype (``torch.bfloat16`` / ``torch.float16``); None for fp32.
    batch_size
        Images per forward pass on a GPU; on a CPU rounded up to a multiple of
        :data:`CPU_MICRO_BATCH`, which is the forward shape there (:attr:`shape`).
    modules
        Only these submodules run under autocast in ``dtype`` (their outputs come back fp32);
        empty: the whole model (:func:`~iic_survey.model.precision.autocast_modules`).
    """

    def __init__(
        self,
        model: Any,
        device: torch.device,
        dtype: torch.dtype | None = None,
        batch_size: int = 256,
        modules: tuple[str, ...] = (),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        cuda = self.device.type == "cuda"
        self.shape = batch_size if cuda else CPU_MICRO_BATCH  # every forward pass's images
        self.batch = -(-batch_size // self.shape) * self.shape
        self.modules = tuple(modules)
        self.dim = int(getattr(getattr(model, "fc1", None), "out_features", 0))
        self._pinned: dict[str, torch.Tensor | None] = {"image": None, "features": None}

    def with_precision(self, precision: str) -> Predictor:
        """The same model and batch in a precision a run may use (``fp32``, ``bf16``,
        ``bf16-late``, ``fp16``: :func:`~iic_survey.model.precision.plan`)."""
        p = plan(precision)
        if p.int8:  # a different model, not a dtype: never silently run fp32 under its name
            raise ValueError(
                "int8 needs the quantized model (iic_survey.model.quantized), not a dtype: "
                "build it and give it to a new Predictor"
            )
        return Predictor(self.model, self.device, p.dtype, self.batch, p.modules)

    @torch.inference_mode()
    def on_device(self, images: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Embeddings and logits side by side, (N, D + K) fp32 on the device, of inputs there.

        Nothing is copied to the host and nothing waits for the device; :meth:`to_host` splits
        the result after its one copy back.
        """
        n, b = images.shape[0], self.shape
        out = torch.empty((n, self.dim + len(CLASSES)), dtype=torch.float32, device=self.device)
        cuda = self.device.type == "cuda"
        whole = None if self.modules else self.dtype  # autocast around the whole model
        with autocast_modules(self.model, self.device, self.dtype, self.modules):
            for i in range(0, n, b):
                x, f = _padded(images[i : i + b], b), _padded(features[i : i + b], b)  # (b, ...)
                if cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, whole):
                    e = self.model.embed(x, f)  # (b, D)
                    logits = self.model.fc2(e)  # Classifier's head after embed
                k = min(b, n - i)  # the padding's rows are dropped
                out[i : i + k, : self.dim] = e[:k].float()
                out[i : i + k, self.dim :] = logits[:k].float()
        return out

    def __call__(self, images: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, 3), embeddings (N, D)) as float32 numpy arrays, for host arrays."""
        x, self._pinned["image"] = upload(images, self.device, self._pinned["image"])
        f, self._pinned["features"] = upload(features, self.device, self._pinned["features"])
        return self.to_host(self.on_device(x, f))

    def to_host(self, packed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(logits, embeddings) of :meth:`on_device`'s result, in one copy to the host (the
        chunk's only sync on a GPU)."""
        host = packed.cpu().numpy()
        return np.ascontiguousarray(host[:, self.dim :]), np.ascontiguousarray(host[:, : self.dim])


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` (``x`` itself when it has them)."""
    if x.shape[0] == rows:
        return x
    pad = torch.zeros((rows - x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    return torch.cat([x, pad])


def gpu_batch_size(model: Any, device: torch.device, dtype: torch.dtype | None) -> int:
    """Images per forward pass that fit :data:`GPU_MEMORY_SHARE` of the GPU's free memory.

    The memory per image is measured with a trial batch of 64 (peak allocation above the
    baseline); the result is a power of two in [:data:`MIN_GPU_BATCH`, :data:`MAX_GPU_BATCH`].
    """
    if device.type != "cuda":
        raise ValueError(f"gpu_batch_size needs a CUDA device, got {device}")
    size = int(getattr(getattr(model, "config", None), "image_size", 80))
    n_feat = int(getattr(getattr(model, "config", None), "n_features", 0) or 0)
    trial = 64
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x = torch.zeros((trial, 3, size, size), device=device)
    f = torch.zeros((trial, n_feat), device=device)
    Predictor(model, device, dtype, trial).on_device(x, f)
    torch.cuda.synchronize(device)
    per_image = max((torch.cuda.max_memory_allocated(device) - base) / trial, 1.0)
    free, _ = torch.cuda.mem_get_info(device)
    fit = GPU_MEMORY_SHARE * free / per_image
    batch = int(np.clip(2 ** int(np.floor(np.log2(max(fit, 1.0)))), MIN_GPU_BATCH, MAX_GPU_BATCH))
    logger.info(
        "GPU batch: %d images (%.1f MB per image measured, %.1f GB free)",
        batch,
        per_image / 1e6,
        free / 1e9,
    )
    return batch
