"""The worker's end of the speed benchmark's protocol: a measured side calls :meth:`Gate.step` before every unit of
work; the gate blocks until the driver says how many units to run, and reports their times and memory.
(Apart from :mod:`_speed.workers`, which runs the sides, so that the sides can use it without a circle.)"""

from __future__ import annotations

import multiprocessing.connection
import resource
import sys
import time
from pathlib import Path
from typing import Any


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
