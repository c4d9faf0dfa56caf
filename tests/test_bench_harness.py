"""benchmarks/harness.py's pure parts: tables, result files, the yardstick lookup. Nothing here runs a benchmark."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def harness() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import harness

        yield harness
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_markdown_table_aligns_and_marks_missing_cells(harness: ModuleType) -> None:
    text = harness.markdown_table(["name", "acc"], [["a", 91.5], ["b", None]], align="lr")
    assert text.splitlines() == ["| name | acc |", "| --- | ---: |", "| a | 91.5 |", "| b | - |"]


def test_markdown_table_refuses_a_short_row(harness: ModuleType) -> None:
    with pytest.raises(ValueError, match="2 cells"):
        harness.markdown_table(["name", "acc"], [["a"]])


def test_result_json_round_trip_is_atomic(harness: ModuleType, tmp_path: Path) -> None:
    target = tmp_path / "deep" / "result.json"
    harness.write_json(target, {"super_acc_seen": 91.5, "rows": [1, 2]})
    assert harness.read_json(target) == {"super_acc_seen": 91.5, "rows": [1, 2]}
    harness.write_json(target, {"replaced": True})
    assert harness.read_json(target) == {"replaced": True}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]  # no temporary file left behind


def test_read_json_default_and_errors(harness: ModuleType, tmp_path: Path) -> None:
    assert harness.read_json(tmp_path / "missing.json", default={}) == {}
    with pytest.raises(SystemExit, match="missing.json: no such result file"):
        harness.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json: not valid JSON"):
        harness.read_json(tmp_path / "bad.json")


def test_missing_yardstick_is_one_line_naming_the_flag(harness: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as err:
        harness.bench_script("make_protocol.py", tmp_path / "no-bench")
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "make_protocol.py: not found" in message and "--bench DIR" in message


def test_ensure_protocol_reuses_a_finished_split(harness: ModuleType, tmp_path: Path) -> None:
    """A finished split is returned without the yardstick (here: absent, which would otherwise be an error)."""
    data = tmp_path / "tin-0" / "data"
    data.mkdir(parents=True)
    (data / "test_truth.csv").write_text("image,superclass_index,subclass_index\n")
    assert harness.ensure_protocol(data, "tin", 0, bench=tmp_path / "no-bench") == data
    with pytest.raises(SystemExit, match="make_protocol.py: not found"):
        harness.ensure_protocol(data, "tin", 0, bench=tmp_path / "no-bench", done="test_sources.csv")
    assert data.is_dir()  # the yardstick is looked up before anything is removed


def test_after_dashes_drops_the_separator(harness: ModuleType) -> None:
    assert harness.after_dashes(["--", "--epochs", "3"]) == ["--epochs", "3"]
