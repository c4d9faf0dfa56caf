"""Real pretrained weights for timm backbones: from the local hub cache, the network, or a file.

``create_timm_backbone(name, pretrained=True)`` looks in the Hugging Face / torch-hub caches first and
only goes online when the weights are not cached; an unreachable hub is detected with one short probe
instead of huggingface_hub's ~45 s of retries, and reported in one line that points at ``--weights``.

``create_timm_backbone(name, weights=PATH)`` reads a state dict from disk, never unpickling code
(``torch.load(weights_only=True)`` or safetensors), whichever wrapper it comes in: a plain timm /
torchvision state dict, a Lightning or training checkpoint (``state_dict`` / ``model`` key, with
prefixes such as ``model.backbone.`` or ``module.``), or a supersub run's ``model.pt``. Classifier
tensors are dropped; every other backbone tensor must match exactly.

Input size: ``input_size_for(model)`` is the resolution the weights were trained at (224 for most
ImageNet models). 64x64 images fed unresized leave a ResNet with a 2x2 final map and object scales far
from the ones it learnt; upsampling to 224 costs (224/64)^2 ~ 12x the FLOPs. Measured for resnet18 on
this project's shared 2-core CPU, 1,000 images: ~14 s at 64 px, ~125 s at 224 px (frozen features are
extracted once, see ``feature_cache``; fine-tuning at 224 on CPU is impractical). ViTs have a fixed
input size: they need ``input_size_for`` exactly.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import SupersubError
from .weight_sources import package_tensors

PROBE_TIMEOUT_S = 3.0
SUPERSUB_MODEL_FORMAT = "supersub-model-1"
_SAFE_ALTERNATIVES = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}


def create_timm_backbone(name: str, pretrained: bool = False, weights: Path | None = None,
                         in_chans: int = 3) -> nn.Module:
    """A timm feature extractor (``num_classes=0``), randomly initialised, pretrained, or loaded from ``weights``."""
    import timm

    if pretrained and weights is not None:
        raise SupersubError(f"{name}: use either pretrained weights or --weights {weights}, not both")
    pretrained_cfg = _pretrained_cfg(name)
    if pretrained:
        return _create_pretrained(name, pretrained_cfg, in_chans)
    model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)
    if weights is not None:
        load_backbone_weights(model, Path(weights))
    return model


def input_size_for(model: nn.Module) -> int | None:
    """Side length the backbone's weights were trained at, or None when the model does not say."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return int(size[-1]) if size else None


# ---- pretrained weights from the hub ---------------------------------------------------------------
def _pretrained_cfg(name: str) -> dict[str, Any]:
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise SupersubError(f"{name}: unknown timm model")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as e:  # timm's answer to an unknown ".tag"
        raise SupersubError(f"{name}: {e}") from None
    return cfg.to_dict() if cfg is not None else {}


def _create_pretrained(name: str, pretrained_cfg: dict[str, Any], in_chans: int) -> nn.Module:
    import timm

    source = _weights_url(pretrained_cfg)
    if source is None:
        raise SupersubError(f"{name}: timm has no pretrained weights for this model; use --weights PATH")
    cached = _cached_weights_file(pretrained_cfg)
    unavailable = f"{name}: pretrained weights unavailable (no network / not in the local cache); use --weights PATH"
    if cached is not None:
        overlay = {"file": str(cached)}
    elif _hub_offline() or not _reachable(source):
        raise SupersubError(unavailable)
    else:
        overlay = {}
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, in_chans=in_chans,
                                 pretrained_cfg_overlay=overlay or None)
    except OSError:  # hub HTTP errors, LocalEntryNotFoundError, URLError, timeouts: all OSError subclasses
        raise SupersubError(unavailable) from None


def _weights_url(cfg: dict[str, Any]) -> str | None:
    """Where timm would download from: the hub endpoint for hub weights, else the release URL."""
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    return cfg.get("url") or None


def _hub_filenames(filename: str) -> Iterable[str]:
    """The files timm tries, safetensors first (mirrors timm's own preference)."""
    if filename in _SAFE_ALTERNATIVES:
        yield _SAFE_ALTERNATIVES[filename]
    elif filename.endswith(".bin"):
        yield filename[: -len(".bin")] + ".safetensors"
    yield filename


def _cached_weights_file(cfg: dict[str, Any]) -> Path | None:
    """The weights file already in the Hugging Face or torch-hub cache, if any (no network)."""
    from huggingface_hub import try_to_load_from_cache

    if cfg.get("hf_hub_id"):
        repo, _, revision = str(cfg["hf_hub_id"]).partition("@")
        for filename in _hub_filenames(cfg.get("hf_hub_filename") or "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(hit, str):
                return Path(hit)
    if cfg.get("url"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg["url"]).path).name
        if path.is_file():
            return path
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "ON", "YES", "TRUE"}


