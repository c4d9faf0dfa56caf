"""Reliability: every bad input is one ``error:`` line and exit code 2 from the real CLI entry point.

The CLI runs in-process through ``supersub.cli.main`` (the function that maps errors to exit codes), and
once as a real subprocess. Training is tiny (16 px images, a 4-channel one-block CNN, one epoch).
The table in docs/reliability.md lists every case with the test that covers it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from rich.errors import MarkupError

from supersub.data.cache import decode_images
from supersub.data.records import ImageRecord
from supersub.data.splits import holdout_subclasses, stratified_split
from supersub.data.synth import write_synth
from supersub.errors import SupersubError
from supersub.io import write_atomic, write_text_atomic
from supersub.run_dir import MARKER
from supersub.taxonomy import Taxonomy
from conftest import saved_thresholds

TINY = ["--backbone", "cnn", "--epochs", "1", "--image-size", "16", "--set", "model.width=4", "--set", "model.depth=[1]",
        "--no-progress", "--batch-size", "8"]
HAND_SET = ["--score", "msp", "--tau-super", "0.5", "--tau-sub", "0.5"]  # skips the calibration stage where it is not the point


@dataclass
class Result:
    code: int
    err: str

    @property
    def error_line(self) -> str:
        """The single ``error:`` line; fails the test if there is not exactly one, or a traceback."""
        lines = [line for line in self.err.splitlines() if line.startswith("error:")]
        assert "Traceback" not in self.err, self.err
        assert len(lines) == 1, self.err
        return lines[0]


def cli(*args: str | Path) -> Result:
    """``supersub ARGS`` through the console-script entry point, with stderr captured."""
    from supersub.cli import main

    err = io.StringIO()
    old_argv, sys.argv = sys.argv, ["supersub", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old_argv
    return Result(code, err.getvalue())


def assert_user_error(result: Result, *fragments: str) -> str:
    """Exit code 2, one ``error:`` line, no traceback, and every fragment in that line."""
    assert result.code == 2, result.err
    line = result.error_line
    for fragment in fragments:
        assert fragment in line, line
    return line


def warned(result: Result, text: str) -> bool:
    """``text`` in stderr, ignoring the line wrapping and indentation of rich's log handler."""
    return "".join(text.split()) in "".join(result.err.split())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[Path]:
    """Leftovers of supersub.io's atomic writes (``.<name>.<random>.tmp``)."""
    return [p for p in folder.rglob(".*.tmp")]


# ---- data ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    write_synth(out, seed=0, train_per_class=4, test_per_class=2)
    return out


@pytest.fixture
def competition(synth: Path, tmp_path: Path) -> Path:
    """A private copy of the built-in training set (CSV + mappings + train_images) to damage."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("train_data.csv", "superclass_mapping.csv", "subclass_mapping.csv"):
        shutil.copy(synth / name, root / name)
    shutil.copytree(synth / "train_images", root / "train_images")
    return root


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def write_rows(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def edit_csv(path: Path, edit: Callable[[list[list[str]]], None]) -> list[list[str]]:
    """Apply ``edit`` to [header, row 1, row 2, ...] in place; row numbers match the readers' messages."""
    rows = read_rows(path)
    edit(rows)
    write_rows(path, rows)
    return rows


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def awkward_images(folder: Path, seed: int, count: int = 7) -> None:
    """Grayscale, RGBA, 16-bit, odd-sized RGB, palette, CMYK and float images (odd, non-square sizes)."""
    rng = np.random.default_rng(seed)
    grey = rng.integers(0, 256, (13, 21), dtype=np.uint8)
    images = {
        "grey.png": Image.fromarray(grey),
        "alpha.png": Image.fromarray(rng.integers(0, 256, (17, 9, 4), dtype=np.uint8)),
        "deep.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "odd.jpg": Image.fromarray(rng.integers(0, 256, (31, 7, 3), dtype=np.uint8)),
        "palette.gif": Image.fromarray(grey).convert("P"),
        "print.tif": Image.fromarray(grey).convert("CMYK"),
        "float.tif": Image.fromarray(grey.astype(np.float32) / 255),
    }
    for name in list(images)[:count]:
        save(folder / name, images[name])


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A nested dataset of awkward images: a one-image class, a corrupt file and a stray text file.

    shapes/{circle (4), square (1)}, marks/{cross (4), dot (4 + broken.jpg)}: 13 readable images.
    """
    root = tmp_path_factory.mktemp("messy") / "data"
    classes = [("shapes", "circle", 4), ("shapes", "square", 1), ("marks", "cross", 4), ("marks", "dot", 4)]
    for k, (sup, sub, n) in enumerate(classes):
        awkward_images(root / sup / sub, seed=k, count=n)
    (root / "marks" / "dot" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "shapes" / "square" / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def messy_run(messy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """The messy set trained with calibration (held-out subclasses, validation split) and --skip-bad-images."""
    run = tmp_path_factory.mktemp("runs") / "messy"
    result = cli("train", "--data", messy, "--out", run, *TINY, "--val-fraction", "0.5", "--skip-bad-images")
    assert result.code == 0, result.err
    return run, result


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A flat prediction folder of awkward images."""
    folder = tmp_path / "images"
    awkward_images(folder, seed=99)
    return folder


