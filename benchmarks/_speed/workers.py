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
import traceback
from typing import Any

from _speed.gate import Gate, peak_rss_mb

# what the fork server imports before forking workers: the heavy libraries by their package names (Python
# 3.11's fork server imports these before it applies the driver's sys.path, so the modules beside this file
# may not be found there; a worker then imports them, which is quick once their dependencies are loaded)
PRELOAD = ["torch", "lightning", "timm", "kornia", "pandas", "supersub.api", "supersub.training.lightning_fit",
           "_speed.gate", "_speed.workers", "_speed.sides"]


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
