"""Ctrl-C: a real SIGINT at an epoch and during threshold fitting ends ``supersub train`` with one line and exit
130, leaves a run that never looks finished, and ``--resume`` then gives the uninterrupted run's thresholds and
predictions byte for byte.

The interrupt is sent on an event, not after a sleep: the child process runs the real entry point with one hook
patched in (tests/pause_driver.py: at the end of an epoch of the final model, or right after the open-set head file is
written) that writes a flag file and waits; the test sends SIGINT once the flag exists.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import supersub.api as api
from supersub.run_dir import RunDir
from conftest import run_cli

ARGS = ["--epochs", "3", "--image-size", "16", "--batch-size", "8", "--no-progress", "--backbone", "cnn",
        "--set", "model.width=4", "--set", "model.depth=[1]", "--score", "msp", "--set", "optim.patience=5"]

DRIVER = Path(__file__).with_name("pause_driver.py")  # runs the CLI, pausing at a chosen event
PAUSE = {"epoch": "epoch-end:final:1", "thresholds": "thresholds"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0"}


def _supersub(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from supersub.cli import main; main()", *args], env=_env(),
                          capture_output=True, text=True, timeout=280)


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--novel-data", str(data / "novel_images"), *ARGS]


@pytest.fixture(scope="module")
def reference(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    done = _supersub(_train_args(synth_dir, out))
    assert done.returncode == 0, done.stderr
    return out


def _interrupt(where: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``supersub ARGS`` until the hook ``where`` pauses it, then send it a real SIGINT."""
    flag = tmp_path / "paused.flag"
    # a job started with & from a non-interactive shell (nohup, CI wrappers) inherits SIGINT *ignored*; a person at
    # a terminal has it delivered: give the child the terminal's disposition, or the test measures the shell
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(flag), PAUSE[where], *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flag.exists(), f"the hook was never reached: {proc.poll()} {proc.communicate()[1][-2000:]}"
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # a child that ignores the interrupt must not outlive the test, paused forever
        out, err = proc.communicate()
        pytest.fail(f"SIGINT did not stop the run within 120 s: {err[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _one_interrupted_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "interrupted" in line.lower()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("where", ["epoch", "thresholds"])
def test_sigint_stops_with_one_line_and_resume_gives_the_uninterrupted_run(
        where: str, synth_dir: Path, reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cut = tmp_path / "cut"
    args = _train_args(synth_dir, cut)
    stopped = _interrupt(where, args, tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    line = _one_interrupted_line(stopped.stderr)
    assert line.startswith("interrupted; continue with: supersub train ") and line.endswith(" --resume"), line
    # never looks finished: no summary, and predict refuses in one line instead of using half a calibration
    assert not (cut / "metrics.json").exists()
    if where == "epoch":
        assert not (cut / "open_set_head.pt").exists() and not (cut / "model.pt").exists()
    code = run_cli(["predict", str(cut), str(synth_dir / "test_images"), "--out", str(tmp_path / "p.csv")])
    assert code == 2 and "did not finish training" in capsys.readouterr().err
    # without --resume: the checkpoints are pointed out, nothing is touched
    before = sorted((p.relative_to(cut), p.stat().st_mtime_ns) for p in cut.rglob("*") if p.is_file())
    assert run_cli(args) == 2
    assert "holds an interrupted run" in capsys.readouterr().err.splitlines()[-1]
    assert sorted((p.relative_to(cut), p.stat().st_mtime_ns) for p in cut.rglob("*") if p.is_file()) == before

    resumed = _supersub(shlex.split(line.split("continue with: ", 1)[1])[1:])  # the command the line gave
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: stage" in resumed.stderr, resumed.stderr
    if where == "epoch":  # interrupted at the end of its 2nd epoch, before that epoch's checkpoint (Lightning
        # runs the checkpoint callback last): the final model continues with its 2nd epoch
        assert "stage final from epoch 2 of 3 (1 done" in resumed.stderr, resumed.stderr
    else:  # every stage had finished: their models are reused, not trained again
        assert "stage final was finished" in resumed.stderr, resumed.stderr
    assert RunDir.open(cut).load_thresholds() == RunDir.open(reference).load_thresholds()
    preds = []
    for run in (reference, cut):
        out = tmp_path / f"{run.parent.name}-{run.name}.csv"
        api.predict(run, synth_dir / "test_images", out=out, probs=True)
        preds.append(out.read_bytes())
    assert preds[0] == preds[1]


def test_the_continue_command_resumes_train_and_repeats_the_others() -> None:
    from supersub.cli import continue_command

    assert continue_command(["train", "--data", "d", "--out", "r r", "--overwrite"]) == \
        "supersub train --data d --out 'r r' --resume"
    assert continue_command(["-v", "pretrain", "--data", "d", "--out", "c.pt", "--resume"]) == \
        "supersub -v pretrain --data d --out c.pt --resume"
    assert continue_command(["predict", "run", "imgs", "--out", "p.csv"]) == "supersub predict run imgs --out p.csv"