# ---- bad images ----------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(lambda p: p.write_bytes(b"this is not a jpeg"), "cannot identify image file"),
     (_truncate, "truncated"),
     (lambda p: p.write_bytes(b""), "cannot identify image file")],
    ids=["garbage", "truncated", "empty"],
)
def test_corrupt_training_image_is_named(competition: Path, tmp_path: Path, damage: Callable, reason: str) -> None:
    victim = competition / "train_images" / "5.jpg"
    damage(victim)
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", *TINY, *HAND_SET),
                      f"{victim}: cannot read image", reason)


def test_missing_training_image_names_the_csv_row(competition: Path, tmp_path: Path) -> None:
    rows = read_rows(competition / "train_data.csv")
    (competition / "train_images" / rows[7][0]).unlink()
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", *TINY),
                      "train_data.csv: row 7, column 'image'", f"{rows[7][0]} not found", "(1 missing in total)")


def test_skip_bad_images_in_training_keeps_the_rest(messy: Path, messy_run: tuple[Path, Result]) -> None:
    run, result = messy_run
    assert warned(result, f"skipped 1 unreadable image(s), e.g. {messy / 'marks' / 'dot' / 'broken.jpg'}")
    assert warned(result, f"{messy}: ignored 1 entries that are not images: shapes/square/notes.txt")
    assert json.loads((run / "metrics.json").read_text())["n_images"] == 13


def test_every_training_image_unreadable_is_an_error(competition: Path, tmp_path: Path) -> None:
    for path in (competition / "train_images").iterdir():
        path.write_bytes(b"junk")
    result = cli("train", "--data", competition, "--out", tmp_path / "run", *TINY, "--skip-bad-images")
    assert_user_error(result, f"{competition}: no readable images")
    assert warned(result, "skipped 72 unreadable image(s)")


# ---- bad CSVs ------------------------------------------------------------------------------------
def _drop_column(name: str) -> Callable[[list[list[str]]], None]:
    def edit(rows: list[list[str]]) -> None:
        i = rows[0].index(name)
        for row in rows:
            del row[i]
    return edit


def _add_column(rows: list[list[str]]) -> None:
    rows[0].append("colour")
    for row in rows[1:]:
        row.append("red")


def _set(row: int, column: int, value: str) -> Callable[[list[list[str]]], None]:
    def edit(rows: list[list[str]]) -> None:
        rows[row][column] = value
    return edit


