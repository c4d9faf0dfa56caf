"""Issue 27: the config-backed options of train, pretrain and calibrate are declared once (supersub.cli_options),
the README's flag table agrees with that declaration, and ``--help`` builds one default config, not one an option."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import typer.main

from supersub.cli import app
from supersub.cli_options import (CALIBRATE_FLAGS, PRETRAIN_FLAGS, README_EXTRAS, TRAIN_FLAGS, config_defaults,
                                  flag_overrides, readme_table)
from supersub.errors import SupersubError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# train's own options: the input, the run folder and how the run goes, none of them a config key
TRAIN_OWN = {"--data", "--out", "--extend", "--config", "--set", "--print-config", "--overwrite", "--resume", "--help"}


def readme_flags(text: str) -> dict[str, tuple[str, ...]]:
    """flag -> config keys, as the README's table of train options lists them (a key cell without a dotted key,
    such as '--config FILE | YAML experiment file', maps to ())."""
    start = text.index("| Flag | Key | Flag | Key |")
    rows = [line for line in text[start:].split("\n\n")[0].splitlines()[2:] if line.startswith("|")]
    found: dict[str, tuple[str, ...]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for flag_cell, key_cell in zip(cells[::2], cells[1::2]):
            keys = tuple(re.findall(r"`([a-z_]+(?:\.[a-z_]+)*)`", key_cell))
            for flag in re.findall(r"`(--[a-z-]+)", flag_cell):
                if not flag.startswith("--no-"):
                    found[flag] = keys
    return found


def test_the_readme_table_is_the_generated_one() -> None:
    assert readme_table() in README, "README.md's flag table differs from supersub.cli_options.readme_table()"


def test_the_readme_lists_every_declared_flag_with_its_keys_and_nothing_else() -> None:
    listed = readme_flags(README)
    declared = {flag.flag: flag.keys for flag in TRAIN_FLAGS}
    missing = {f: k for f, k in declared.items() if listed.get(f) != k}
    assert not missing, f"declared but not in the README with these keys: {missing}"
    extra = {f: k for f, k in listed.items() if k and f not in declared}
    assert not extra, f"in the README's table but not declared: {extra}"
    assert {f for f, k in listed.items() if not k} == {f for cell, _ in README_EXTRAS for f in re.findall(r"--[a-z-]+", cell)}


@pytest.mark.parametrize("edit", [
    lambda t: t.replace("| `--lr` | `optim.lr` |", "| `--lr` | `optim.learning_rate` |"),
    lambda t: t.replace("`--oe` | `novelty.oe`", " | "),
    lambda t: t.replace("| `--print-config` |", "| `--print-config` | | `--dropout` | `model.dropout` |"),
])
def test_the_table_check_fails_on_a_changed_readme(edit: Callable[[str], str]) -> None:
    declared = {flag.flag: flag.keys for flag in TRAIN_FLAGS}
    changed = readme_flags(edit(README))
    assert {f: k for f, k in changed.items() if k} != declared


def _options(command: str) -> set[str]:
    params = typer.main.get_command(app).commands[command].params  # type: ignore[attr-defined]
    return {o for p in params for o in p.opts if o.startswith("--")}


def test_train_declares_each_config_option_in_the_table() -> None:
    assert _options("train") - TRAIN_OWN == {flag.flag for flag in TRAIN_FLAGS}
    assert {flag.flag for flag in PRETRAIN_FLAGS} <= _options("pretrain")
    assert {flag.flag for flag in CALIBRATE_FLAGS} == _options("calibrate") - {"--help"}


def test_every_declared_key_is_a_config_key() -> None:
    for flag in (*TRAIN_FLAGS, *PRETRAIN_FLAGS, *CALIBRATE_FLAGS):
        for key in flag.keys:
            node = config_defaults()
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{flag.flag}: {key} is no config key"
                node = node[part]


def test_parsed_values_become_dotted_keys() -> None:
    values = {flag.name: [] if flag.type is list else None for flag in TRAIN_FLAGS}
    assert flag_overrides(TRAIN_FLAGS, values) == {}
    values.update(epochs=3, weights=Path("w.pt"), novel_share="0.3,0.7", score_option=["k=5"], ptr=False)
    assert flag_overrides(TRAIN_FLAGS, values) == {
        "model.weights": "w.pt", "optim.epochs": 3, "ptr.enabled": False, "novelty.score_options": {"k": 5},
        "novelty.novel_share_super": 0.3, "novelty.novel_share_sub": 0.7}
    with pytest.raises(SupersubError, match=r"--recall '0.9': expected two numbers SUPER,SUB, e.g. --recall 0.95,0.5"):
        flag_overrides(TRAIN_FLAGS, {**values, "recall": "0.9"})
    with pytest.raises(SupersubError, match=r"--score-option 'k': expected KEY=VALUE, e.g. k=50"):
        flag_overrides(TRAIN_FLAGS, {**values, "score_option": ["k"]})


def test_importing_the_cli_builds_one_default_config() -> None:
    """Each option's --help default used to build and validate a whole config: 39 at every `supersub` start."""
    script = """
import supersub.config as c
built = []
init, validate = c.TrainConfig.__init__, c.TrainConfig.model_validate.__func__
c.TrainConfig.__init__ = lambda self, *a, **k: (built.append(1), init(self, *a, **k))[1]
c.TrainConfig.model_validate = classmethod(lambda cls, *a, **k: (built.append(1), validate(cls, *a, **k))[1])
import supersub.cli
print(len(built))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert out.split() == ["1"]


def test_forwarded_api_verbs_keep_their_names_keywords_and_docs() -> None:
    """api.evaluate and the like forward to the pipeline function instead of restating its signature."""
    import inspect

    from supersub import api

    for name in ("discover", "evaluate", "report", "export", "demo", "experiment", "compare"):
        verb = getattr(api, name)
        assert verb.__name__ == name and verb.__module__ == "supersub.api" and verb.__doc__, name
    assert list(inspect.signature(api.evaluate).parameters) == ["run_dir", "images", "labels", "skip_bad", "save",
                                                                "out", "device", "strict"]
