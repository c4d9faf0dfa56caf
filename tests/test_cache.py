"""Parallel decoding and the on-disk decoded-image cache (supersub.data.cache)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import supersub.data.cache as cache
from supersub.data.cache import decode_images
from supersub.data.mapped import is_mapped
from supersub.data.images import load_image
from supersub.data.records import ImageRecord
from supersub.errors import SupersubError

SIZE = 4


def grey(i: int) -> int:
    """The grey level of test image ``i`` (distinct per image)."""
    return 10 + 20 * i


def make_records(root: Path, n: int) -> list[ImageRecord]:
    records = []
    for i in range(n):
        path = root / f"{i:02d}.png"
        Image.new("RGB", (5, 3), (grey(i),) * 3).save(path)
        records.append(ImageRecord(path, path.name))
    return records


def corrupt(record: ImageRecord) -> None:
    record.path.write_bytes(b"not a png")


def levels(images: torch.Tensor) -> list[int]:
    """Top-left red value of each decoded image (every test image is a flat grey)."""
    return images[:, 0, 0, 0].tolist()


def test_decodes_in_record_order_regardless_of_thread_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = make_records(tmp_path, 8)

    def slow_for_early_records(path: Path, size: int) -> torch.Tensor:
        time.sleep(0.004 * (8 - int(path.stem)))  # later records finish first
        return load_image(path, size)

    monkeypatch.setattr(cache, "load_image", slow_for_early_records)
    out = decode_images(records, SIZE, workers=4)
    assert out.images.shape == (8, 3, SIZE, SIZE) and out.images.dtype == torch.uint8
    assert levels(out.images) == [grey(i) for i in range(8)]
    assert out.kept == list(range(8)) and out.bad == []


def test_skip_bad_drops_and_reports_unreadable_images(tmp_path: Path) -> None:
    records = make_records(tmp_path, 5)
    corrupt(records[1])
    corrupt(records[3])
    out = decode_images(records, SIZE, skip_bad=True, workers=2)
    assert out.kept == [0, 2, 4]
    assert levels(out.images) == [grey(0), grey(2), grey(4)]
    assert len(out.bad) == 2
    assert "01.png: cannot read image" in out.bad[0] and "03.png: cannot read image" in out.bad[1]


def test_without_skip_bad_the_first_bad_image_raises(tmp_path: Path) -> None:
    records = make_records(tmp_path, 5)
    corrupt(records[3])
    corrupt(records[1])
    with pytest.raises(SupersubError, match=r"01\.png: cannot read image"):
        decode_images(records, SIZE, workers=2)


def test_no_records_give_an_empty_tensor() -> None:
    out = decode_images([], SIZE)
    assert out.images.shape == (0, 3, SIZE, SIZE) and out.kept == [] and out.bad == []


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path: Path, size: int) -> torch.Tensor:
        raise AssertionError(f"decoded {path} although the cache should have been used")

    monkeypatch.setattr(cache, "load_image", fail)


def test_disk_cache_is_hit_the_second_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = make_records(tmp_path, 3)
    first = decode_images(records, SIZE, cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache").iterdir()
    assert cached.suffix == ".u8"
    forbid_decoding(monkeypatch)
    second = decode_images(records, SIZE, cache_dir=tmp_path / "cache")
    assert torch.equal(first.images, second.images) and second.kept == [0, 1, 2]
    assert is_mapped(second.images)  # read through a memory map, not loaded


def test_cache_depends_on_size(tmp_path: Path) -> None:
    records = make_records(tmp_path, 2)
    decode_images(records, SIZE, cache_dir=tmp_path / "cache")
    assert decode_images(records, SIZE + 2, cache_dir=tmp_path / "cache").images.shape == (2, 3, SIZE + 2, SIZE + 2)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_cache_is_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    records = make_records(tmp_path, 3)
    decode_images(records, SIZE, cache_dir=tmp_path / "cache")
    Image.new("RGB", (5, 3), (250, 250, 250)).save(records[1].path)
    st = records[1].path.stat()
    os.utime(records[1].path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a coarse-clock-proof change
    out = decode_images(records, SIZE, cache_dir=tmp_path / "cache")
    assert levels(out.images) == [grey(0), 250, grey(2)]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the stale file was replaced, not kept beside


def test_corrupt_cache_file_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    records = make_records(tmp_path, 3)
    expected = decode_images(records, SIZE, cache_dir=tmp_path / "cache").images.clone()  # not the mapped file's
    (cached,) = (tmp_path / "cache").iterdir()
    cached.write_bytes(b"garbage")
    assert torch.equal(decode_images(records, SIZE, cache_dir=tmp_path / "cache").images, expected)
    assert cached.read_bytes().startswith(expected.numpy().tobytes())  # rebuilt: the rows, then the trailer


def test_cached_bad_images_still_raise_without_skip_bad(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = make_records(tmp_path, 3)
    corrupt(records[2])
    out = decode_images(records, SIZE, skip_bad=True, cache_dir=tmp_path / "cache")
    assert out.kept == [0, 1]
    forbid_decoding(monkeypatch)
    with pytest.raises(SupersubError, match=r"02\.png: cannot read image"):
        decode_images(records, SIZE, cache_dir=tmp_path / "cache")
    assert decode_images(records, SIZE, skip_bad=True, cache_dir=tmp_path / "cache").kept == [0, 1]