def _duplicate_name(rows: list[list[str]]) -> None:
    rows[6][0] = rows[1][0]


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (_drop_column("subclass_index"), ["missing required column 'subclass_index'"]),
        (_add_column, ["unexpected column 'colour'"]),
        (_set(3, 1, "1.0"), ["row 3, column 'superclass_index': '1.0' is not an integer"]),
        (_set(5, 2, "three"), ["row 5, column 'subclass_index': 'three' is not an integer"]),
        (_set(4, 2, ""), ["row 4, column 'subclass_index': '' is not an integer"]),
        (_set(2, 2, "18"), ["row 2, column 'subclass_index': index 18 is outside 0..17", "novel"]),
        (_set(4, 1, "-1"), ["row 4, column 'superclass_index': index -1 is outside 0..2"]),
        (_set(4, 1, "9" * 5000), ["row 4, column 'superclass_index'", "far too large"]),
        (_duplicate_name, ["row 6, column 'image'", "already listed on row 1"]),
    ],
    ids=["missing-column", "extra-column", "float", "text", "empty-cell", "novel-index", "negative", "huge",
         "duplicate-name"],
)
def test_bad_training_csv_names_file_row_and_column(
    competition: Path, tmp_path: Path, edit: Callable, fragments: list[str]
) -> None:
    edit_csv(competition / "train_data.csv", edit)
    line = assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", *TINY),
                             f"{competition / 'train_data.csv'}: ", *fragments)
    assert len(line) < 300


def test_subclass_under_two_superclasses_names_both_rows(competition: Path, tmp_path: Path) -> None:
    rows = read_rows(competition / "train_data.csv")
    sub, sup = rows[1][2], rows[1][1]
    again = next(i for i in range(2, len(rows)) if rows[i][2] == sub)
    edit_csv(competition / "train_data.csv", _set(again, 1, str((int(sup) + 1) % 3)))
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", *TINY),
                      f"row {again}, column 'superclass_index': subclass {sub} is labelled superclass",
                      f"but superclass {sup} on row 1")


@pytest.mark.parametrize("layout", ["nested", "competition"])
def test_one_superclass_is_refused_before_anything_is_written(competition: Path, tmp_path: Path, layout: str) -> None:
    """One superclass: its head has nothing to tell apart (trained anyway, every dog and car was a "bird")."""
    if layout == "nested":
        data = tmp_path / "birds-only"
        for sub in ("robin", "wren"):
            for i in range(3):
                save(data / "birds" / sub / f"{i}.png", Image.new("RGB", (8, 8), (40 * i, 90, 0)))
        name = "birds"
    else:
        data = competition
        edit_csv(data / "train_data.csv", lambda rows: [row.__setitem__(1, "0") for row in rows[1:]])
        name = read_rows(data / "superclass_mapping.csv")[1][1]  # every row labelled superclass 0
    line = assert_user_error(cli("train", "--data", data, "--out", tmp_path / "run", *TINY),
                             f"{data}: all images belong to one superclass ({name!r})", "add images of another")
    assert len(line) < 300
    assert not (tmp_path / "run").exists()


def test_subclass_folder_under_two_superclasses(tmp_path: Path) -> None:
    for sup in ("birds", "dogs"):
        save(tmp_path / "data" / sup / "spotted" / "a.png", Image.new("RGB", (8, 8)))
    assert_user_error(cli("train", "--data", tmp_path / "data", "--out", tmp_path / "run", *TINY),
                      "subclass folder 'spotted' appears under both 'birds' and 'dogs'")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda d: write_rows(d / "train_data.csv", [["image", "superclass_index", "subclass_index"]]),
         "train_data.csv: no data rows after the header"),
        (lambda d: (d / "train_data.csv").write_text(""), "train_data.csv: empty file"),
    ],
    ids=["header-only", "zero-bytes"],
)
def test_empty_training_csv(competition: Path, tmp_path: Path, make: Callable, fragment: str) -> None:
    make(competition)
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", *TINY), fragment)


