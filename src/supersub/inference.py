"""Batched forward passes of a trained classifier: images in, per-level probabilities out."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .data.mapped import release
from .errors import SupersubError
from .memory import keep_freed_memory
from .novelty.outputs import Outputs  # the type run_model returns, re-exported


# images per forward pass of a trained model; the chunks of streamed prediction are a multiple of it, so they
# forward the same batches as the whole set at once (a batch's size can change a float's last bits)
BATCH = 256


def pick_device(accelerator: str = "auto") -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def named_device(name: str) -> torch.device:
    """``--device`` as a torch device (cpu, cuda, cuda:1, mps; auto picks); an unusable one is a clear error."""
    if name == "auto":
        return pick_device("auto")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SupersubError(f"--device {name!r}: not a device (e.g. cpu, cuda, cuda:1, mps, auto)") from None
    usable = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not usable.get(device.type, False):
        raise SupersubError(f"--device {name!r}: not available on this machine")
    return device


@torch.no_grad()
def run_model(model: nn.Module, images: torch.Tensor, batch_size: int | None = None,
              device: torch.device | None = None) -> Outputs:
    """Evaluate ``model`` (see :func:`outputs_of`) on uint8 (N,3,H,W) images in eval mode; results on the CPU."""
    batch_size = batch_size or BATCH
    device = device or pick_device()
    keep_freed_memory()  # every batch reuses the previous batch's activation memory
    model = model.to(device, memory_format=torch.channels_last).eval()  # faster convolutions, same results
    if not len(images):
        raise ValueError("run_model needs at least one image")

    def batches() -> Iterator[Outputs]:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            yield outputs_of(model, batch).cpu_float()
            release(images)  # memory-mapped images: keep the batch, not every page read so far

    return Outputs.gather(batches(), len(images))


def outputs_of(model: nn.Module, images: torch.Tensor) -> Outputs:
    """``model.outputs(images)`` for supersub's models (an ensemble adds its members' logits); any other module
    that returns ``(super_logits, sub_logits, features)`` works too."""
    method = getattr(model, "outputs", None)
    return method(images) if callable(method) else Outputs(*model(images))
