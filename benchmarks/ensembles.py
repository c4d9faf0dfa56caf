#!/usr/bin/env python3
"""Benchmark: seed 000's ensembles against the single default model, on the fixed open-set protocols.

    python benchmarks/ensembles.py [--variants loso-reptile,tin] [--seed 0] [--configs default,bagging,xgboost,moe]
                                   [--rescore bagging=vim+mi,vim+expected-entropy] [--work bench-out] [--force]

Each configuration is one `benchmarks/protocol.py --name NAME -- <train flags>` run (supersub train -> predict
--probs -> ../shared/bench/score.py), one at a time; a run whose result.json exists is reused unless --force.
`--rescore CONFIG=S1,S2` then re-chooses that run's novelty score with `supersub calibrate RUN --score S`
(same models, no retraining), predicts and scores again, and finally restores the run's own score. Prints one
table: accuracy overall/seen/unseen and cross-entropy per level, and the training wall time of each run.

Committed table: docs/results/ensembles.md, from ``python benchmarks/ensembles.py --variants loso-reptile --seed 0
--rescore bagging=vim+mi,mi,vim+expected-entropy`` and ``... --variants tin --seed 0 --rescore bagging=vim+mi``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import DEFAULT_BENCH, HERE, read_json, run_score, score, supersub_cmd, timed_run
CONFIGS: dict[str, list[str]] = {
    "default": [],
    "bagging": ["--approach", "bagging", "--members", "5"],
    "xgboost": ["--head", "xgboost"],
    "moe": ["--approach", "moe"],
}


def protocol_run(variant: str, seed: int, name: str, work: Path, bench: Path, force: bool) -> Path:
    folder = work / f"{variant}-{seed}" / name
    if force or not (folder / "result.json").is_file():
        timed_run([sys.executable, str(HERE / "protocol.py"), "--variant", variant, "--seed", str(seed),
                   "--work", str(work), "--bench", str(bench), "--name", name, "--", *CONFIGS[name]])
    return folder


def rescore(folder: Path, data: Path, bench: Path, novelty_score: str) -> dict:
    """Calibrate the trained run with ``novelty_score``, predict and score; returns the scorer's figures."""
    tag = novelty_score.replace("+", "_")
    pred = folder / f"predictions-{tag}.csv"
    timed_run(supersub_cmd("calibrate", str(folder / "run"), "--score", novelty_score))
    timed_run(supersub_cmd("predict", str(folder / "run"), str(data / "test_images"), "--out", str(pred), "--probs",
                           "--overwrite"))
    return score(data, pred, folder / f"score-{tag}.json", bench)


def row(variant: str, name: str, r: dict, train_s: float | None) -> str:
    cells = [f"{variant} s{r.get('seed', 0)}", name]
    for level in ("super", "sub"):
        cells += [str(r.get(f"{level}_acc_{k}")) for k in ("overall", "seen", "unseen")]
    cells += [f"{r[f'{level}_ce']:.3f}" if r.get(f"{level}_ce") is not None else "-" for level in ("super", "sub")]
    cells.append(f"{train_s / 60:.1f} min" if train_s else "(same run)")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="loso-reptile,tin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--rescore", action="append", default=[], help="CONFIG=SCORE1,SCORE2 (repeatable)")
    ap.add_argument("--work", type=Path, default=Path("bench-out"))
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--force", action="store_true", help="retrain runs that already have a result")
    a = ap.parse_args()
    rescores = {spec.split("=")[0]: spec.split("=")[1].split(",") for spec in a.rescore}
    lines = ["| protocol | configuration | super overall | super seen | super unseen | sub overall | sub seen | "
             "sub unseen | super CE | sub CE | train |", "|" + "---|" * 11]
    for variant in a.variants.split(","):
        data = a.work / f"{variant}-{a.seed}" / "data"
        for name in a.configs.split(","):
            folder = protocol_run(variant, a.seed, name, a.work, a.bench, a.force)
            result = read_json(folder / "result.json")
            own_score = run_score(folder / "run")
            lines.append(row(variant, f"{name} ({own_score})", result, result["seconds"]["train"]))
            for novelty in rescores.get(name, []):
                scored = rescore(folder, data, a.bench, novelty)
                lines.append(row(variant, f"{name}, calibrate --score {novelty}", scored, None))
            if rescores.get(name):
                timed_run(supersub_cmd("calibrate", str(folder / "run"), "--score", own_score))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
