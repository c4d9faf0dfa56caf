"""Batched forward passes of a trained classifier: images in, per-level probabilities out."""

from __future__ import annotations

from typing import Any

import torch

from .models.outputs import Outputs, outputs_of  # Outputs re-exported: the type inference returns


def pick_device(accelerator: str = "auto") -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@torch.no_grad()
def run_model(model: Any, images: torch.Tensor, batch_size: int = 256, device: torch.device | None = None) -> Outputs:
    """Evaluate ``model`` (see :func:`~supersub.models.outputs.outputs_of`) on uint8 (N,3,H,W) images in eval
    mode; results on the CPU."""
    device = device or pick_device()
    model = model.to(device, memory_format=torch.channels_last).eval()  # faster convolutions, same results
    batches = [
        outputs_of(model, images[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last))
        .cpu_float() for start in range(0, len(images), batch_size)
    ]
    if not batches:
        raise ValueError("run_model needs at least one image")
    return Outputs.cat(batches)
