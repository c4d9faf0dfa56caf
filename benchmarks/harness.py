"""The plumbing every benchmark shares: find the yardstick, build a protocol split, run the CLI, score, save.

The yardstick is ``../shared/bench`` beside the checkout (``make_protocol.py`` and ``score.py``): read-only, run
in place and never copied here, so no benchmark can tune against a copy of the test split. Importing this loads
the standard library only (``benchmarks/speed.py``'s driver must not import torch); the last section, the supersub
internals the re-scoring benchmarks share, imports them inside its functions.

    from harness import ensure_protocol, score, supersub_cmd, timed_run
    data = ensure_protocol(work / "tin-0" / "data", "tin", 0)
    timed_run(supersub_cmd("train", "--data", str(data), "--out", str(run)))
    result = score(data, predictions, out_json)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
DEFAULT_BENCH = SHARED / "bench"
DEFAULT_DATA = SHARED / "data" / "bird-dog-reptile"


class BenchError(SystemExit):
    """A one-line error for the user (bad input, missing yardstick): Python prints it and exits 1, no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


# ---- the yardstick ----------------------------------------------------------------------------------
def bench_script(name: str, bench: Path = DEFAULT_BENCH) -> Path:
    """``bench/<name>``, or a one-line error naming the folder and the flag that points elsewhere."""
    path = Path(bench) / name
    if not path.is_file():
        raise BenchError(f"{path}: not found; the yardstick (make_protocol.py, score.py) lives in ../shared/bench "
                         "beside the checkout, or pass --bench DIR")
    return path


def ensure_protocol(data: Path, variant: str, seed: int, bench: Path = DEFAULT_BENCH,
                    done: str = "test_truth.csv") -> Path:
    """The protocol split ``data`` (``make_protocol.py DATA --variant V --seed S``), built only when ``done`` is
    missing; a half-built folder is removed first, so an interrupted build is redone, a finished one reused."""
    if (data / done).is_file():
        return data
    script = bench_script("make_protocol.py", bench)
    if data.exists():
        shutil.rmtree(data)
    timed_run([sys.executable, str(script), str(data), "--variant", variant, "--seed", str(seed)])
    return data


def score(data: Path, predictions: Path, out_json: Path, bench: Path = DEFAULT_BENCH,
          truth: str = "test_truth.csv", flags: Sequence[str] = ()) -> dict[str, Any]:
    """``score.py`` on a predictions CSV against ``data/<truth>`` (``flags``: more of score.py's options); its
    figures, also saved to ``out_json``."""
    script = bench_script("score.py", bench)
    timed_run([sys.executable, str(script), str(data / truth), str(predictions), *flags, "--json", str(out_json)])
    return read_json(out_json)


# ---- running the CLI ---------------------------------------------------------------------------------
def supersub_cmd(*args: str) -> list[str]:
    """A ``supersub`` command line with the console script of this interpreter's environment."""
    return [str(Path(sys.executable).parent / "supersub"), *args]


def timed_run(cmd: Sequence[str]) -> float:
    """Print the command, run it (a failure stops the benchmark), return its wall time in seconds."""
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(list(cmd), check=True)
    return time.perf_counter() - start


def after_dashes(args: Sequence[str]) -> list[str]:
    """The flags given after ``--`` (argparse's REMAINDER keeps the ``--`` itself)."""
    return [x for x in args if x != "--"]


