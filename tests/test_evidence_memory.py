"""Training's memory grows by the frozen feature matrix once, not once per stage (issue 25).

Every stage of the default recipe (final, seven calibration folds) keeps its evidence until calibration; with a
frozen backbone their features are the same numbers. These tests count the bytes of the distinct tensor storages
the evidence holds (not the resident set, which a 2-core CI shares and glibc's heap blurs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_cli
from supersub.novelty.outputs import Outputs, RowSelection
from supersub.pipeline import train as train_module
from supersub.pipeline.calibrate import calibration_evidence
from supersub.pipeline.evidence import Evidence, SharedRows


def held_storages(obj: Any, seen: dict[int, int] | None = None, visited: set[int] | None = None) -> dict[int, int]:
    """``{storage address: bytes}`` of every tensor reachable from ``obj`` (attributes, dicts, sequences)."""
    seen = {} if seen is None else seen
    visited = set() if visited is None else visited
    if id(obj) in visited:
        return seen
    visited.add(id(obj))
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    elif isinstance(obj, dict):
        for value in obj.values():
            held_storages(value, seen, visited)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            held_storages(value, seen, visited)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for value in vars(obj).values():
            held_storages(value, seen, visited)
    return seen


def feature_matrix_bytes(evidence: dict[str, Evidence]) -> int:
    """Bytes of one copy of the pool's features and tapped layers (the final model's rows of every image)."""
    out = evidence["final"].train.outputs
    assert isinstance(out, RowSelection)
    rows = [out._all_features, *(out._all_layers or {}).values()]
    return sum(t.untyped_storage().nbytes() for t in {t.untyped_storage().data_ptr(): t for t in rows}.values())


def check_held_once(evidence: dict[str, Evidence]) -> None:
    assert len(evidence) > 2  # final and the calibration folds of the default recipe
    matrix = feature_matrix_bytes(evidence)
    held = sum(held_storages(evidence).values())
    # one feature matrix, plus every stage's logits and labels (a few numbers an image); before, each stage held
    # its own copy of the features of every image it saw: one matrix per stage
    assert matrix < held < 1.5 * matrix, (held, matrix)
    storages = {ev_view.outputs._all_features.untyped_storage().data_ptr()  # type: ignore[union-attr]
                for ev in evidence.values() for ev_view in (ev.train, ev.val, ev.held, ev.novel) if ev_view is not None}
    assert len(storages) == 1


def test_calibrate_holds_the_frozen_features_once_for_every_stage(recipe_run: Path) -> None:
    check_held_once(calibration_evidence(recipe_run))


def test_a_row_selection_reads_the_rows_select_copies() -> None:
    g = torch.Generator().manual_seed(0)
    out = Outputs(torch.randn(9, 3, generator=g), torch.randn(9, 5, generator=g), torch.randn(9, 4, generator=g),
                  layers={"block-1": torch.randn(9, 2, generator=g)})
    rows = [7, 0, 3, 3]
    lazy, eager = RowSelection.pick(out, rows), out.select(rows)
    for a, b in zip(lazy._fields(), eager._fields()):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(lazy.layer("block-1"), eager.layers["block-1"]) and lazy.layer("block-2") is None
    assert torch.equal(lazy.layer("final"), eager.features)
    seen = lazy.seen_classes(2, 4)
    assert isinstance(seen, RowSelection) and seen.sub_logits.shape == (4, 4)
    assert torch.equal(seen.features, eager.features)


def test_shared_rows_keep_equal_matrices_once_and_different_ones_apart() -> None:
    shared = SharedRows()
    features = torch.arange(12.0).view(3, 4)
    first = shared.share(Outputs(torch.zeros(3, 2), torch.zeros(3, 2), features))
    again = shared.share(Outputs(torch.ones(3, 2), torch.ones(3, 2), features.clone()))
    other = shared.share(Outputs(torch.ones(3, 2), torch.ones(3, 2), features + 1))
    assert again.features is first.features and other.features is not first.features
    assert torch.equal(again.super_logits, torch.ones(3, 2))


def test_every_stage_fits_and_collects_evidence_from_one_read_of_the_rows(synth_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The default recipe (as the recipe_run fixture trains it): the fits of all its stages and their evidence index
    the rows read once from the cache (before: each stage's fit and each stage's evidence read their own copy),
    and the evidence ``train`` hands calibration holds the features once."""
    from supersub.models import feature_cache

    reads: list[torch.Tensor] = []
    read = feature_cache._read_or_compute

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        reads.append(read(*args, **kwargs))
        return reads[-1]

    captured: dict[str, dict[str, Evidence]] = {}
    calibrate = train_module.calibrate_and_save

    def capture(run: Any, cfg: Any, evidence: dict[str, Evidence]) -> Any:
        captured["evidence"] = evidence
        return calibrate(run, cfg, evidence)

    monkeypatch.setattr(feature_cache, "_read_or_compute", counted)
    monkeypatch.setattr(train_module, "calibrate_and_save", capture)
    assert run_cli(["train", "--data", str(synth_dir), "--out", str(tmp_path / "run"), "--novel-data",
                    str(synth_dir / "novel_images"), "--epochs", "1", "--image-size", "24", "--input-size", "32",
                    "--batch-size", "32", "--no-progress"]) == 0
    assert len(reads) == 1, len(reads)
    evidence = captured["evidence"]
    check_held_once(evidence)
    matrix = reads[0].untyped_storage().data_ptr()
    for ev in evidence.values():
        out = ev.train.outputs
        assert isinstance(out, RowSelection)
        assert out._all_features.untyped_storage().data_ptr() == matrix
        assert all(t.untyped_storage().data_ptr() == matrix for t in (out._all_layers or {}).values())
    assert feature_cache._HELD is None  # released with the run
    # the frozen recipe keeps only the final model's evidence; each fold's is made again when calibration reads it
    # (from the stage's saved model and the held rows: one read above), the numbers `supersub calibrate` collects
    assert list(evidence._kept) == ["final"] and evidence.made_when_read
    recollected = calibration_evidence(tmp_path / "run")
    assert sorted(recollected) == sorted(evidence)
    for name in evidence:
        made, again = evidence[name], recollected[name]
        for view in ("train", "val", "held"):
            a, b = getattr(made, view), getattr(again, view)
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a.outputs.super_logits, b.outputs.super_logits)
                assert torch.equal(a.outputs.sub_logits, b.outputs.sub_logits)


