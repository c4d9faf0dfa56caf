"""Worker processes of benchmarks/speed.py: every measured side runs in a process of its own, behind a gate.

Why processes: peak memory has to be per measurement, and torch allocates outside Python's heap, so
``tracemalloc`` misses most of it. Each worker reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, the
kernel's high-water mark of the process's resident set. Workers are forked from a fork server that has
imported torch, Lightning and supersub once (fast to start, and every worker starts from the same imported
state; the benchmark reports that state's size as the "idle worker" row).

Why a gate: two sides of a ratio stay set up side by side and take turns. The driver tells one worker to
run ``n`` steps (batches, or predict calls) and waits for its time, then the other, so the load of a shared
machine drifts over both alike. Hand-written on ``multiprocessing`` pipes: a worker must pause *inside*
Lightning's loop, between two batches, which no process pool offers.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# what the fork server imports before forking workers: the heavy libraries by their package names (Python
# 3.11's fork server imports these before it applies the driver's sys.path, so the modules beside this file
# may not be found there; a worker then imports them, which is quick once their dependencies are loaded)
PRELOAD = ["torch", "lightning", "timm", "kornia", "pandas", "supersub.api", "supersub.training.lightning_fit",
           "_speed.workers", "_speed.sides"]


# ---- the worker's end: a measured side calls Gate.step before every unit of work -----------------------
def peak_rss_mb() -> float:
    """The peak resident set of this process's own memory map so far, in MB.

    Linux: ``VmHWM`` of /proc/self/status. Not ``ru_maxrss``: after fork + exec (how the fork server starts)
    the kernel folds the forking parent's peak into it, so a worker would report the driver's memory.
    Elsewhere: ``ru_maxrss`` (kB on Linux, bytes on macOS).
    """
    status = _proc_status()
    if "VmHWM" in status:
        return status["VmHWM"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def rss_mb() -> float | None:
    """The current resident set in MB (Linux), or None."""
    return _proc_status().get("VmRSS")


def _proc_status() -> dict[str, float]:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: float(v.split()[0]) / 1024 for k, _, v in (line.partition(":") for line in lines)
            if k in ("VmHWM", "VmRSS")}


class Gate:
    """The worker's end of the protocol: call :meth:`step` before every unit of work.

    It blocks at a unit boundary until the driver says how many units to run next, and reports the wall time
    of the units run since the last command (``seconds``, ``items`` = images, ``steps``) plus ``extra``, which
    a side may fill with what else it measured. ``step`` returns False when the driver says stop.
    """

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.extra: dict[str, Any] = {}
        self._left = 0
        self._start = 0.0
        self._usage = resource.getrusage(resource.RUSAGE_SELF)
        self._items = 0
        self._steps = 0
        self._announced = False  # "ready" sent
        self._pending = False  # a run command received and not yet answered
        self.stopped = False

    def step(self, items: int = 1) -> bool:
        now = time.perf_counter()
        if self._left == 0:
            if self._pending:
                self._report(now)
            self._announce()
            command = self.conn.recv()
            if command is None:
                self.stopped = True
                return False
            self._left, self._items, self._steps, self._pending = int(command), 0, 0, True
            self._usage = resource.getrusage(resource.RUSAGE_SELF)
            self._start = time.perf_counter()
        self._left -= 1
        self._items += items
        self._steps += 1
        return True

    def close(self) -> None:
        """The side's work ended: answer an open command (with the units it did run) and wait for stop."""
        if self._pending:
            self._report(time.perf_counter())
        self._announce()
        while not self.stopped:
            if self.conn.recv() is None:
                self.stopped = True
            else:  # the side ran out of work: zero steps tell the driver so
                self.conn.send(("timed", {"seconds": 0.0, "items": 0, "steps": 0}))

    def _announce(self) -> None:
        if not self._announced:
            self.conn.send(("ready", peak_rss_mb()))
            self._announced = True

    def _report(self, now: float) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.conn.send(("timed", {"seconds": now - self._start, "items": self._items, "steps": self._steps,
                                  "user_seconds": usage.ru_utime - self._usage.ru_utime,
                                  "system_seconds": usage.ru_stime - self._usage.ru_stime,
                                  "page_faults": usage.ru_minflt - self._usage.ru_minflt, "rss_mb": rss_mb(),
                                  **self.extra}))
        self.extra, self._pending = {}, False


# ---- the driver's end ----------------------------------------------------------------------------------
def serve(conn: multiprocessing.connection.Connection, side: str, kwargs: dict[str, Any], threads: int) -> None:
    """A worker's main: ``_speed.sides.<side>(gate, **kwargs)`` with ``threads`` torch threads (0: torch's
    default), then its peak memory. Sides go by name, so the driver never imports torch."""
    try:
        import torch

        from _speed import sides

        if threads:
            torch.set_num_threads(threads)
        gate = Gate(conn)
        getattr(sides, side)(gate, **kwargs)
        gate.close()
        conn.send(("done", peak_rss_mb()))
    except BaseException:  # noqa: BLE001 - whatever failed, the driver gets the traceback instead of a hang
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Worker:
    """The driver's end: one side in its own process."""

    def __init__(self, name: str, side: str, threads: int, **kwargs: Any) -> None:
        ctx = _context()
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve, args=(child, side, kwargs, threads), name=f"speed-{name}", daemon=True)
        self.process.start()
        child.close()
        self.ready_rss_mb: float | None = None

    def ready(self) -> float:
        """Wait until the side is set up; its peak memory so far (MB)."""
        if self.ready_rss_mb is None:
            self.ready_rss_mb = float(self._expect("ready"))
        return self.ready_rss_mb

    def run(self, steps: int) -> dict[str, Any]:
        """Run ``steps`` units of work; their ``seconds``, ``items``, ``steps`` and the side's extras."""
        self.ready()
        self.conn.send(steps)
        result = self._expect("timed")
        if result["steps"] == 0:
            raise RuntimeError(f"{self.name}: the side ran out of work before its measurement")
        return result

    def stop(self) -> float:
        """End the side; the process's peak resident set over its whole life (MB)."""
        self.ready()
        self.conn.send(None)
        peak = float(self._expect("done"))
        self.process.join(timeout=60)
        return peak

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)

    def _expect(self, kind: str) -> Any:
        try:
            got, payload = self.conn.recv()
        except EOFError:
            self.process.join(timeout=10)
            raise RuntimeError(f"{self.name}: worker died (exit code {self.process.exitcode})") from None
        if got == "error":
            raise RuntimeError(f"{self.name}: worker failed\n{payload}")
        if got != kind:
            raise RuntimeError(f"{self.name}: expected {kind!r} from the worker, got {got!r}")
        return payload


def _context() -> mp.context.BaseContext:
    """A fork server where the platform has one (workers start without re-importing torch), else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def start_server() -> None:
    """Start the fork server now, so its imports overlap with whatever the driver does next."""
    if "forkserver" in mp.get_all_start_methods():
        _context()
        from multiprocessing import forkserver

        forkserver.ensure_running()
