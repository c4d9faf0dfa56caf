"""benchmarks/speed.py --smoke: one run on the built-in data fills every row of the table.

No wall-clock assertion: the numbers of a smoke run on a shared machine mean nothing. What is checked is that
every measurement ran (each side in its own worker process), that each row is wired to the right sides (its ratio
is their quotient in the stated direction, its verdict that ratio against the target, shared measurements agree),
and that the Markdown shows what the JSON holds.
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
    # the rows are wired to the right measurements: each ratio is its two sides' quotient in the stated direction,
    # "met" is that ratio against the target, and rows that share a measurement show the same number
    for key in RATIOS:
        row = rows[key]
        quotient = row["supersub"] / row["reference"] if row["ratio_kind"] == "x" else row["reference"] / row["supersub"]
        assert math.isclose(row["ratio"], quotient, rel_tol=1e-9), key
        assert row["met"] == (None if row["target"] is None else row["ratio"] >= row["target"]), key
    assert [k for k in ROWS if rows[k]["target"] is not None] == ["train", "train-kept", "frozen", "predict",
                                                                 "predict-kept"]
    assert rows["full"]["met"] is None and rows["full"]["reference"] is None
    assert rows["train-kept"]["supersub"] == rows["train"]["supersub"]
    assert rows["predict-kept"]["supersub"] == rows["predict"]["supersub"]
    assert rows["frozen"]["reference"] == rows["partial"]["reference"] == rows["full"]["supersub"]
    assert rows["frozen"]["ratio_kind"] == rows["partial"]["ratio_kind"] == "faster"

    table = [line for line in out.read_text().splitlines() if line.startswith("| (")]
    assert len(table) == len(ROWS)
    for line, key in zip(table, ROWS):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6
        row = rows[key]
        if key in RATIOS:  # the Markdown shows the JSON's ratio and verdict
            shown = float(cells[3].rstrip("x").replace(",", ""))
            assert math.isclose(shown, row["ratio"], abs_tol=0.051 if row["ratio_kind"] == "faster" else 0.0051), line
        if row["target"] is not None:
            assert cells[4].endswith("yes" if row["met"] else "NO"), line
        else:
            assert cells[4] == "-", line
    assert "python benchmarks/speed.py --smoke" in out.read_text()
    assert "--smoke" in proc.stdout and "ratio" in proc.stdout  # the rich table and the command were printed


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "speed.md"
    out.write_text("mine")
    proc = _run(out)
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert out.read_text() == "mine"


def test_a_missed_target_reads_no() -> None:
    """The verdict logic on hand-made rows: a ratio below its target is 'NO', at or above it 'yes'."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _speed.table import Row, _cells
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    slow = Row("train", "t", 9.0, 10.0, 0.9, 0.95, (1.0, 1.0), "img/s")
    fast = Row("frozen", "f", 1.0, 60.0, 60.0, 50.0, (1.0, 1.0), "s", "faster")
    assert slow.met is False and _cells(slow)[4] == ">= 0.95 NO"
    assert fast.met is True and _cells(fast)[3] == "60.0x" and _cells(fast)[4] == ">= 50x yes"
    assert Row("full", "e", 5.0, None, None, None, (1.0, None), "s").met is None