# ---- results -----------------------------------------------------------------------------------------
def write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """``obj`` as JSON, atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON at ``path``; ``default`` when the file is missing and a default is given, else a one-line error."""
    if not path.is_file():
        if default is not None:
            return default
        raise BenchError(f"{path}: no such result file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; ``align`` one character per column (``l`` or ``r``; default left)."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    rules = ["---:" if (align[i:i + 1] == "r") else "---" for i in range(len(header))]
    lines = [header, rules, *[[("-" if c is None else str(c)) for c in r] for r in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


# ---- measuring steps inside one process -------------------------------------------------------------
def wrap_calls(owner: Any, name: str, scope: Callable[[], AbstractContextManager[Any]]) -> bool:
    """Run every call of ``owner.name`` inside a fresh ``scope()`` (a timer, a memory phase), changing nothing
    else; a classmethod stays one. False (and nothing wrapped) when ``owner`` has no such attribute, so a probe
    written for today's module names still measures an older checkout, without that step."""
    if not hasattr(owner, name):
        return False
    real: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with scope():
            return real(*args, **kwargs)

    is_classmethod = isinstance(getattr(owner, "__dict__", {}).get(name), classmethod)
    if is_classmethod:  # call the underlying function with the class it is called on (a subclass stays itself)
        func = real.__func__  # type: ignore[attr-defined]

        def wrapper(cls: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-redef]  # noqa: F811
            with scope():
                return func(cls, *args, **kwargs)

    setattr(owner, name, classmethod(wrapper) if is_classmethod else wrapper)
    return True


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (VmHWM, VmRSS, RssFile)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/self/status has no {field} (the memory phases need Linux)")


class PhasePeaks:
    """The peak resident set (MiB) of each phase of this process, read from the kernel's high-water mark.

    ``ru_maxrss`` gives one peak for a whole run, set by its largest phase; to see how each later phase grows,
    each phase resets the mark as it starts (``/proc/self/clear_refs`` = 5) and reads it as it ends. A phase
    nested in another (extraction inside a fit) ends one segment of the outer phase and starts one of its own;
    the outer phase resumes with a fresh mark. ``after`` (a phase name) also gathers the peak of everything run
    once that phase has ended the first time (the target "after extraction" is that figure). ``<phase> file``
    is the most of the resident set that was file-backed (``RssFile``: mapped files' pages, which the kernel
    can drop) at the end of one of the phase's segments. ``<phase> s`` is the wall time its segments took (the stage
    breakdown of the run's seconds)."""

    def __init__(self, after: str | None = None) -> None:
        self.peaks: dict[str, float] = {}
        self.file: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self._segment_start = time.perf_counter()
        self.after, self.after_peak = after, None  # after_peak: a number once ``after`` has ended
        self._stack = ["other"]
        self._reset()

    @staticmethod
    def _reset() -> None:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")

    def _close_segment(self) -> None:
        name, peak = self._stack[-1], _status_kib("VmHWM") / 1024
        self.peaks[name] = max(self.peaks.get(name, 0.0), peak)
        self.file[name] = max(self.file.get(name, 0.0), _status_kib("RssFile") / 1024)
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._segment_start
        self._segment_start = now
        if self.after_peak is not None:
            self.after_peak = max(self.after_peak, peak)
        if name == self.after and self.after_peak is None:
            self.after_peak = 0.0  # the segments from here on are "after"
        self._reset()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute the memory peak of the block to ``name`` (to its own segments, not to the enclosing phase)."""
        self._close_segment()
        self._stack.append(name)
        try:
            yield
        finally:
            self._close_segment()
            self._stack.pop()

    def result(self) -> dict[str, float]:
        """Each phase's peak (MiB, one decimal), and ``after <phase>`` when that phase ran."""
        self._close_segment()
        out = {k: round(v, 1) for k, v in self.peaks.items()}
        out.update({f"{k} file": round(v, 1) for k, v in self.file.items()})
        out.update({f"{k} s": round(v, 1) for k, v in self.seconds.items()})
        if self.after and self.after_peak is not None:
            out[f"after {self.after}"] = round(self.after_peak, 1)
        return out


# ---- supersub internals shared by benchmarks ----------------------------------------------------------
# Imported here, and lazily (the speed driver imports no torch), so that a rename of supersub's modules is
# fixed in this section rather than in every benchmark that re-scores a trained run without the CLI.
def open_run(run: Path) -> Any:
    """The run folder's reader (``supersub.run_dir.RunDir``): config, model, taxonomy, thresholds."""
    from supersub.run_dir import RunDir

    return RunDir.open(run)


def is_calibrated(run: Path) -> bool:
    """A run whose open-set head was saved (``open_set_head.pt``, or an old run's ``thresholds.json``): trained to
    the end, so a benchmark reuses it instead of training again."""
    from supersub.run_dir import RunDir

    return RunDir(run).saved_head_file.is_file()


def run_score(run: Path) -> str:
    """The novelty score a run's saved head uses (what ``calibrate`` chose last, ``auto`` resolved)."""
    return str(open_run(run).load_thresholds().score)


def decoded_test_set(data: Path, taxonomy: Any, image_size: int, cache: Path) -> tuple[Any, Any]:
    """A protocol split's test images decoded (through the shared image cache) and their labelled records."""
    from supersub.data.cache import decode_images
    from supersub.data.formats import read_labels

    truth = read_labels(data / "test_truth.csv", data / "test_images", taxonomy)
    return decode_images(truth.records, image_size, cache_dir=cache).images, truth


def model_outputs(model: Any, images: Any, cfg: Any = None) -> Any:
    """The model's outputs on CPU: through the feature cache of ``cfg`` when given, else a plain forward pass."""
    from supersub.inference import pick_device, run_model

    if cfg is None:
        return run_model(model, images, device=pick_device("cpu"))
    from supersub.training.finetune import cached_outputs

    return cached_outputs(model, images, cfg, pick_device("cpu"))


def apply_calibrated(run: Path, outputs: Any) -> tuple[Any, Any]:
    """The run's current open-set head applied to ``outputs``, as ``predict`` does: (decision, thresholds)."""
    head = open_run(run).load_open_set_head()
    return head.decide(outputs), head.thresholds
