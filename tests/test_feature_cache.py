import logging

import pytest
import torch
from torch import nn

from supersub.errors import SupersubError
from supersub.models.feature_cache import cache_key, extract_features


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - 0.5) / 0.25


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _images(n: int = 7, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_features_match_one_eval_forward_and_mode_is_restored():
    net, images = _net().train(), _images()
    with torch.no_grad():
        net.eval()
        expected = net(_normalize(images))
        net.train()
    feats = extract_features(net, images, _normalize, batch_size=3)
    assert feats.shape == (7, 4) and feats.dtype == torch.float32
    assert torch.allclose(feats, expected, atol=1e-6)
    assert net.training  # the caller's mode is given back


def test_normalisation_and_resize_hand_computed():
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    images[0] = 51  # 0.2 -> (0.2 - 0.5) / 0.25 = -1.2
    images[1, 1] = 255  # channel 1 only: 1.0 -> 2.0, others 0 -> -2.0
    feats = extract_features(pooled, images, _normalize, input_size=16)
    expected = torch.tensor([[-1.2, -1.2, -1.2], [-2.0, 2.0, -2.0]])
    assert torch.allclose(feats, expected, atol=1e-5)  # a constant image stays constant when resized
    flat = nn.Flatten()
    assert extract_features(flat, images, _normalize, input_size=16).shape == (2, 3 * 16 * 16)
    assert extract_features(flat, images, _normalize).shape == (2, 3 * 4 * 4)


def test_cache_hit_equals_recomputation_without_running_the_backbone(tmp_path, monkeypatch):
    net, images = _net(), _images()
    first = extract_features(net, images, _normalize, batch_size=4, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1
    assert torch.equal(first, extract_features(net, images, _normalize, batch_size=4))

    def fail(*_):
        raise AssertionError("backbone ran despite a cache hit")

    monkeypatch.setattr(net, "forward", fail)
    assert torch.equal(extract_features(net, images, _normalize, batch_size=2, cache_dir=tmp_path), first)


def test_any_change_of_weights_pixels_size_or_normalisation_is_a_miss(tmp_path):
    net, images = _net(), _images()
    base = cache_key(net, images, _normalize, None)
    first = extract_features(net, images, _normalize, cache_dir=tmp_path)
    changed_pixel = images.clone()
    changed_pixel[3, 1, 2, 2] ^= 1
    assert cache_key(net, changed_pixel, _normalize, None) != base
    assert cache_key(net, images, _normalize, 16) != base
    assert cache_key(net, images, lambda x: x.float() / 255.0, None) != base
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 0.5
    assert cache_key(net, images, _normalize, None) != base
    again = extract_features(net, images, _normalize, cache_dir=tmp_path)
    assert not torch.allclose(again, first)  # recomputed with the new weight, not served stale
    assert len(list(tmp_path.glob("features-*.pt"))) == 2


def test_corrupt_cache_file_is_recomputed(tmp_path, caplog):
    net, images = _net(), _images()
    first = extract_features(net, images, _normalize, cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("features-*.pt")
    cache_file.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        again = extract_features(net, images, _normalize, cache_dir=tmp_path)
    assert torch.equal(again, first) and "unreadable feature cache" in caplog.text
    assert torch.equal(torch.load(cache_file, weights_only=True)["features"], first)  # rewritten intact


@pytest.mark.parametrize("images,message", [
    (torch.zeros(2, 3, 4, 4), r"uint8 \(N, C, H, W\) tensor, got torch.float32 \(2, 3, 4, 4\)"),
    (torch.zeros(3, 4, 4, dtype=torch.uint8), r"got torch.uint8 \(3, 4, 4\)"),
    (torch.zeros(0, 3, 4, 4, dtype=torch.uint8), "no images given"),
])
def test_bad_input_is_a_one_line_error(images, message):
    with pytest.raises(SupersubError, match=message):
        extract_features(_net(), images, _normalize)
    with pytest.raises(SupersubError, match="batch_size must be >= 1"):
        extract_features(_net(), _images(), _normalize, batch_size=0)


def test_a_grown_image_set_reuses_the_cache_blocks_it_shares(tmp_path, monkeypatch):
    """Outlier images appended to a pool must not invalidate the cached outputs of the images before them."""
    from supersub.models import feature_cache

    monkeypatch.setattr(feature_cache, "CACHE_BLOCK", 4)
    net, images = _net(), _images(n=10)
    first = extract_features(net, images[:8], _normalize, cache_dir=tmp_path)  # blocks [0:4], [4:8]
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
    seen: list[int] = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x: (seen.append(len(x)), forward(x))[1])
    grown = extract_features(net, images, _normalize, cache_dir=tmp_path)
    assert seen == [2]  # only the new block [8:10] ran
    assert torch.equal(grown[:8], first)
    assert torch.allclose(grown, extract_features(net, images, _normalize), atol=1e-6)


def test_a_read_that_computes_nothing_logs_at_debug_level_only(tmp_path, caplog):
    """calibrate re-runs eight models on the same cached images: eight identical info lines were noise."""
    net, images = _net(), _images()
    with caplog.at_level(logging.INFO, logger="supersub"):
        extract_features(net, images, _normalize, cache_dir=tmp_path)
        assert "7 computed" in caplog.text
        caplog.clear()
        extract_features(net, images, _normalize, cache_dir=tmp_path)
    assert caplog.text == ""
