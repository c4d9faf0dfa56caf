"""Atomic file output: write to a temporary file in the same folder, then rename over the target.

A crash or SIGKILL mid-write therefore leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from .errors import SupersubError


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it is renamed onto ``target``.

    The temporary file is removed whatever happens, and any OS failure (a folder in the way, no
    permission, disk full) is a one-line SupersubError naming ``target``.
    """
    target = Path(target)
    if target.is_dir():
        raise SupersubError(f"{target}: is a folder, expected a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SupersubError(f"{target}: cannot create its folder {target.parent} ({e.strerror or e})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise SupersubError(f"{target}: cannot write ({e.strerror or e})") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _new_file_mode())
        os.replace(tmp_path, target)
    except OSError as e:
        raise SupersubError(f"{target}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask (mkstemp's 0o600 is too private)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(target: str | os.PathLike[str], writer: Callable[[IO[str]], None]) -> None:
    """Call ``writer(fh)`` on a text handle whose content replaces ``target`` atomically."""
    with atomic_path(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer(fh)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    write_atomic(target, lambda fh: fh.write(text))


def write_json_atomic(target: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save_atomic(obj: Any, target: str | os.PathLike[str]) -> None:
    """``torch.save`` through a temporary file, so a checkpoint is never half-written."""
    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def _refusal_reason(error: Exception) -> str:
    """Why torch.load(weights_only=True) failed, without torch's advice to retry with weights_only=False.

    For a file holding Python objects torch's first lines suggest exactly the unsafe retry; the line that
    names the blocked object ("Trying to load unsupported GLOBAL posix.system ...") is the useful one.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines or not lines[0].startswith("Weights only load failed"):
        return f"not a readable checkpoint: {_first_line(error)[:200]}"
    detail = next((ln for ln in lines[1:] if not ln.startswith("Check the documentation")), "unknown object")
    return f"it holds Python objects, not just tensors and plain data: {detail[:200].rstrip('.')}"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain data only; a pickle payload is refused."""
    path = Path(path)
    if not path.is_file():
        raise SupersubError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a refusal, reported in one line
        raise SupersubError(f"{path}: refused to load checkpoint ({_refusal_reason(e)})") from None
    if not isinstance(obj, dict):
        raise SupersubError(f"{path}: checkpoint is not a dictionary")
    return obj


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_mapping(path: Path, fmt: str, not_mapping: str) -> dict[str, Any]:
    """A JSON or YAML file (``fmt`` "JSON" or "YAML") whose top level is a mapping; any failure is a one-line
    SupersubError naming the file (``not_mapping`` says what a non-mapping top level lacks)."""
    import yaml  # only the YAML readers need it

    errors = (OSError, UnicodeDecodeError, json.JSONDecodeError if fmt == "JSON" else yaml.YAMLError)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if fmt == "JSON" else yaml.safe_load(text)
    except errors as e:
        raise SupersubError(f"{path}: not valid {fmt} ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict):
        raise SupersubError(f"{path}: {not_mapping}")
    return data
