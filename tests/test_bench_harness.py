"""benchmarks/harness.py's pure parts: tables, result files, the yardstick lookup, the call wrappers and memory
phases; scale.py's phase table. Nothing here runs a benchmark."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


def test_wrap_calls_scopes_each_call_and_keeps_a_classmethod(harness: ModuleType) -> None:
    calls: list[str] = []

    @contextmanager
    def scope() -> Iterator[None]:
        calls.append("in")
        yield
        calls.append("out")

    class Owner:
        @classmethod
        def make(cls, x: int) -> tuple[type, int]:
            return cls, x

    class Child(Owner):
        pass

    assert harness.wrap_calls(Owner, "make", scope)
    assert Child.make(3) == (Child, 3) and calls == ["in", "out"]  # still a classmethod: the subclass stays itself
    assert not harness.wrap_calls(Owner, "renamed_away", scope)  # an older checkout: nothing wrapped, no error


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the memory phases read Linux's /proc")
def test_phase_peaks_give_a_nested_phase_its_own_peak(harness: ModuleType) -> None:
    peaks = harness.PhasePeaks(after="inner")
    with peaks.phase("outer"):
        with peaks.phase("inner"):
            block = bytearray(96 * 2**20)  # written (zeroed), so resident
            del block
        with peaks.phase("later"):
            pass
    result = peaks.result()
    phases = {"other", "outer", "inner", "later"}
    assert set(result) == phases | {f"{p} file" for p in phases} | {f"{p} s" for p in phases} | {"after inner"}
    assert all(result[f"{p} s"] >= 0 for p in phases)
    assert result["inner"] - result["outer"] > 64  # the outer phase resumed with a fresh mark
    assert result["after inner"] < result["inner"] - 64  # the inner phase's own peak is not "after" it


def test_scale_phase_table_gives_growth_per_image_from_the_smallest_size(harness: ModuleType) -> None:
    import scale

    def row(n: int, after: float) -> dict:
        return {"command": "train", "images": n, "seconds": 1.0, "peak_rss_mib": 2000.0,
                "phase_peak_mib": {"decode": 900.0, "extract": 2000.0, "fits": after, "after extract": after}}

    sides = [{"label": "phases", "rows": [row(1000, 1700.0), row(10000, 1700.0 + 9000 * 7 / 1024),
                                          {"command": "predict", "images": 1000, "seconds": 1.0, "peak_rss_mib": 1.0}]},
             {"label": "old", "rows": [{"command": "train", "images": 1000, "seconds": 1.0, "peak_rss_mib": 1.0}]}]
    lines = scale.phase_table(sides).splitlines()
    assert len(lines) == 4 and "feature row 7.0" in lines[0]  # header, rule, one row per size measured by phase
    assert lines[2].startswith("| phases | 1000 | 900 | 2000 | - | 1700 | - | - | - | 1700 | - |")
    assert lines[3].endswith("| 7.0 |")


def test_a_run_counts_as_calibrated_by_its_head_file_new_or_old(harness: ModuleType, tmp_path: Path) -> None:
    """Benchmarks reuse finished runs: the check must know today's open_set_head.pt, not only thresholds.json
    (after issue 27 it looked for the old file alone and retrained every recalibrated run)."""
    assert not harness.is_calibrated(tmp_path)
    (tmp_path / "thresholds.json").write_text("{}")
    assert harness.is_calibrated(tmp_path)
    (tmp_path / "thresholds.json").unlink()
    (tmp_path / "open_set_head.pt").write_bytes(b"")
    assert harness.is_calibrated(tmp_path)