def test_outside_a_run_every_call_reads_its_own_rows(tmp_path: Path) -> None:
    from supersub.models.feature_cache import extract_features, held_for_the_run

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    images = torch.randint(0, 255, (6, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    normalize = lambda x: x.float() / 255  # noqa: E731
    a = extract_features(net, images, normalize, cache_dir=tmp_path)
    b = extract_features(net, images, normalize, cache_dir=tmp_path)
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    with held_for_the_run():
        c = extract_features(net, images, normalize, cache_dir=tmp_path)
        d = extract_features(net, images.clone(), normalize, cache_dir=tmp_path)  # same pixels: same rows
        e = extract_features(net, images[:3], normalize, cache_dir=tmp_path)  # other images: their own rows
        with torch.no_grad():
            net[1].bias.add_(1.0)
        f = extract_features(net, images, normalize)  # other weights: a miss, never a stale hit
    assert torch.equal(c, a) and d is c and e.data_ptr() != c.data_ptr() and torch.equal(e, a[:3])
    assert torch.allclose(f, a + 1.0)


HELD_ROWS_RSS = """
import sys
import torch
from supersub.data.module import Rows
from supersub.models import feature_cache
from supersub.models.feature_cache import extract_features, held_for_the_run
from supersub.novelty.outputs import IndexedRows
from supersub.data.mapped import release
feature_cache.CACHE_BLOCK = 128  # the extraction's own blocks small beside the matrix
if sys.argv[2] == "in-memory":  # the rows as before: one matrix in the process's memory
    feature_cache.writable_rows = lambda rows, row_shape, dtype, cache_dir=None: torch.empty((rows, *row_shape), dtype=dtype)
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1024
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 8192))
images = torch.randint(0, 255, (6144, 3, 4, 4), dtype=torch.uint8)
with torch.no_grad(), held_for_the_run():
    start = status("VmRSS")
    rows = extract_features(net, images, lambda x: x.float() / 255, cache_dir=sys.argv[1])
    extracted = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # the high-water mark from here: the reads
    total = 0.0
    for block in IndexedRows(rows, torch.arange(len(rows)), after_read=release).blocks(256):  # a calibration fit
        total += float(block.sum())
    data = Rows(rows, torch.randperm(len(rows)), torch.zeros(len(rows)), torch.zeros(len(rows)))
    for i in range(0, len(data), 64):  # what a fit's batches read
        total += float(sum(x.sum() for x, _, _ in data.__getitems__(list(range(i, min(i + 64, len(data)))))))
    print(status("VmRSS") - start, status("VmHWM") - extracted, rows.numel() * 4 / 2**20, total)
"""


def test_a_run_holds_its_frozen_rows_in_a_file_not_in_memory(tmp_path: Path) -> None:
    """Within a run the frozen rows are written to a mapped file, and the fits and calibration read them a block
    at a time, dropping the pages read: the process keeps a fraction of the matrix (192 MB here) resident, and reading
    it all raises its peak by a fraction too, where the rows in memory (as before) stay resident whole: the
    measurement can fail."""
    import subprocess
    import sys

    def run(way: str) -> tuple[float, ...]:
        done = subprocess.run([sys.executable, "-c", HELD_ROWS_RSS, str(tmp_path / way), way], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        return tuple(map(float, done.stdout.split()))

    (mapped_kept, mapped_reads, matrix, mapped_total), (kept, _, _, total) = run("mapped"), run("in-memory")
    print(f"MiB resident after the reads: mapped {mapped_kept:.0f}, in memory {kept:.0f}; the reads' peak, mapped: "
          f"{mapped_reads:.0f} (matrix {matrix:.0f})")
    assert mapped_total == total  # the same numbers read
    assert kept > 0.9 * matrix
    assert mapped_kept < 0.5 * matrix and mapped_reads < 0.35 * matrix