@pytest.mark.parametrize("layout", ["empty-folder", "folders-without-images"])
def test_empty_dataset_folder(tmp_path: Path, layout: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if layout == "folders-without-images":
        (data / "birds" / "robin").mkdir(parents=True)
        (data / "birds" / "robin" / "README.txt").write_text("photos go here\n")
    assert_user_error(cli("train", "--data", data, "--out", tmp_path / "run", *TINY),
                      f"{data}: unrecognised dataset layout")


# ---- awkward but valid data ----------------------------------------------------------------------
def test_awkward_images_train_and_predict(messy_run: tuple[Path, Result], images: Path, tmp_path: Path) -> None:
    """Grayscale, RGBA, 16-bit, palette, CMYK, float and odd-sized images are converted, not rejected."""
    run, _ = messy_run
    out = tmp_path / "pred.csv"
    result = cli("predict", run, images, "--out", out, "--probs")
    assert result.code == 0, result.err
    df = pd.read_csv(out)
    assert sorted(df["image"]) == sorted(p.name for p in images.iterdir())
    assert df["superclass_index"].between(0, 2).all() and df["subclass_index"].between(0, 4).all()
    probs = df[[f"sub_prob_{j}" for j in range(5)]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_a_class_with_one_image_trains(messy_run: tuple[Path, Result]) -> None:
    run, _ = messy_run
    taxonomy = Taxonomy.from_dict(json.loads((run / "taxonomy.json").read_text()))
    assert taxonomy.sub_names == ("cross", "dot", "circle", "square")
    assert (run / "model.pt").is_file() and (run / "calibration").is_dir()


def test_split_code_keeps_a_one_image_class_in_training() -> None:
    labels = [0, 0, 0, 0, 1, 2, 2]
    train, val = stratified_split(labels, 0.5, seed=0)
    assert 4 in train and 4 not in val  # the only image of class 1
    assert sorted(train + val) == list(range(7))
    assert sorted(labels[i] for i in val) == [0, 0, 2]  # round(0.5 * 4) = 2 of class 0, 1 of class 2
    # a superclass whose only subclass has one image never loses it to the pseudo-novel holdout
    taxonomy = Taxonomy(("a", "b"), ("a1", "a2", "b1"), (0, 0, 1))
    assert holdout_subclasses(taxonomy, 0.5, seed=0) in ([0], [1])


# ---- bad options ---------------------------------------------------------------------------------
def test_too_few_images_to_calibrate_is_explained(competition: Path, tmp_path: Path) -> None:
    """4 images per subclass at the default val_fraction 0.1 leave no validation image to calibrate on."""
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", *TINY),
                      "data.val_fraction = 0.1 leaves no validation image", "novelty.tau_super")


def test_unknown_backbone(competition: Path, tmp_path: Path) -> None:
    result = cli("train", "--data", competition, "--out", tmp_path / "run", *TINY, *HAND_SET,
                 "--backbone", "nonexistent_net")
    assert_user_error(result, "model.backbone: unknown backbone 'nonexistent_net'")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--set", "optim.lr=-1"], ["config: optim.lr: Input should be greater than 0"]),
        (["--lr", "0"], ["config: optim.lr: Input should be greater than 0"]),
        (["--set", "data.image_size=4"], ["data.image_size"]),
        (["--set", "model.depth=[]"], ["depth must be a non-empty list"]),
        (["--set", "optim.lr"], ["--set 'optim.lr': expected KEY=VALUE"]),
        (["--set", "optim.learning_rate=0.1"], ["optim.learning_rate: unknown key"]),
        (["--set", "novelty.tau_sub=1.5"], ["novelty.tau_sub"]),
    ],
    ids=["negative-lr", "zero-lr-flag", "tiny-image", "empty-depth", "no-equals", "unknown-key", "tau-above-1"],
)
def test_invalid_config_values(competition: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", *TINY, *args), *fragments)
    assert not (tmp_path / "run").exists()  # configuration errors are caught before anything is written


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("optim:\n  lrr: 0.1\n", "optim.lrr: unknown key"),
     ("optimiser:\n  lr: 0.1\n", "optimiser: unknown key"),
     ("optim: [1, 2\n", "not valid YAML"),
     ("- optim\n", "top level must be a mapping")],
    ids=["unknown-key", "unknown-section", "bad-yaml", "not-a-mapping"],
)
def test_invalid_yaml_config(competition: Path, tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "exp.yaml"
    config.write_text(text)
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", "--config", config),
                      f"{config}: ", fragment)


# ---- prediction inputs ---------------------------------------------------------------------------
def test_predict_folder_without_images(messy_run: tuple[Path, Result], tmp_path: Path) -> None:
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    (folder / "photo.heic").write_bytes(b"x")
    out = tmp_path / "pred.csv"
    assert_user_error(cli("predict", messy_run[0], folder, "--out", out),
                      f"{folder}: no image files in this folder", "found only photo.heic, readme.txt")
    assert not out.exists()


