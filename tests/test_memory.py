"""supersub.memory: once turned on, a freed large block is reused by the next allocation instead of being
handed back to the kernel and faulted in again page by page (what made a training step twice as slow)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from supersub.memory import ENV

# malloc, touch and free a 64 MB block (glibc's default serves it with mmap and unmaps it on free), three times
# after a first time; print whether the setting applied and the page faults of the three
SCRIPT = """
import ctypes, ctypes.util, resource
from supersub.memory import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def block():
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    block()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 3 * (64 << 20) // os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0


def _run(setting: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if setting is not None:
        env[ENV] = setting
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    applied, faults = _run(None)
    default_applied, default_faults = _run("0")
    assert applied and not default_applied
    assert default_faults > PAGES // 2  # glibc's default: the block comes back from the kernel each time
    assert faults < PAGES // 20  # kept: the same heap block, already resident


def test_opt_out_is_honoured_and_a_block_restores_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import supersub.memory as memory

    calls: list[dict[int, int]] = []
    monkeypatch.setattr(memory, "_on", False)
    monkeypatch.setattr(memory, "_mallopt", lambda settings: calls.append(dict(settings)) or True)
    monkeypatch.setattr(memory.platform, "system", lambda: "Linux")
    monkeypatch.setattr(memory.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setenv(ENV, "0")
    with memory.freed_memory_kept() as on:
        assert on is False
    assert calls == []
    monkeypatch.setenv(ENV, "1")
    with memory.freed_memory_kept() as on:
        with memory.freed_memory_kept():  # nested: only the outermost block restores
            assert memory.keep_freed_memory() is True
        assert on and len(calls) == 1
    assert calls == [{memory._M_MMAP_MAX: 0, memory._M_TRIM_THRESHOLD: memory.TRIM_THRESHOLD}, memory.GLIBC_DEFAULTS]
    assert memory._on is False
