"""What the docs say the defaults are is what ``TrainConfig()`` holds: the guide's configuration table, key by key,
and the sentences of the guide and the README that restate a default (input size, fine-tuning regime, score)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from supersub.config import TrainConfig
from supersub.models.weight_sources import WEIGHT_SOURCES

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "docs" / "guide.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
ROW = re.compile(r"^\| `([a-z_]+\.[a-z_]+)`(.*?) \| (.*?) \| .*\|$", re.M)
# documented words for a value that TrainConfig() resolves: (what the table says, what the code holds)
RESOLVED = {"optim.finetune": "frozen", "model.pretrained": True, "novelty.calibration_folds": 7}
NOT_A_VALUE = {"augment.*"}


def _defaults() -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, values in TrainConfig().model_dump(mode="json").items():
        if isinstance(values, dict):
            flat.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            flat[section] = values
    return flat


def _split(text: str, separators: tuple[str, ...] = (", ", " / ")) -> list[str]:
    """``text`` cut at the separators outside brackets: "10, 0.05, (1, 1)" -> ["10", "0.05", "(1, 1)"]."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        depth += text[i] in "([{"
        depth -= text[i] in ")]}"
        sep = next((s for s in separators if depth == 0 and text.startswith(s, i)), None)
        if sep:
            parts.append(text[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    return [*parts, text[start:]]


def _value(text: str) -> Any:
    text = text.strip().strip("`")
    words = {"null": None, "true": True, "false": False, "{}": {}, "unset": None}
    if text in words:
        return words[text]
    if text[:1] in "[(":
        inner = text[1:-1]
        return [_value(x) for x in _split(inner, (",",))] if inner else []
    if re.fullmatch(r"\d+/\d+", text):
        a, b = text.split("/")
        return int(a) / int(b)
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text.replace("\\|", "|")


def _default_tables() -> str:
    """The rows of the guide's tables whose second column is headed "Default"."""
    rows, header = [], ""
    for line in GUIDE.splitlines():
        if not line.startswith("|"):
            header = ""
        elif not header:
            header = line
        elif re.match(r"^\| *Key *\| *Default *\|", header, flags=re.I) and not line.startswith("|---"):
            rows.append(line)
    return "\n".join(rows)


def _documented() -> dict[str, Any]:
    """``{key: documented default}`` from the guide's table rows ``| `section.a`, `b` | 1, 2 | meaning |``."""
    table: dict[str, Any] = {}
    for first, more, values in ROW.findall(_default_tables()):
        section = first.split(".")[0]
        keys = [first] + [f"{section}.{k.strip(' `/')}" for k in re.split(r",|/", more) if k.strip(" `/")]
        shown = re.sub(r"\s*\(= `?(\w+)`?\)", "", values)  # "auto (= frozen)": auto, resolved below
        parts = _split(shown)
        if len(parts) == 1:
            parts = parts * len(keys)
        assert len(parts) == len(keys), f"guide row {first}: {len(keys)} keys but {len(parts)} values ({values})"
        table.update({k: _value(v) for k, v in zip(keys, parts)})
    return table


def test_the_guide_table_states_every_default_as_trainconfig_holds_it():
    code, documented = _defaults(), _documented()
    assert len(documented) >= 70, sorted(documented)  # the table was read, not skipped
    wrong = []
    for key, shown in documented.items():
        if key not in code:
            wrong.append(f"{key}: documented but not a config key")
            continue
        expected = code[key]
        if key in RESOLVED:
            assert expected == RESOLVED[key], f"{key}: TrainConfig() holds {expected!r}; update RESOLVED and the docs"
            continue
        if isinstance(expected, float) and isinstance(shown, (int, float)):
            ok = abs(expected - shown) < 1e-12
        else:
            ok = shown == expected
        if not ok:
            wrong.append(f"{key}: guide says {shown!r}, TrainConfig() holds {expected!r}")
    assert not wrong, "\n".join(wrong)
    undocumented = sorted(k for k in code if k not in documented and not k.startswith("augment."))
    assert len(undocumented) < 10, undocumented


def test_the_finetune_row_names_the_regime_auto_becomes():
    assert f"`optim.finetune` | `auto` (= `{TrainConfig().optim.finetune}`)" in GUIDE
    assert f"`optim.finetune: auto` (the default) resolves to `{TrainConfig().optim.finetune}`" in GUIDE


@pytest.mark.parametrize("text,where", [
    ("null: {size} for the bundled backbones", GUIDE),
    ("Their default input size is {size} px", GUIDE),
    ("images\nupsampled to {size} px inside the model", README),
])
def test_sentences_state_the_bundled_input_size(text, where):
    size = WEIGHT_SOURCES[TrainConfig().model.backbone].default_size
    assert text.format(size=size).replace("\n", " ") in where.replace("\n", " ")


def test_sentences_state_the_default_score():
    score = TrainConfig().novelty.score
    assert f"the default `{score}`" in GUIDE and f"novelty score **`{score}`**" in README
    assert "`knn`, the default" not in GUIDE