def test_predict_ignores_and_lists_non_image_entries(
    messy_run: tuple[Path, Result], images: Path, tmp_path: Path
) -> None:
    (images / "notes.txt").write_text("x")
    (images / "nested").mkdir()
    (images / ".DS_Store").write_bytes(b"x")  # hidden entries are ignored silently
    out = tmp_path / "pred.csv"
    result = cli("predict", messy_run[0], images, "--out", out)
    assert result.code == 0, result.err
    assert warned(result, f"{images}: ignored 2 entries that are not images: nested/, notes.txt")
    assert len(pd.read_csv(out)) == 7


def test_predict_skip_bad_images_warns_with_a_count(
    messy_run: tuple[Path, Result], images: Path, tmp_path: Path
) -> None:
    (images / "a_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")
    (images / "b_empty.jpg").write_bytes(b"")
    out = tmp_path / "pred.csv"
    assert_user_error(cli("predict", messy_run[0], images, "--out", out),
                      f"{images / 'a_broken.png'}: cannot read image")
    assert not out.exists()
    result = cli("predict", messy_run[0], images, "--out", out, "--skip-bad-images")
    assert result.code == 0, result.err
    assert warned(result, f"skipped 2 unreadable image(s), e.g. {images / 'a_broken.png'}: cannot read image")
    assert sorted(pd.read_csv(out)["image"]) == sorted(p.name for p in images.iterdir() if "_" not in p.name)


@pytest.mark.parametrize("what", ["missing-run", "not-a-run", "missing-images"])
def test_predict_bad_paths(messy_run: tuple[Path, Result], images: Path, tmp_path: Path, what: str) -> None:
    run, folder = messy_run[0], images
    if what == "missing-run":
        run = tmp_path / "nope"
    elif what == "not-a-run":
        run = images
    else:
        folder = tmp_path / "nope"
    fragment = {"missing-run": "not a supersub run directory", "not-a-run": "not a supersub run directory",
                "missing-images": "no such file or folder"}[what]
    assert_user_error(cli("predict", run, folder, "--out", tmp_path / "p.csv"), fragment)


# ---- damaged run directories ---------------------------------------------------------------------
@pytest.fixture
def run_copy(messy_run: tuple[Path, Result], tmp_path: Path) -> Path:
    return Path(shutil.copytree(messy_run[0], tmp_path / "run"))


def _other_taxonomy_weights(run: Path) -> None:
    payload = torch.load(run / "model.pt", weights_only=True)
    payload["taxonomy"]["sub_names"].append("extra")
    payload["taxonomy"]["sub_to_super"].append(0)
    torch.save(payload, run / "model.pt")


def _high_tau(run: Path) -> None:
    state = torch.load(run / "open_set_head.pt", weights_only=True)
    state["thresholds"]["tau_super"] = "high"
    torch.save(state, run / "open_set_head.pt")


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (lambda r: (r / "open_set_head.pt").write_bytes(b"PK\x03\x04 half a zip"),
         ["open_set_head.pt: refused to load checkpoint"]),
        (_high_tau, ["open_set_head.pt: thresholds: tau_super must be a finite number, found 'high'"]),
        (lambda r: torch.save({"format": "supersub-open-set-head-1"}, r / "open_set_head.pt"),
         ["open_set_head.pt: missing key 'thresholds'"]),
        (lambda r: (r / "open_set_head.pt").unlink(), ["open_set_head.pt: missing (the run did not finish training"]),
        (lambda r: (r / "model.pt").write_bytes(b"PK\x03\x04 half a zip"),
         ["model.pt: refused to load checkpoint (not a readable checkpoint"]),
        (lambda r: (r / "model.pt").unlink(), ["model.pt: missing (the run did not finish training"]),
        (_other_taxonomy_weights, ["model.pt: weights do not fit the model", "size mismatch for sub_head"]),
        (lambda r: torch.save({"format": "supersub-model-1"}, r / "model.pt"), ["incomplete model file"]),
        (lambda r: (r / MARKER).unlink(), ["not a supersub run directory"]),
    ],
    ids=["head-garbage", "head-type", "head-incomplete", "head-missing", "model-garbage", "model-missing",
         "model-other-taxonomy", "model-incomplete", "no-marker"],
)
def test_damaged_run_directory(run_copy: Path, images: Path, tmp_path: Path, damage: Callable,
                               fragments: list[str]) -> None:
    damage(run_copy)
    assert_user_error(cli("predict", run_copy, images, "--out", tmp_path / "p.csv"), *fragments)