def _reachable(url: str) -> bool:
    """One HEAD request with a short timeout (honours proxy settings); any HTTP answer means online."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, refused, DNS failure, timeout; ValueError: malformed URL
        return False


# ---- weights from a file ---------------------------------------------------------------------------
def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``; anything but an exact match of the backbone tensors is an error."""
    expected = model.state_dict()
    prefix, state = _select_backbone(_read_state_dict(path), expected, path)
    state = _drop_classifier(state, expected, _cfg_names(model, "classifier"))
    _adapt_input_convs(state, expected, _cfg_names(model, "first_conv"))
    where = f"{path} (names under {prefix!r})" if prefix else str(path)
    _check_match(state, expected, where, _model_name(model))
    for key in expected.keys() - state.keys():  # only num_batches_tracked remain: a counter, not a weight
        state[key] = expected[key]
    model.load_state_dict(state, strict=True)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The flat name -> tensor mapping inside any supported file/wrapper."""
    from ..io import load_checkpoint

    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    obj = load_checkpoint(path)
    if obj.get("format") == SUPERSUB_MODEL_FORMAT:
        full = obj.get("state_dict")
        full = full if isinstance(full, dict) else {}
        omitted = obj.get("from_package")
        if omitted is not None:  # a frozen or partial run: a source-tuned backbone transfers whole
            omitted = omitted if isinstance(omitted, dict) else {}
            name = ((obj.get("config") or {}).get("model") or {}).get("backbone")
            keys = [k for k in omitted.get("keys", []) if isinstance(k, str)]
            full = {**package_tensors(str(name), keys, omitted.get("sha256"), str(path)), **full}
        state = {k.removeprefix("backbone."): v for k, v in full.items() if k.startswith("backbone.")}
        if not state:
            raise SupersubError(f"{path}: supersub model file holds no backbone weights")
    elif isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif isinstance(obj.get("model"), dict):
        state = obj["model"]
    else:
        state = obj
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise SupersubError(f"{path}: not a state dict ({key!r} holds a {type(value).__name__}, not a tensor)")
    return state


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise SupersubError(f"{path}: weights file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SupersubError(f"{path}: not a readable safetensors file ({first[:200]})") from None


def _select_backbone(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """Strip the wrapper prefix ("module.", "model.backbone.", ...) that makes most names match the model.

    Candidate prefixes are read off the file itself (whatever precedes a model tensor name), so any
    wrapper works; keys outside the chosen prefix (a checkpoint's heads) are not part of the backbone.
    """
    prefixes = {prefix for key in state for prefix in _prefixes_to_model_name(key, expected)}
    best, hits = "", 0
    for prefix in sorted(prefixes, key=len):
        n = sum(k.startswith(prefix) and k[len(prefix):] in expected for k in state)
        if n > hits:
            best, hits = prefix, n
    if hits == 0:
        example = next(iter(state), "(no tensors)")
        raise SupersubError(f"{path}: no tensor name matches the backbone (file has e.g. {example!r}, "
                            f"model expects e.g. {next(iter(expected))!r})")
    return best, {k[len(best):]: v for k, v in state.items() if k.startswith(best)}


def _prefixes_to_model_name(key: str, expected: dict[str, torch.Tensor]) -> Iterable[str]:
    """Each dotted prefix of ``key`` whose remainder is a model tensor name ("module.conv1.weight" -> "module.")."""
    parts = key.split(".")
    for i in range(len(parts)):
        if ".".join(parts[i:]) in expected:
            yield "".join(f"{p}." for p in parts[:i])


def _drop_classifier(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     classifiers: list[str]) -> dict[str, torch.Tensor]:
    """The ImageNet classifier ("fc.", "head.", ...) is not part of a num_classes=0 backbone."""
    def is_classifier(key: str) -> bool:
        return key not in expected and any(key.startswith(f"{c}.") for c in classifiers)

    return {k: v for k, v in state.items() if not is_classifier(k)}


def _adapt_input_convs(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], convs: list[str]) -> None:
    """RGB weights into a model with another channel count: timm's standard stem conversion."""
    from timm.models import adapt_input_conv

    for conv in convs:
        key = f"{conv}.weight"
        if key in state and key in expected and state[key].ndim == 4 and state[key].shape[1] != expected[key].shape[1]:
            state[key] = adapt_input_conv(int(expected[key].shape[1]), state[key])


def _check_match(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str, name: str) -> None:
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {missing[0]!r})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})" if unexpected else ""]
        raise SupersubError(f"{where}: weights do not fit {name}: {', '.join(p for p in parts if p)} tensors")
    wrong = [k for k in state if state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise SupersubError(f"{where}: weights do not fit {name}: {len(wrong)} tensors have another shape "
                            f"(e.g. {k!r}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})")


def _cfg_names(model: nn.Module, field: str) -> list[str]:
    value = (getattr(model, "pretrained_cfg", None) or {}).get(field)
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)
