"""competition_metrics must match the official scorer's definitions, keys and rounding exactly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from supersub.errors import SupersubError
from supersub.metrics import competition_metrics, format_metrics_table, metrics_rich_table

# the official scorer sits beside the repository, in ../shared/bench: found from this checkout, wherever it is
SCORE_PY = Path(__file__).resolve().parents[2] / "shared" / "bench" / "score.py"

# 5 images; superclass novel = 2, subclass novel = 3
TRUE_SUPER = [0, 1, 2, 2, 1]
PRED_SUPER = [0, 0, 2, 1, 1]
TRUE_SUB = [0, 2, 3, 3, 1]
PRED_SUB = [0, 1, 3, 3, 1]
SUPER_PROBS = np.array(
    [[0.5, 0.3, 0.2], [0.5, 0.25, 0.25], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.1, 0.8, 0.1]]
)


def test_hand_computed_accuracies_counts_and_ce() -> None:
    m = competition_metrics(TRUE_SUPER, TRUE_SUB, PRED_SUPER, PRED_SUB, 2, 3, super_probs=SUPER_PROBS)
    assert m == {
        # super: hits T F T F T -> 3/5; seen rows 0,1,4 -> 2/3; unseen rows 2,3 -> 1/2
        "super_acc_overall": 60.0, "super_n_overall": 5,
        "super_acc_seen": 66.67, "super_n_seen": 3,
        "super_acc_unseen": 50.0, "super_n_unseen": 2,
        # p_true = .5, .25, 1, 0 (floored to 1e-15), .8: (ln2 + ln4 + 0 + 15 ln10 - ln.8) / 5
        "super_ce": 7.3683,
        # sub: hits T F T T T -> 4/5; seen rows 0,1,4 -> 2/3; unseen rows 2,3 -> 2/2
        "sub_acc_overall": 80.0, "sub_n_overall": 5,
        "sub_acc_seen": 66.67, "sub_n_seen": 3,
        "sub_acc_unseen": 100.0, "sub_n_unseen": 2,
        "sub_ce": None,
    }


def test_empty_subset_is_none_and_tensors_are_accepted() -> None:
    m = competition_metrics(
        torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2, 1,
        sub_probs=torch.tensor([[0.25, 0.75], [0.5, 0.5]]),
    )
    assert m["super_acc_unseen"] is None and m["super_n_unseen"] == 0
    assert m["super_acc_seen"] == 50.0 and m["super_acc_overall"] == 50.0
    assert m["sub_acc_seen"] == 50.0
    assert m["sub_ce"] == round((np.log(4) + np.log(2)) / 2, 4) == 1.0397


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"true_super": [0, 1, 9]}, "true_super: row 2 has class 9"),
        ({"pred_sub": [0, 1]}, "expected 3 of each"),
        ({"super_probs": np.ones((3, 2))}, "super_probs: expected shape (3, 3)"),
        ({"sub_probs": np.full((3, 3), np.nan)}, "non-finite"),
        ({"pred_super": [0.5, 1, 2]}, "pred_super: expected integer"),
    ],
)
def test_bad_input_raises_one_line_error(kwargs: dict, fragment: str) -> None:
    args = {"true_super": [0, 1, 2], "true_sub": [0, 1, 2], "pred_super": [0, 1, 2], "pred_sub": [0, 1, 2]}
    args.update(kwargs)
    with pytest.raises(SupersubError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        competition_metrics(**args, novel_super=2, novel_sub=2)


def test_no_images_is_an_error() -> None:
    with pytest.raises(SupersubError, match="no images"):
        competition_metrics([], [], [], [], 2, 3)


def test_table_text_is_the_scorers_layout() -> None:
    m = competition_metrics(TRUE_SUPER, TRUE_SUB, PRED_SUPER, PRED_SUB, 2, 3, super_probs=SUPER_PROBS)
    assert format_metrics_table(m).splitlines() == [
        "              CE   overall    seen  unseen   (accuracy %, n = 5)",
        "super      7.368      60.0   66.67    50.0",
        "sub          n/a      80.0   66.67   100.0",
    ]


def test_rich_table_has_the_same_cells() -> None:
    m = competition_metrics(TRUE_SUPER, TRUE_SUB, PRED_SUPER, PRED_SUB, 2, 3, super_probs=SUPER_PROBS)
    console = Console(record=True, width=100)
    console.print(metrics_rich_table(m, title="held-out"))
    text = console.export_text()
    assert "held-out" in text and "n = 5" in text
    rows = [line.split() for line in text.splitlines() if line.strip("│ ").startswith(("super", "sub"))]
    cells = [[c for c in row if c != "│"] for row in rows]
    assert cells == [["super", "7.368", "60.0", "66.67", "50.0"], ["sub", "n/a", "80.0", "66.67", "100.0"]]


# ---- cross-check against the official scorer ------------------------------------------------------
def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _random_case(seed: int, n: int = 60, k: int = 3, m: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts, tb = rng.integers(0, k + 1, n), rng.integers(0, m + 1, n)
    ts[0], tb[0] = k, m  # at least one novel truth per level
    keep = rng.random(n) < 0.6
    ps = np.where(keep, ts, rng.integers(0, k + 1, n))
    pb = np.where(keep, tb, rng.integers(0, m + 1, n))
    sp = rng.dirichlet(np.full(k + 1, 0.3), n)
    bp = rng.dirichlet(np.full(m + 1, 0.3), n)
    sp[1, ts[1]] = 0.0  # exercises the 1e-15 floor
    return {"ts": ts, "tb": tb, "ps": ps, "pb": pb, "sp": sp, "bp": bp}


@pytest.mark.skipif(not SCORE_PY.is_file(),
                    reason=f"official scorer not found at {SCORE_PY} (../shared/bench/score.py beside the repository)")
@pytest.mark.parametrize("seed, with_probs", [(0, True), (1, True), (2, False)])
def test_matches_official_scorer(tmp_path: Path, seed: int, with_probs: bool) -> None:
    c = _random_case(seed)
    k, m = c["sp"].shape[1] - 1, c["bp"].shape[1] - 1
    names = [f"img_{i}.jpg" for i in range(len(c["ts"]))]
    _write_csv(tmp_path / "truth.csv", ["image", "superclass_index", "subclass_index"],
               [[nm, int(a), int(b)] for nm, a, b in zip(names, c["ts"], c["tb"])])
    header = ["image", "superclass_index", "subclass_index"]
    if with_probs:
        header += [f"super_prob_{i}" for i in range(k + 1)] + [f"sub_prob_{j}" for j in range(m + 1)]
    rows = []
    for i, nm in enumerate(names):
        row: list[object] = [nm, int(c["ps"][i]), int(c["pb"][i])]
        if with_probs:
            row += [repr(float(v)) for v in c["sp"][i]] + [repr(float(v)) for v in c["bp"][i]]
        rows.append(row)
    _write_csv(tmp_path / "pred.csv", header, rows)
    out_json = tmp_path / "score.json"
    proc = subprocess.run(
        [sys.executable, str(SCORE_PY), str(tmp_path / "truth.csv"), str(tmp_path / "pred.csv"),
         "--novel-super", str(k), "--novel-sub", str(m), "--json", str(out_json)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    ours = competition_metrics(
        c["ts"], c["tb"], c["ps"], c["pb"], k, m,
        c["sp"] if with_probs else None, c["bp"] if with_probs else None,
    )
    assert ours == json.loads(out_json.read_text())
    assert (ours["super_ce"] is None) is (not with_probs)
    assert format_metrics_table(ours) == proc.stdout.rstrip("\n")
