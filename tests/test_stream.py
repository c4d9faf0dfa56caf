"""Prediction in chunks: the same bytes as the whole set in memory, an atomic CSV, several processes alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from supersub import inference
from supersub.data import chunks
from supersub.data.formats import read_images
from supersub.errors import SupersubError
from supersub.data.cache import decode_images
from supersub.pipeline.predict import predict_images, predict_tensors
from supersub.run_dir import RunDir


def in_memory_csv(run_dir: Path, images: Path, probs: bool, names: bool) -> str:
    """Today's path before streaming: decode every image into one tensor, predict it, format the whole frame."""
    run = RunDir.open(run_dir)
    model, cfg, _ = run.load_model()
    ds = read_images(images)
    decoded = decode_images(ds.records, cfg.data.image_size).images  # every test image is readable
    pred = predict_tensors(model, run.load_open_set_head(), decoded, ds.names, "cpu", cfg=cfg)
    return pred.to_frame(probs, run.load_taxonomy() if names else None).to_csv(index=False, float_format="%.6g")


def small_chunks(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Chunks of ``n`` images and forward passes of ``n`` (the defaults, 1024 and 256, need more images): the
    whole set in memory then forwards the same batches as the chunks, as it does at the defaults. ``n`` a multiple
    of 32: torch's vectorised sigmoid takes 32 floats at a time on this CPU, and a chunk cut inside them rounds
    the novel probability of its last images differently in the last bit (1024 is such a multiple)."""
    monkeypatch.setattr(chunks, "CHUNK", n)
    monkeypatch.setattr(inference, "BATCH", n)


@pytest.mark.parametrize("chunk", [32, None])
def test_streamed_csv_is_byte_for_byte_the_in_memory_one(trained_run, synth_dir, tmp_path, monkeypatch, chunk):
    if chunk is not None:
        small_chunks(monkeypatch, chunk)  # several chunks of the test images, the last one short
    out = tmp_path / "pred.csv"
    rows = predict_images(trained_run, synth_dir / "test_images", out, probs=True, names=True, frame=False)
    expected = in_memory_csv(trained_run, synth_dir / "test_images", True, True)
    assert rows == expected.count("\n") - 1 > (chunk or 0)
    assert out.read_bytes() == expected.encode()
    assert [p.name for p in tmp_path.iterdir()] == ["pred.csv"]  # no temporary file left behind


def test_the_recipe_streams_the_same_bytes(recipe_run, synth_dir, tmp_path, monkeypatch):
    """The default recipe (frozen Lite0, vim on block-1, feature cache read) chunk by chunk."""
    small_chunks(monkeypatch, 32)
    out = tmp_path / "pred.csv"
    predict_images(recipe_run, synth_dir / "test_images", out, probs=True)
    assert out.read_bytes() == in_memory_csv(recipe_run, synth_dir / "test_images", True, False).encode()


def test_an_unreadable_image_leaves_no_csv(trained_run, synth_dir, tmp_path, monkeypatch):
    small_chunks(monkeypatch, 8)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, p in enumerate(sorted((synth_dir / "test_images").iterdir())[:20]):
        (folder / p.name).write_bytes(p.read_bytes() if i != 13 else b"not an image")
    bad = sorted(folder.iterdir())[13].name
    out = tmp_path / "pred.csv"
    with pytest.raises(SupersubError, match=bad):
        predict_images(trained_run, folder, out)
    assert list(tmp_path.iterdir()) == [folder]  # neither the CSV nor a partial one
    df = predict_images(trained_run, folder, out, skip_bad=True, overwrite=True)
    assert isinstance(df, pd.DataFrame) and len(df) == 19 and bad not in set(df["image"])
    assert pd.read_csv(out)["image"].tolist() == df["image"].tolist()


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "WORLD_SIZE",
                  "MASTER_ADDR", "MASTER_PORT")


def _supersub(args: list[str], **env: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "supersub"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "supersub.cli"]
    clean = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES} | {"HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(command + args, env=clean, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch build cannot run CPU process groups (gloo)")
def test_two_cpu_processes_predict_what_one_does(trained_run, synth_dir, tmp_path):
    """DDP on the CPU (gloo): each rank takes every other chunk of 32, rank 0 gathers and writes them in order."""
    common = [str(trained_run), str(synth_dir / "test_images"), "--probs", "--names", "--accelerator", "cpu"]
    one = _supersub(["predict", *common, "--out", str(tmp_path / "one.csv"), "--devices", "1"], SUPERSUB_CHUNK="32")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _supersub(["predict", *common, "--out", str(tmp_path / "two.csv"), "--devices", "2", "--strategy", "ddp"],
                    SUPERSUB_CHUNK="32")
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("wrote") == 1  # rank 1 neither reports nor writes
    text = (tmp_path / "one.csv").read_text()
    assert text.count("\n") - 1 > 3 * 32  # four chunks: rank 0 takes 0 and 2, rank 1 takes 1 and 3
    assert (tmp_path / "two.csv").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "two.csv"]


PEAK_RSS = """
import sys
from pathlib import Path
run, images, way = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if way == "stream":
    from supersub.pipeline.predict import predict_images
    predict_images(run, images, Path(sys.argv[4]), frame=False)
else:  # the whole set decoded into one tensor first, as before streaming
    from supersub.data.formats import read_images
    from supersub.data.cache import decode_images
    from supersub.pipeline.predict import predict_tensors
    from supersub.run_dir import RunDir
    r = RunDir.open(run)
    model, cfg, _ = r.load_model()
    ds = read_images(images)
    # in anonymous memory, as before streaming (the decoded set may now be a memory-mapped file, whose pages the
    # kernel can drop), and with the float copy the old path's forward pass made of the whole set: 4 + 1 bytes a
    # pixel held through the prediction, so that the growth stands above the import-time peak it can hide behind
    decoded = decode_images(ds.records, cfg.data.image_size).images.clone()
    as_float = decoded.float()
    predict_tensors(model, r.load_open_set_head(), decoded, ds.names, "cpu", cfg=cfg)
    assert as_float.shape[0] == len(ds.names)
# the kernel's high-water mark of this process's own resident set (KiB); not ru_maxrss, which Linux carries over
# from the forking parent across exec (under a full test run, the pytest process's 1.5 GB hid every difference)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def peak_rss_mib(run: Path, images: Path, way: str, out: Path) -> float:
    """The peak resident set of one prediction in a fresh process (what the kernel recorded, torch's memory too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SUPERSUB_CHUNK": "64"}
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, str(run), str(images), way, str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.strip().splitlines()[-1]) / 1024


@pytest.fixture(scope="module")
def wide_run(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny network on images decoded at 96 px (27 KB each), so that holding them all shows in the resident set."""
    from conftest import run_cli

    run = tmp_path_factory.mktemp("wide") / "run"
    assert run_cli(["train", "--data", str(synth_dir), "--out", str(run), "--backbone", "cnn", "--epochs", "1",
                    "--image-size", "96", "--batch-size", "16", "--no-progress", "--set", "model.width=4",
                    "--set", "model.depth=[1]"]) == 0
    return run


def test_predicting_four_times_more_images_takes_no_more_memory(wide_run, synth_dir, tmp_path):
    photos = sorted((synth_dir / "test_images").iterdir())
    folders = {}
    for n in (600, 2400):
        folders[n] = tmp_path / f"images-{n}"
        folders[n].mkdir()
        for i in range(n):
            (folders[n] / f"{i:05d}_{photos[i % len(photos)].name}").write_bytes(photos[i % len(photos)].read_bytes())
    # the lower of two runs: a process's peak carries ~+-12 MiB of heap noise on a quiet machine, more on a loaded CI
    # (one run there streamed 2,400 images 22 MiB above 600, none of it the images)
    stream = {n: min(peak_rss_mib(wide_run, folders[n], "stream", tmp_path / f"{n}-{k}.csv") for k in range(2))
              for n in folders}
    whole = {n: peak_rss_mib(wide_run, folders[n], "whole", tmp_path / "unused.csv") for n in folders}
    # 1800 more images decoded at 96 px are 48 MiB, 250 MB with their float copy: the whole-set path grows by about
    # that, which shows this measurement can fail; streaming holds a chunk of 64 images whatever their number, so it
    # stays under half of what holding just the decoded images would add
    print(f"peak RSS MiB: streamed {stream}, whole set {whole}")
    assert whole[2400] - whole[600] > 100, whole
    assert stream[2400] - stream[600] < 24, stream


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="this torch build cannot run CPU process groups (gloo)")
def test_two_cpu_processes_share_the_frozen_feature_extraction(synth_dir, tmp_path, monkeypatch):
    """The recipe (frozen Lite0) under DDP: each rank computes its chunks' features once, into the shared cache, and
    the matrix the ranks read back is the one a single process computes without any cache."""
    import re

    from supersub.models import feature_cache
    from supersub.pipeline.inputs import load_labelled, training_pool
    from supersub.run_dir import load_model_file
    from supersub.training.finetune import cached_rows

    cache = tmp_path / "cache"
    done = _supersub(["train", "--data", str(synth_dir), "--out", str(tmp_path / "run"), "--epochs", "1",
                      "--image-size", "24", "--input-size", "32", "--batch-size", "32", "--no-progress",
                      "--novel-data", str(synth_dir / "novel_images"), "--accelerator", "cpu", "--devices", "2",
                      "--strategy", "ddp"], SUPERSUB_CHUNK="32", SUPERSUB_CACHE_DIR=str(cache))
    assert done.returncode == 0, done.stderr[-2000:]
    model, cfg, _ = load_model_file(tmp_path / "run" / "model.pt")
    pool = training_pool(load_labelled(synth_dir, cfg), cfg, {})
    computed = [int(m) for m in re.findall(r"backbone outputs of \d+ images: \d+ read from the cache in .*?, (\d+) "
                                           r"computed", done.stderr)]
    assert sum(computed) == len(pool.images) and max(computed) <= 32  # every image once, by chunks of either rank

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran: the cache the ranks filled was incomplete")

    monkeypatch.setenv("SUPERSUB_CACHE_DIR", str(cache))
    with monkeypatch.context() as m:
        m.setattr(feature_cache, "_compute", no_backbone)
        from_cache = cached_rows(model, pool.images, cfg, torch.device("cpu"))
    direct = cached_rows(model, pool.images, cfg.model_copy(update={"data": cfg.data.model_copy(
        update={"feature_cache": False})}), torch.device("cpu"))
    assert torch.equal(from_cache, direct)


