from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from supersub.config import ModelConfig, TrainConfig
from supersub.errors import SupersubError
from supersub.models.hub import create_timm_backbone, input_size_for
from supersub.models.hierarchical import HierarchicalClassifier
from supersub.models.scratch_cnn import ScratchCNN
from supersub.run_dir import RunDir
from supersub.taxonomy import Taxonomy

ARCH = "test_resnet"  # timm's ~0.4 M-parameter test network: real ResNet layout, fast on CPU
HUB_ID = "timm/test_resnet.r160_in1k"


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Move BN running stats away from their init so a load that skips buffers cannot pass."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return model.eval()


@pytest.fixture(scope="module")
def source() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """A backbone's state dict (plus an ImageNet-style classifier), a fixed input and its features."""
    torch.manual_seed(0)
    model = _trained_like(timm.create_model(ARCH, num_classes=0))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = model(x)
    state = dict(model.state_dict())
    state |= {"fc.weight": torch.randn(1000, model.num_features), "fc.bias": torch.zeros(1000)}
    return state, x, feats


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _write(kind: str, state: dict[str, torch.Tensor], tmp_path: Path) -> Path:
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
        return tmp_path / "w.safetensors"
    wrapped = {
        "plain": state,
        "lightning": {"epoch": 3, "state_dict": {f"model.backbone.{k}": v for k, v in state.items()}
                      | {"model.super_head.weight": torch.ones(3, 96)}},
        "dataparallel": {"model": {f"module.{k}": v for k, v in state.items()}, "optimizer": None},
    }[kind]
    path = tmp_path / f"{kind}.pth"
    torch.save(wrapped, path)
    return path


@pytest.mark.parametrize("kind", ["plain", "lightning", "dataparallel", "safetensors"])
def test_weights_file_gives_identical_features(kind, source, tmp_path):
    state, x, expected = source
    torch.manual_seed(123)
    assert not torch.equal(_features(create_timm_backbone(ARCH), x), expected)  # a fresh init differs
    model = create_timm_backbone(ARCH, weights=_write(kind, state, tmp_path))
    assert torch.equal(_features(model, x), expected)


def test_supersub_model_file_gives_its_backbone(tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig(model=ModelConfig(backbone=ARCH))
    taxonomy = Taxonomy(("bird", "dog"), ("a", "b", "c"), (0, 0, 1))
    net = HierarchicalClassifier(cfg.model, taxonomy.n_super, taxonomy.n_sub)
    _trained_like(net.backbone)
    run = RunDir.create(tmp_path / "run")
    run.save_model(net, cfg, taxonomy)
    x = torch.randn(2, 3, 32, 32)
    model = create_timm_backbone(ARCH, weights=run.model_file)
    assert torch.equal(_features(model, x), _features(net.backbone, x))


def test_prefix_before_top_level_vit_tensors(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=0).eval()
    path = tmp_path / "vit.pth"
    torch.save({f"module.{k}": v for k, v in vit.state_dict().items()}, path)  # includes "module.cls_token"
    x = torch.randn(1, 3, 160, 160)
    assert torch.equal(_features(create_timm_backbone("test_vit", weights=path), x), _features(vit, x))


def test_rgb_weights_into_one_channel_stem(source, tmp_path):
    state, _, _ = source
    model = create_timm_backbone(ARCH, weights=_write("plain", state, tmp_path), in_chans=1)
    w = model.state_dict()["conv1.0.weight"]
    assert w.shape[1] == 1 and torch.allclose(w, state["conv1.0.weight"].sum(1, keepdim=True))


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("layer1.0.conv1.weight"), r"1 missing \(e\.g\. 'layer1\.0\.conv1\.weight'\)"),
    (lambda s: s.update({"layer9.weight": torch.ones(1)}), r"1 unexpected \(e\.g\. 'layer9\.weight'\)"),
    (lambda s: s.update({"layer1.0.bn1.bias": torch.ones(5)}),
     r"1 tensors have another shape .*'layer1\.0\.bn1\.bias'"),
])
def test_mismatched_weights_are_named(edit, message, source, tmp_path):
    state = dict(source[0])
    edit(state)
    with pytest.raises(SupersubError, match=message):
        create_timm_backbone(ARCH, weights=_write("plain", state, tmp_path))


def test_foreign_or_broken_files_are_refused(tmp_path):
    scratch = tmp_path / "scratch.pth"
    torch.save(ScratchCNN(width=4, depth=[1]).state_dict(), scratch)  # shares "bn1.weight"-like names only
    with pytest.raises(SupersubError, match=r"\(names under 'stages\.0\.'\): weights do not fit test_resnet: "
                                            r"\d+ missing .*, \d+ unexpected"):
        create_timm_backbone(ARCH, weights=scratch)
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.w": torch.ones(2)}, foreign)
    with pytest.raises(SupersubError, match=r"no tensor name matches the backbone \(file has e\.g\. 'encoder\.w'"):
        create_timm_backbone(ARCH, weights=foreign)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(SupersubError, match="not a readable safetensors file"):
        create_timm_backbone(ARCH, weights=bad)
    nested = tmp_path / "nested.pth"
    torch.save({"conv1.0.weight": torch.ones(1), "meta": {"lr": 0.1}}, nested)
    with pytest.raises(SupersubError, match=r"not a state dict \('meta' holds a dict"):
        create_timm_backbone(ARCH, weights=nested)
    with pytest.raises(SupersubError, match="checkpoint not found"):
        create_timm_backbone(ARCH, weights=tmp_path / "missing.pth")


def _offline(monkeypatch, cache: Path, offline: bool = True) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    if not offline:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_pretrained_offline_with_empty_cache_is_a_one_line_error(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path / "empty")
    with pytest.raises(SupersubError, match=r"^test_resnet: pretrained weights unavailable \(no network / not in "
                                            r"the local cache\); use --weights PATH$"):
        create_timm_backbone(ARCH, pretrained=True)


def test_pretrained_with_unreachable_hub_is_a_one_line_error(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path / "empty", offline=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    monkeypatch.setenv("NO_PROXY", "*")
    with pytest.raises(SupersubError, match="pretrained weights unavailable"):
        create_timm_backbone(ARCH, pretrained=True)


def test_pretrained_comes_from_the_local_hub_cache_without_network(monkeypatch, source, tmp_path):
    state, x, expected = source
    snapshot = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    _offline(monkeypatch, tmp_path / "hub")
    model = create_timm_backbone(ARCH, pretrained=True)
    assert torch.equal(_features(model, x), expected)


def test_bad_requests_and_input_size():
    with pytest.raises(SupersubError, match="not both"):
        create_timm_backbone(ARCH, pretrained=True, weights=Path("w.pth"))
    with pytest.raises(SupersubError, match="no_such_net: unknown timm model"):
        create_timm_backbone("no_such_net")
    with pytest.raises(SupersubError, match="Invalid pretrained tag"):
        create_timm_backbone("test_resnet.no_such_tag")
    assert input_size_for(timm.create_model(ARCH, num_classes=0)) == 160
    assert input_size_for(ScratchCNN(width=4, depth=[1])) is None
