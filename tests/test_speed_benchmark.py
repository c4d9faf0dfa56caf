"""benchmarks/speed.py --smoke: one run on the built-in data fills every row of the table with positive numbers.

No wall-clock assertion: the numbers of a smoke run on a shared machine mean nothing; what is checked is that
every measurement ran (each side in its own worker process) and reached the table, the Markdown and the JSON.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "speed.py"
ROWS = ("train", "train-kept", "full", "frozen", "partial", "fill-frozen", "fill-partial", "predict", "predict-kept",
        "idle")
RATIOS = ("train", "train-kept", "frozen", "partial", "predict", "predict-kept")  # supersub against a reference


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--out", str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=600)


def test_smoke_run_fills_every_row(tmp_path: Path) -> None:
    out = tmp_path / "speed.md"
    proc = _run(out)
    assert proc.returncode == 0, proc.stderr[-4000:]

    saved = json.loads((tmp_path / "speed.md.json").read_text())
    rows = {r["key"]: r for r in saved["rows"]}
    assert tuple(rows) == ROWS
    for key, row in rows.items():
        assert math.isfinite(row["supersub"]) and row["supersub"] > 0, key
        assert all(m is None or m > 0 for m in row["rss_mb"]), key
    for key in RATIOS:
        assert math.isfinite(rows[key]["ratio"]) and rows[key]["ratio"] > 0, key
        assert rows[key]["reference"] > 0, key
    assert rows["frozen"]["met"] in (True, False) and rows["full"]["met"] is None

    table = [line for line in out.read_text().splitlines() if line.startswith("| (")]
    assert len(table) == len(ROWS)
    for line, key in zip(table, ROWS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6
        if key in RATIOS:
            assert float(cells[3].rstrip("x").replace(",", "")) > 0, line
    assert "python benchmarks/speed.py --smoke" in out.read_text()
    assert "--smoke" in proc.stdout and "ratio" in proc.stdout  # the rich table and the command were printed


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "speed.md"
    out.write_text("mine")
    proc = _run(out)
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert out.read_text() == "mine"
