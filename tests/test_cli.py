"""CLI conventions: --no- forms, defaults in --help, --print-config, predict/evaluate inputs, progress output."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
import typer
import yaml

from conftest import run_cli
from supersub import api
from supersub.errors import SupersubError
from supersub.cli import _train_table, app
from supersub.training.progress import EpochLines, StageProgressBar, progress_callback


def _commands() -> list[tuple[str, Any]]:
    """Every (sub)command of the typer app, as click commands (typer may bundle its own click: duck-typed)."""
    root = typer.main.get_command(app)
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any]] = [("supersub", root)]
    while stack:
        name, cmd = stack.pop()
        if hasattr(cmd, "commands"):
            stack.extend((f"{name} {sub}", c) for sub, c in cmd.commands.items())
        else:
            out.append((name, cmd))
    return out


def _options() -> list[tuple[str, Any]]:
    return [(name, p) for name, cmd in _commands() for p in cmd.params if p.param_type_name == "option"]


def test_every_boolean_flag_has_its_no_form() -> None:
    flags = [(name, p) for name, p in _options() if p.is_flag and p.name != "help"]
    assert len(flags) >= 10
    missing = [f"{name} {p.opts[0]}" for name, p in flags if not any(o.startswith("--no-") for o in p.secondary_opts)]
    assert not missing, missing


def test_help_shows_every_default() -> None:
    silent = [f"{name} {p.opts[0]}" for name, p in _options()
              if not p.required and p.name != "help" and p.default is None and not isinstance(p.show_default, str)]
    assert not silent, silent


def _stdout_of(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    from supersub import cli

    old = cli.console
    cli.console = cli.Console(file=out, width=200)
    try:
        code = run_cli(args)
    finally:
        cli.console = old
    return code, out.getvalue()


def test_print_config_prints_the_resolved_yaml_and_trains_nothing(synth_dir: Path, tmp_path: Path) -> None:
    code, text = _stdout_of(["train", "--data", str(synth_dir), "--print-config", "--epochs", "3",
                             "--backbone", "cnn", "--set", "model.width=8", "--no-skip-bad-images"])
    assert code == 0
    cfg = yaml.safe_load(text)
    assert cfg["optim"]["epochs"] == 3 and cfg["model"]["width"] == 8 and cfg["optim"]["finetune"] == "full"
    assert run_cli(["train", "--data", str(synth_dir)]) == 2  # no --out and no --print-config: one-line error


def test_set_null_unsets_a_key_of_the_yaml(synth_dir: Path, tmp_path: Path) -> None:
    """`--set KEY=null` sets KEY to None (it used to be dropped, so a YAML threshold could not be unset)."""
    exp = tmp_path / "exp.yaml"
    exp.write_text("novelty:\n  score: msp\n  tau_super: 0.5\n  tau_sub: 0.4\ndata:\n  novel_count: 30\n")
    base = ["train", "--data", str(synth_dir), "--print-config", "--backbone", "cnn", "--config", str(exp)]
    code, text = _stdout_of([*base, "--set", "novelty.tau_super=null", "--set", "data.novel_count=~"])
    assert code == 0
    cfg = yaml.safe_load(text)
    assert cfg["novelty"]["tau_super"] is None and cfg["novelty"]["tau_sub"] == 0.4
    assert cfg["data"]["novel_count"] is None
    code, text = _stdout_of(base)  # control: without --set the YAML's values hold
    assert yaml.safe_load(text)["novelty"]["tau_super"] == 0.5


def test_set_null_where_none_is_invalid_is_one_line(synth_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SupersubError, match=r"^config: optim\.lr: cannot be null here \(Input should be a valid"):
        api.resolve_config(None, **{"optim.lr": None})
    assert run_cli(["train", "--data", str(synth_dir), "--out", str(tmp_path / "r"), "--set", "optim.lr=null"]) == 2
    assert not (tmp_path / "r").exists()


def test_verbose_reaches_the_supersub_logger() -> None:
    assert run_cli(["--verbose", "data", "--help"]) == 0
    assert logging.getLogger("supersub").getEffectiveLevel() == logging.DEBUG
    assert run_cli(["--no-verbose", "data", "--help"]) == 0
    assert logging.getLogger("supersub").getEffectiveLevel() == logging.INFO


def _nested_copy(synth_dir: Path, root: Path) -> pd.DataFrame:
    """The test images as root/<superclass>/<subclass>/; novel ones under folder names the run has not seen."""
    truth = pd.read_csv(synth_dir / "test_truth.csv")
    subs = pd.read_csv(synth_dir / "subclass_mapping.csv")["class"].tolist()
    supers = pd.read_csv(synth_dir / "superclass_mapping.csv")["class"].tolist()
    for row in truth.itertuples():
        if row.kind == "seen":
            sup, sub = subs[row.subclass_index].split("/")
        elif row.kind == "novel_sub":
            sup = supers[row.superclass_index]
            sub = f"unseen-{sup}"  # subclass folder names are unique across superclasses
        else:
            sup, sub = "unseen-super", "anything"
        (root / sup / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(synth_dir / "test_images" / row.image, root / sup / sub / row.image)
    return truth


def test_predict_reads_flat_nested_and_csv_inputs_alike(trained_run: Path, synth_dir: Path, tmp_path: Path) -> None:
    flat = api.predict(trained_run, synth_dir / "test_images", names=True, device="cpu")
    _nested_copy(synth_dir, tmp_path / "nested")
    nested = api.predict(trained_run, tmp_path / "nested")
    listing = tmp_path / "list.csv"
    shutil.copytree(synth_dir / "test_images", tmp_path / "imgs")  # a CSV names images relative to its folder
    pd.DataFrame({"image": [f"imgs/{n}" for n in flat["image"]]}).to_csv(listing, index=False)
    from_csv = api.predict(trained_run, listing)
    nested["image"] = nested["image"].map(lambda n: Path(n).name)
    from_csv["image"] = from_csv["image"].map(lambda n: Path(n).name)
    key = ["image", "superclass_index", "subclass_index"]
    for other in (nested, from_csv):
        pd.testing.assert_frame_equal(flat[key].sort_values("image").reset_index(drop=True),
                                      other[key].sort_values("image").reset_index(drop=True))
    tax = api.RunDir.open(trained_run).load_taxonomy()
    supers, subs = [*tax.super_names, "novel"], [*tax.sub_names, "novel"]
    assert (flat["superclass_name"] == [supers[k] for k in flat["superclass_index"]]).all()
    assert (flat["subclass_name"] == [subs[j] for j in flat["subclass_index"]]).all()
    assert run_cli(["predict", str(trained_run), str(listing), "--out", str(tmp_path / "p.csv"), "--names",
                    "--device", "cpu"]) == 0
    assert list(pd.read_csv(tmp_path / "p.csv").columns) == [*key, "superclass_name", "subclass_name"]
    assert run_cli(["predict", str(trained_run), str(listing), "--out", str(tmp_path / "q.csv"),
                    "--device", "tpu9"]) == 2


def test_evaluate_on_a_labelled_nested_folder_matches_the_csv(trained_run: Path, synth_dir: Path,
                                                              tmp_path: Path, capsys) -> None:
    _nested_copy(synth_dir, tmp_path / "nested")
    by_csv = api.evaluate(trained_run, synth_dir / "test_images", synth_dir / "test_truth.csv", save=False)
    by_folder = api.evaluate(trained_run, tmp_path / "nested", out=tmp_path / "report")
    for key in ("super_acc_overall", "sub_acc_overall", "super_acc_unseen", "sub_acc_unseen", "super_n_overall"):
        assert by_folder[key] == pytest.approx(by_csv[key]), key
    assert (tmp_path / "report" / "nested.json").is_file()
    assert run_cli(["evaluate", str(trained_run), "--images", str(tmp_path / "nested"),
                    "--out", str(tmp_path / "cli-report")]) == 0
    assert (tmp_path / "cli-report" / "nested.json").is_file()
    # the command says where it saved the metrics
    assert f"saved {tmp_path / 'cli-report' / 'nested.json'} and" in capsys.readouterr().out


def test_the_train_table_lists_every_calibration_model_and_the_logged_accuracy():
    from rich.console import Console

    from supersub.cli import _train_table

    stage = {"epochs_run": 4, "val_loss": 0.5, "seconds_per_epoch": 0.02}
    summary = {"seconds": 9.0, "data": "d", "calibration": {**stage, "held_out_subclasses": ["x"]},
               **{f"calibration-{k}": stage for k in range(2, 8)}, "final": {**stage, "val_acc_super": 90.0,
                                                                              "val_acc_sub": 83.33},
               "thresholds": {"score": "vim+maxlogit", "tau_super": -192.3, "tau_sub": 4.1}}
    console = Console(width=200, record=True)
    console.print(_train_table(summary, Path("run")))
    text = console.export_text()
    assert all(f"calibration-{k} " in text for k in range(2, 8)) and "calibration " in text
    assert "83.33" in text and "tau_super=-192.3" in text and "mean over the calibration models" in text
    assert "tau_super: on the final model" not in text
    summary["calibration"]["super_protocol"] = "val"  # the superclass cut was taken on the final model
    console = Console(width=200, record=True)
    console.print(_train_table(summary, Path("run")))
    assert "tau_super: on the final model" in console.export_text()


def test_evaluate_names_every_unmatched_folder_and_strict_refuses_them(
        trained_run: Path, synth_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`Dog/` for `dog/` used to become novel truth silently (and changed the metrics)."""
    root = tmp_path / "nested"
    _nested_copy(synth_dir, root)
    sup = sorted(p.name for p in root.iterdir() if not p.name.startswith("unseen"))[0]
    (root / sup).rename(root / sup.capitalize())  # a seen superclass under another case
    other = next(p for p in sorted(root.iterdir()) if not p.name.startswith("unseen") and p.name != sup.capitalize())
    sub = next(p for p in sorted(other.iterdir()) if not p.name.startswith("unseen"))
    sub.rename(other / (sub.name + "x"))  # a seen subclass with a typo
    with caplog.at_level(logging.WARNING, logger="supersub"):
        api.evaluate(trained_run, root, save=False)
    lines = [r.getMessage() for r in caplog.records if "matches no class of the run" in r.getMessage()]
    unmatched = {sup.capitalize(), f"{other.name}/{sub.name}x", "unseen-super",
                 *(f"{p.name}/unseen-{p.name}" for p in root.iterdir() if (p / f"unseen-{p.name}").is_dir())}
    assert sorted(line.split("folder ")[1].split(" matches")[0].strip("'") for line in lines) == sorted(unmatched)
    assert any(f"'{sup.capitalize()}' matches no class" in line and "a novel superclass" in line
               and f"closest training name: '{sup}'" in line for line in lines), lines
    assert any(f"'{other.name}/{sub.name}x'" in line and f"a novel subclass of '{other.name}'" in line
               and f"closest training name: '{sub.name}'" in line for line in lines), lines
    with pytest.raises(SupersubError, match="matches no class of the run.*--strict refuses unknown folders"):
        api.evaluate(trained_run, root, save=False, strict=True)
    assert run_cli(["evaluate", str(trained_run), "--images", str(root), "--strict"]) == 2