def test_damaged_taxonomy_on_evaluate(run_copy: Path, synth: Path) -> None:
    (run_copy / "taxonomy.json").write_text('{"super_names": "ab"}')
    assert_user_error(cli("evaluate", run_copy, "--images", synth / "test_images", "--labels",
                          synth / "test_truth.csv"), "taxonomy.json: malformed taxonomy")


# ---- malicious checkpoints -----------------------------------------------------------------------
class Payload:
    """Unpickling this runs a shell command: what a booby-trapped model.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


def plant_payload(run: Path, marker: Path) -> None:
    """Replace model.pt with a checkpoint that looks right but carries the payload."""
    payload = torch.load(run / "model.pt", weights_only=True)
    payload["extra"] = Payload(marker)
    torch.save(payload, run / "model.pt")


def test_the_payload_is_live(tmp_path: Path) -> None:
    """Control: unpickled without safeguards, the payload does create its marker."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_malicious_checkpoint_is_refused(run_copy: Path, images: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    plant_payload(run_copy, marker)
    assert_user_error(cli("predict", run_copy, images, "--out", tmp_path / "p.csv"),
                      f"{run_copy / 'model.pt'}: refused to load checkpoint (it holds Python objects",
                      "GLOBAL posix.system")
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists()


def test_malicious_lightning_checkpoint_is_refused_on_resume(messy: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume hands Lightning's own last.ckpt files back to Lightning: each is vetted first."""
    from conftest import interrupt_at_epoch

    run, marker = tmp_path / "run", tmp_path / "pwned"
    args = ["--data", messy, "--out", run, *TINY, "--epochs", "2", "--val-fraction", "0.5", "--skip-bad-images"]
    interrupt_at_epoch(monkeypatch, "final", 1)  # an interrupted run: the final model's last.ckpt holds epoch 0
    assert cli("train", *args).code == 130
    monkeypatch.undo()
    lasts = sorted(run.glob("checkpoints/*/last.ckpt"))
    assert [p.parent.name for p in lasts] == ["final"]  # the finished calibration stage kept its model.pt only
    for last in lasts:
        payload = torch.load(last, weights_only=True)
        payload["extra"] = Payload(marker)
        torch.save(payload, last)
    result = cli("train", "--resume", *args)
    assert_user_error(result, "last.ckpt: refused to load checkpoint (it holds Python objects")
    assert not marker.exists()


def test_malicious_checkpoint_through_the_installed_command(run_copy: Path, images: Path, tmp_path: Path) -> None:
    """The real console script in a fresh interpreter: one line on stderr, exit 2, payload never runs."""
    marker = tmp_path / "pwned"
    plant_payload(run_copy, marker)
    exe = Path(sys.executable).with_name("supersub")
    proc = subprocess.run([str(exe), "predict", str(run_copy), str(images), "--out", str(tmp_path / "p.csv")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: {run_copy / 'model.pt'}: refused to load checkpoint"), proc.stderr
    assert not marker.exists()


# ---- never overwrite by accident -----------------------------------------------------------------
def test_existing_run_directory_is_not_overwritten(run_copy: Path, competition: Path) -> None:
    before = snapshot(run_copy)
    assert_user_error(cli("train", "--data", competition, "--out", run_copy, *TINY, *HAND_SET),
                      f"{run_copy}: run directory exists and is not empty", "--overwrite")
    assert snapshot(run_copy) == before


def test_overwrite_refuses_a_folder_supersub_did_not_make(competition: Path, tmp_path: Path) -> None:
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work\n")
    assert_user_error(cli("train", "--data", competition, "--out", mine, *TINY, *HAND_SET, "--overwrite"),
                      f"{mine}: not a supersub run directory", "refusing to delete it")
    assert snapshot(mine) == {"chapter1.tex": b"years of work\n"}


def test_overwrite_replaces_a_previous_run(run_copy: Path, messy: Path) -> None:
    (run_copy / "stale.txt").write_text("from before\n")
    assert saved_thresholds(run_copy)["tau_super"] != 0.5  # calibrated before
    result = cli("train", "--data", messy, "--out", run_copy, *TINY, *HAND_SET, "--overwrite", "--skip-bad-images")
    assert result.code == 0, result.err
    assert not (run_copy / "stale.txt").exists()
    assert saved_thresholds(run_copy)["tau_super"] == 0.5
    assert temp_files(run_copy) == []


def test_predict_refuses_to_overwrite_a_csv(messy_run: tuple[Path, Result], images: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    out.write_text("precious\n")
    assert_user_error(cli("predict", messy_run[0], images, "--out", out), f"{out}: exists", "--overwrite")
    assert out.read_text() == "precious\n"
    assert cli("predict", messy_run[0], images, "--out", out, "--overwrite").code == 0
    assert list(pd.read_csv(out).columns) == ["image", "superclass_index", "subclass_index"]


def test_predict_out_is_a_folder(messy_run: tuple[Path, Result], images: Path, tmp_path: Path) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    assert_user_error(cli("predict", messy_run[0], images, "--out", folder, "--overwrite"),
                      f"{folder}: is a folder")
    assert temp_files(tmp_path) == []


# ---- atomic writes -------------------------------------------------------------------------------
def test_training_and_prediction_leave_no_temp_files(messy_run: tuple[Path, Result], images: Path,
                                                     tmp_path: Path) -> None:
    run, _ = messy_run
    assert cli("predict", run, images, "--out", tmp_path / "p.csv").code == 0
    assert temp_files(run) == [] and temp_files(tmp_path) == []
    assert {"model.pt", "open_set_head.pt", "taxonomy.json", "config.yaml", MARKER} <= set(os.listdir(run))


def test_a_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    write_text_atomic(target, "old\n")

    def crash(fh: io.TextIOBase) -> None:
        fh.write("half of the ne")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write_atomic(target, crash)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_atomic_files_get_normal_permissions(tmp_path: Path) -> None:
    """mkstemp makes 0o600 files; the final file gets what open() would give under the umask."""
    umask = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "shared.csv", "x\n")
    finally:
        os.umask(umask)
    assert (tmp_path / "shared.csv").stat().st_mode & 0o777 == 0o640


def test_unwritable_target_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SupersubError, match=rf"inside.csv: cannot create its folder {blocker} \(File exists\)"):
        write_text_atomic(blocker / "inside.csv", "x\n")


def test_unwritable_image_cache_is_only_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = save(tmp_path / "a.png", Image.new("RGB", (5, 3), (200, 0, 0)))
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    decoded = decode_images([ImageRecord(image, "a.png")], 4, cache_dir=blocker / "sub")
    assert decoded.kept == [0] and decoded.images[0, :, 0, 0].tolist() == [200, 0, 0]
    assert "image cache not saved" in caplog.text and "cannot create its folder" in caplog.text


@pytest.mark.parametrize("where", ["SUPERSUB_CACHE_DIR", "data.cache_dir"])
def test_unwritable_feature_cache_falls_back_to_memory(synth: Path, tmp_path: Path, where: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache that cannot be written (here a file where its folder should be: root ignores read-only modes)
    used to abort frozen training and prediction; now each command warns once and goes on in memory."""
    from supersub.models import feature_cache

    monkeypatch.setattr(feature_cache, "_UNWRITABLE", set(), raising=False)
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder")
    extra: list[str | Path] = []
    if where == "SUPERSUB_CACHE_DIR":
        monkeypatch.setenv("SUPERSUB_CACHE_DIR", str(blocker / "supersub"))
    else:
        extra = ["--set", f"data.cache_dir={blocker / 'supersub'}"]
    run = tmp_path / "run"
    trained = cli("train", "--data", synth, "--out", run, *TINY, "--finetune", "frozen", *HAND_SET, *extra)
    assert trained.code == 0, trained.err
    assert trained.err.count("feature cache not saved") == 1, trained.err
    monkeypatch.setattr(feature_cache, "_UNWRITABLE", set(), raising=False)  # a new process
    monkeypatch.setenv("SUPERSUB_CACHE_DIR", str(blocker / "supersub"))
    predicted = cli("predict", run, synth / "test_images", "--out", tmp_path / "p.csv")
    assert predicted.code == 0, predicted.err
    assert predicted.err.count("feature cache not saved") <= 1, predicted.err
    assert (tmp_path / "p.csv").is_file()


# ---- errors raised at the CLI boundary and by Lightning ---------------------------------------------
USAGE_MISTAKES = [
    (["train", "--data", "d", "--out", "o", "--epoch", "1"], "No such option: --epoch. Did you mean --epochs"),
    (["train", "--data", "d", "--out", "o", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["train", "--data", "d"], "Missing option '--out'"),
    (["predict", "run", "images"], "Missing option '--out'"),
    (["trian"], "No such command 'trian'. Did you mean 'train'"),
]


@pytest.mark.parametrize("args, fragment", USAGE_MISTAKES)
def test_usage_mistakes_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    """typer 0.29 raises its bundled copies of click's exceptions: they must not escape as a traceback."""
    result = cli(*args)
    line = assert_user_error(result, fragment)
    assert [ln for ln in result.err.splitlines() if ln.strip()] == [line]
    assert "--help" in line  # where to read the usage


def test_a_mistyped_option_names_only_its_near_ties() -> None:
    """--epoch is --epochs; difflib also lists --approach, which only misleads."""
    line = assert_user_error(cli("train", "--data", "d", "--out", "o", "--epoch", "1"), "Did you mean --epochs?")
    assert "--approach" not in line


def test_ignored_options_warn_once_per_reason(tmp_path: Path) -> None:
    """Options the approach would drop are named before any work starts (here the data is missing)."""
    result = cli("train", "--data", tmp_path / "missing", "--out", tmp_path / "run", "--approach", "two-models",
                 "--alpha", "0.5", "--finetune", "frozen", "--set", "augment.rotation=15")
    assert_user_error(result, "no such file or folder")
    assert warned(result, "ignored options: loss.alpha (only approach two-heads has the KL interaction term; "
                          "two-models trains with alpha 0)")
    assert warned(result, "ignored options: augment.rotation (finetune=frozen trains on cached backbone outputs")
    assert "".join(result.err.split()).count("ignoredoptions:") == 2


@pytest.mark.parametrize("args, fragment", USAGE_MISTAKES)
def test_usage_mistakes_through_the_installed_command(args: list[str], fragment: str) -> None:
    exe = Path(sys.executable).with_name("supersub")
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: ") and fragment in line and "supersub" in line, proc.stderr


def test_unparseable_set_value(competition: Path, tmp_path: Path) -> None:
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", "--set", "model.depth=[1"),
                      "--set 'model.depth=[1'")


def test_brackets_in_a_path_are_printed_verbatim(tmp_path: Path) -> None:
    data = tmp_path / "photos[/]2024"
    assert_user_error(cli("train", "--data", data, "--out", tmp_path / "run"), f"{data}: no such file or folder")


def test_a_failed_train_leaves_no_run_directory(competition: Path, tmp_path: Path) -> None:
    (competition / "train_images" / "3.jpg").write_bytes(b"junk")
    assert cli("train", "--data", competition, "--out", tmp_path / "run", *TINY).code == 2
    assert not (tmp_path / "run").exists()


def test_invalid_trainer_option(competition: Path, tmp_path: Path) -> None:
    assert_user_error(cli("train", "--data", competition, "--out", tmp_path / "run", *TINY, *HAND_SET,
                          "--accelerator", "abacus"), "abacus")
    assert not (tmp_path / "run").exists()  # nothing was trained: no half-made run is left behind


