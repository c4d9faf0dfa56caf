"""The disk caches stay bounded: a size limit with least-recently-used eviction, ``supersub cache info|clear``,
and ``predict`` keeping the features of the images it predicts only with ``--cache``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from supersub.data.cache_limit import ENV, cache_files, cache_policy, clear_cache, enforce_limit, limit_bytes
from supersub.errors import SupersubError
from supersub.models.feature_cache import extract_features


def _file(folder: Path, name: str, size: int, age_days: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_days * 86400
    os.utime(path, (stamp, stamp))
    return path


def test_the_least_recently_used_files_go_first_and_nothing_else_is_touched(tmp_path: Path) -> None:
    old = _file(tmp_path, "features-old.pt", 400, 3)
    mid = _file(tmp_path, "images-mid.pt", 400, 2)
    new = _file(tmp_path, "features-new.pt", 400, 1)
    mine = _file(tmp_path, "notes.txt", 10_000, 9)  # not supersub's: never counted, never deleted
    with cache_policy(max_gb=900e-9):  # 900 bytes: two of the three files fit
        assert enforce_limit(tmp_path, keep=new) == [old]
    assert sorted(p.name for p in cache_files(tmp_path)) == ["features-new.pt", "images-mid.pt"] and mine.is_file()
    with cache_policy(max_gb=500e-9):  # the file just written goes last, even if it is the least recently used
        os.utime(new, (1, 1))
        assert enforce_limit(tmp_path, keep=new) == [mid]
    with cache_policy(max_gb=0):  # 0: no limit
        assert limit_bytes() is None and enforce_limit(tmp_path) == []


def test_the_limit_comes_from_the_config_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert limit_bytes() == 5_000_000_000
    monkeypatch.setenv(ENV, "0.5")
    assert limit_bytes() == 500_000_000
    with cache_policy(max_gb=2):
        assert limit_bytes() == 2_000_000_000
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(SupersubError, match=f"\\${ENV}: 'lots' is not a number of gigabytes"):
        limit_bytes()


def test_a_hit_refreshes_a_file_so_eviction_spares_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    images = [torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8) for _ in range(3)]
    norm = lambda x: x.float() / 255  # noqa: E731
    with cache_policy(max_gb=0):
        for batch in images[:2]:
            extract_features(net, batch, norm, cache_dir=tmp_path)
    first, second = cache_files(tmp_path)  # oldest use first
    os.utime(first, (time.time() - 100, time.time() - 100))
    os.utime(second, (time.time() - 50, time.time() - 50))
    extract_features(net, images[0], norm, cache_dir=tmp_path)  # a hit on the oldest file: now the newest use
    one_file = first.stat().st_size * 2.5 / 1e9  # room for two files
    with cache_policy(max_gb=one_file):
        extract_features(net, images[2], norm, cache_dir=tmp_path)  # a third file: one must go
    assert first.is_file() and not second.is_file()


def test_cache_clear_older_than_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _file(tmp_path, "features-a.pt", 100, 10)
    recent = _file(tmp_path, "features-b.pt", 100, 1)
    mine = _file(tmp_path, "keep-me.pt", 100, 30)
    assert run_cli(["cache", "info", "--dir", str(tmp_path)]) == 0
    assert "2 files" in capsys.readouterr().out
    assert run_cli(["cache", "clear", "--dir", str(tmp_path), "--older-than", "7"]) == 0
    assert "removed 1 files" in capsys.readouterr().out
    assert cache_files(tmp_path) == [recent] and mine.is_file()
    assert clear_cache(tmp_path) == (1, 100) and mine.is_file()
    with pytest.raises(SupersubError, match="negative"):
        clear_cache(tmp_path, -1)


def test_predict_keeps_its_inputs_features_only_with_cache(synth_dir: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SUPERSUB_CACHE_DIR", str(cache))
    run = tmp_path / "run"
    assert run_cli(["train", "--data", str(synth_dir), "--out", str(run), "--backbone", "cnn", "--finetune", "frozen",
                    "--epochs", "1", "--image-size", "16", "--set", "model.width=4", "--set", "model.depth=[1]",
                    "--no-progress", "--score", "msp", "--tau-super", "0.5", "--tau-sub", "0.5"]) == 0
    trained = set(cache_files(cache))
    assert trained  # training keeps the training images' features
    assert run_cli(["predict", str(run), str(synth_dir / "test_images"), "--out", str(tmp_path / "a.csv")]) == 0
    assert set(cache_files(cache)) == trained  # the test images' features were not kept
    assert run_cli(["predict", str(run), str(synth_dir / "test_images"), "--out", str(tmp_path / "b.csv"),
                    "--cache"]) == 0
    assert len(set(cache_files(cache)) - trained) == 1
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