def test_progress_bar_names_the_stage_and_counts_epochs_from_one() -> None:
    bar = StageProgressBar("calibration")
    bar._trainer = SimpleNamespace(max_epochs=1)
    assert bar._get_train_description(0).strip() == "calibration epoch 1/1"
    assert isinstance(progress_callback("final", True, tty=True), StageProgressBar)
    assert isinstance(progress_callback("final", True, tty=False), EpochLines)
    assert progress_callback("final", False) is None


def test_epoch_lines_log_one_line_per_epoch(caplog: pytest.LogCaptureFixture) -> None:
    lines = EpochLines("final")
    trainer = SimpleNamespace(is_global_zero=True, max_epochs=3, current_epoch=0,
                              callback_metrics={"val_loss": torch.tensor(0.5), "train_loss": torch.tensor(0.75)})
    with caplog.at_level(logging.INFO, logger="supersub"):
        for epoch in range(3):
            trainer.current_epoch = epoch
            lines.on_train_epoch_start(trainer, None)
            lines.on_train_epoch_end(trainer, None)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and messages[-1].startswith("final epoch 3/3: train_loss=0.75 val_loss=0.5 (")


def test_train_ends_with_a_table() -> None:
    summary = {"seconds": 3.5, "calibration": {"epochs_run": 2, "val_loss": 0.25, "seconds_per_epoch": 1.0},
               "final": {"epochs_run": 2, "val_loss": 0.5, "seconds_per_epoch": 1.5, "val_acc_super": 90.0,
                         "val_acc_sub": 70.0},
               "thresholds": {"score": "msp", "tau_super": 0.5, "tau_sub": 0.25}}
    out = io.StringIO()
    from rich.console import Console

    Console(file=out, width=120).print(_train_table(summary, Path("runs/x")))
    text = out.getvalue()
    assert "trained runs/x in 3.5s" in text and "tau_super=0.5" in text
    rows = [line for line in text.splitlines() if line.lstrip("│ ").startswith(("calibration", "final"))]
    assert len(rows) == 2 and "90.0" in rows[1] and "70.0" in rows[1]


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me\n")
    with pytest.raises(SupersubError, match="pass --overwrite"):
        api.demo(tmp_path)
    with pytest.raises(SupersubError, match="not a supersub demo folder"):
        api.demo(tmp_path, overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me\n"
    assert run_cli(["demo", "--out", str(tmp_path), "--overwrite"]) == 2


def test_train_help_fits_80_columns_in_panels_with_whole_option_names() -> None:
    """At 80 columns the help was 276 lines with names cut ("--trainable-stag...") and in-house words."""
    import os
    import subprocess
    import sys

    import typer.main

    from supersub.cli import app

    env = {**os.environ, "COLUMNS": "80", "TERMINAL_WIDTH": "80", "NO_COLOR": "1"}
    text = subprocess.run([sys.executable, "-m", "supersub.cli", "train", "--help"], env=env, capture_output=True,
                          text=True, timeout=120, check=True).stdout
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80 and len(lines) < 240, len(lines)
    assert "\u2026" not in text  # rich's ellipsis: a cut name or word
    for panel in ("Data", "Model", "Training", "Novelty detection", "Hardware", "Settings and the run folder"):
        assert f"\u256d\u2500 {panel} " in text, panel
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    names = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    tokens = set(text.split())
    missing = [name for name in names if name not in tokens]
    assert not missing, missing
    for jargon in ("seed 00", "Lightning", "KL ", "PtR"):
        assert jargon not in text, jargon