def test_the_heap_is_trimmed_after_every_chunk(trained_run, synth_dir, tmp_path, monkeypatch):
    """Freed memory goes back to the kernel between chunks (supersub.memory.return_freed_memory), so the resident
    set of a long stream stays that of one chunk: once per chunk handed over."""
    from supersub.training import stream

    small_chunks(monkeypatch, 32)
    calls: list[int] = []
    monkeypatch.setattr(stream, "return_freed_memory", lambda: calls.append(1) or True)
    rows = predict_images(trained_run, synth_dir / "test_images", tmp_path / "pred.csv", frame=False)
    assert len(calls) == -(-rows // 32) > 1


def test_frozen_extraction_forwards_small_batches_on_a_cpu(recipe_run, synth_dir, tmp_path, monkeypatch):
    """On a CPU the frozen network sees at most CPU_EXTRACT_BATCH images per pass whatever the training batch
    (a batch of 64 at 224 px held 900 MB more and ran slower); the rows are the same numbers."""
    from supersub.training import finetune

    model, cfg, _ = RunDir.open(recipe_run).load_model()
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"batch_size": 64}),
                                 "data": cfg.data.model_copy(update={"feature_cache": False})})
    sizes: list[int] = []
    stem = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))  # what every pass runs first
    hook = stem.register_forward_hook(lambda m, inputs, out: sizes.append(len(inputs[0])))
    images = decode_images(read_images(synth_dir / "test_images").records[:40], cfg.data.image_size).images
    small = finetune.cached_rows(model, images, cfg, torch.device("cpu"))
    assert max(sizes) == finetune.CPU_EXTRACT_BATCH < 40 and sum(sizes) == 40, sizes
    monkeypatch.setattr(finetune, "CPU_EXTRACT_BATCH", 64)
    # the same numbers up to float rounding (a convolution's algorithm can depend on the batch and thread count)
    torch.testing.assert_close(finetune.cached_rows(model, images, cfg, torch.device("cpu")), small, rtol=1e-4, atol=1e-4)
    hook.remove()
    assert finetune.extraction_batch(cfg, torch.device("cuda")) == 64  # an accelerator keeps the training batch


def test_a_chunk_forwards_whole_batches():
    """Chunks are a multiple of run_model's batch: chunked prediction forwards the batches the whole set did."""
    assert chunks.CHUNK % inference.BATCH == 0
