"""A library call leaves the process as it found it: ``api.train`` and ``api.predict`` in a fresh interpreter,
with everything they used to change for good recorded before and after (glibc's mmap use, torch's NaN fill and
deterministic flags, warning filters, Lightning's logger levels, the global RNGs, Lightning's variables, the
SIGINT handler)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import ctypes, ctypes.util, json, logging, os, random, signal, sys, warnings
import numpy as np, torch, torch.utils.deterministic
import supersub.api as api

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]

def big_blocks_are_mmapped():
    before = libc.mallinfo2().hblks
    block = libc.malloc(64 << 20)  # above glibc's largest mmap threshold: mmapped unless mmap is off
    mapped = libc.mallinfo2().hblks > before
    libc.free(block)
    return mapped

def state():
    return {
        "mmap": big_blocks_are_mmapped(),
        "fill_uninitialized_memory": torch.utils.deterministic.fill_uninitialized_memory,
        "deterministic": [torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()],
        "cudnn": [torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic],
        "warning_filters": [repr(f) for f in warnings.filters],
        "logger_levels": {n: logging.getLogger(n).level for n in ("lightning", "lightning.pytorch", "lightning.fabric")},
        "env": {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")},
        "rng": [random.random(), float(np.random.rand()), float(torch.rand(1))],
        "sigint": repr(signal.getsignal(signal.SIGINT)),
        "threads": torch.get_num_threads(),
        "blas_threads": sorted(p["num_threads"] for p in __import__("threadpoolctl").threadpool_info()),
    }

data, work = sys.argv[1], sys.argv[2]
random.seed(123); np.random.seed(123); torch.manual_seed(123)
before = state()
random.seed(123); np.random.seed(123); torch.manual_seed(123)
tiny = {"model.backbone": "cnn", "model.width": 4, "model.depth": [1], "data.image_size": 16, "optim.batch_size": 16,
        "trainer.progress": False, "novelty.score": "msp", "novelty.tau_super": 0.5, "novelty.tau_sub": 0.5}
api.train(data, work + "/run", epochs=1, **tiny)
api.predict(work + "/run", data + "/test_images")
after = state()
print(json.dumps({"before": before, "after": after}))
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallinfo2")
@pytest.mark.timeout(300)
def test_train_and_predict_leave_the_process_as_they_found_it(synth_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(synth_dir), str(tmp_path)], capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    before, after = result["before"], result["after"]
    assert before["mmap"] is True  # the probe works: glibc's default mmaps a 64 MB block
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert changed == {}, json.dumps(changed, indent=1)[:3000]
