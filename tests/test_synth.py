"""The built-in synthetic dataset: competition layout, label rules, counts, determinism, speed, refusals."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supersub.data import synth
from supersub.data.synth import SYNTH_FAMILIES, write_synth
from supersub.errors import SupersubError

SMALL = {"seed": 3, "train_per_class": 4, "test_per_class": 2}
# Hand-computed for SMALL: 18 seen subclasses; seen test = 18*2 = 36; test total = 36/0.47 = 76.6;
# per held-out subclass round(0.25*76.6/6) = 3 (x6 = 18); novel superclass round(0.28*76.6) = 21;
# pool = 10*4 = 40.
SMALL_COUNTS = {"train": {"seen": 72}, "test": {"seen": 36, "novel_sub": 18, "novel_super": 21},
                "novel": {"novel_super": 40}}
NOVEL_SUPER, NOVEL_SUB = 3, 18


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return out, write_synth(out, **SMALL)


def test_returned_counts_are_the_hand_computed_ones(small: tuple[Path, dict]) -> None:
    assert small[1] == SMALL_COUNTS


def test_default_config_counts_and_shares() -> None:
    # planning only (no drawing): the defaults give ~1,100 train, ~600 test with 25%/28% novel, 600 pool
    plan = synth._plan(60, 15, np.random.default_rng(0))
    kinds = {split: Counter(it.kind for it in items) for split, items in plan.items()}
    assert kinds == {"train": {"seen": 1080}, "test": {"seen": 270, "novel_sub": 144, "novel_super": 161},
                     "novel": {"novel_super": 600}}


def test_layout_and_csv_headers(small: tuple[Path, dict]) -> None:
    out = small[0]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "superclass_mapping.csv", "subclass_mapping.csv", "train_data.csv", "train_images",
        "test_truth.csv", "test_images", "novel_data.csv", "novel_images"])
    assert _rows(out / "superclass_mapping.csv")[0] == ["index", "class"]
    assert _rows(out / "subclass_mapping.csv")[0] == ["index", "class"]
    assert _rows(out / "train_data.csv")[0] == ["image", "superclass_index", "subclass_index", "description"]
    assert _rows(out / "test_truth.csv")[0] == ["image", "superclass_index", "subclass_index", "kind"]
    assert _rows(out / "novel_data.csv")[0] == ["image", "superclass_index", "subclass_index"]
    assert b"\r" not in (out / "train_data.csv").read_bytes()  # LF endings, like the competition files


def test_mappings_list_seen_classes_then_novel_last(small: tuple[Path, dict]) -> None:
    out = small[0]
    supers = [(int(r["index"]), r["class"]) for r in _rows(out / "superclass_mapping.csv")[1]]
    assert supers == [(0, "polygon"), (1, "radial"), (2, "stripes"), (3, "novel")]
    subs = [(int(r["index"]), r["class"]) for r in _rows(out / "subclass_mapping.csv")[1]]
    assert [i for i, _ in subs] == list(range(19))
    assert subs[0] == (0, "polygon/triangle-solid") and subs[-1] == (NOVEL_SUB, "novel")
    assert [name.split("/")[0] for _, name in subs[:-1]] == ["polygon"] * 6 + ["radial"] * 6 + ["stripes"] * 6


def test_images_match_csv_rows_with_opaque_names(small: tuple[Path, dict]) -> None:
    out = small[0]
    for folder, table in (("train_images", "train_data.csv"), ("test_images", "test_truth.csv"),
                          ("novel_images", "novel_data.csv")):
        rows = _rows(out / table)[1]
        expected = [f"{i}.jpg" for i in range(len(rows))]
        assert [r["image"] for r in rows] == expected
        assert sorted(p.name for p in (out / folder).iterdir()) == sorted(expected)


def test_images_are_distinct_64px_rgb_jpegs(small: tuple[Path, dict]) -> None:
    paths = sorted(small[0].glob("*_images/*.jpg"))
    assert len(paths) == 72 + 75 + 40
    for p in paths:
        with Image.open(p) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 64))
            assert np.asarray(im, dtype=np.float32).std() > 5.0  # an object on a background, not a flat fill
    assert len({p.read_bytes() for p in paths}) == len(paths)


def test_train_and_seen_test_labels_are_consistent(small: tuple[Path, dict]) -> None:
    out = small[0]
    sub_family = {int(r["index"]): r["class"].split("/")[0] for r in _rows(out / "subclass_mapping.csv")[1]}
    super_name = {int(r["index"]): r["class"] for r in _rows(out / "superclass_mapping.csv")[1]}
    train = _rows(out / "train_data.csv")[1]
    seen_test = [r for r in _rows(out / "test_truth.csv")[1] if r["kind"] == "seen"]
    for r in train + seen_test:
        sup, sub = int(r["superclass_index"]), int(r["subclass_index"])
        assert 0 <= sub < NOVEL_SUB and super_name[sup] == sub_family[sub]
    assert Counter(int(r["subclass_index"]) for r in train) == {j: 4 for j in range(18)}
    assert Counter(int(r["subclass_index"]) for r in seen_test) == {j: 2 for j in range(18)}
    assert "specifically a triangle-solid" in next(r["description"] for r in train if r["subclass_index"] == "0")


def test_novel_rows_use_the_novel_index_at_the_novel_levels(small: tuple[Path, dict]) -> None:
    out = small[0]
    test = _rows(out / "test_truth.csv")[1]
    assert {r["kind"] for r in test} == {"seen", "novel_sub", "novel_super"}
    novel_sub = [(int(r["superclass_index"]), int(r["subclass_index"])) for r in test if r["kind"] == "novel_sub"]
    # two held-out subclasses x 3 images per seen superclass, each keeping its true superclass
    assert Counter(novel_sub) == {(0, NOVEL_SUB): 6, (1, NOVEL_SUB): 6, (2, NOVEL_SUB): 6}
    novel_super = {(int(r["superclass_index"]), int(r["subclass_index"])) for r in test if r["kind"] == "novel_super"}
    assert novel_super == {(NOVEL_SUPER, NOVEL_SUB)}
    pool = {(int(r["superclass_index"]), int(r["subclass_index"])) for r in _rows(out / "novel_data.csv")[1]}
    assert pool == {(NOVEL_SUPER, NOVEL_SUB)}
    kinds = [r["kind"] for r in test]
    assert sum(a != b for a, b in zip(kinds, kinds[1:])) > 10  # shuffled: in plan order there would be 2 changes


def test_same_seed_gives_identical_bytes_and_other_seed_differs(small: tuple[Path, dict],
                                                                 tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_synth(again, **SMALL)
    assert _tree_bytes(again) == _tree_bytes(small[0])
    other = tmp_path / "other"
    write_synth(other, **{**SMALL, "seed": 4})
    assert (other / "train_data.csv").read_bytes() != (again / "train_data.csv").read_bytes()
    assert (other / "test_images" / "0.jpg").read_bytes() != (again / "test_images" / "0.jpg").read_bytes()


def test_size_parameter_and_empty_existing_folder(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    counts = write_synth(out, seed=1, train_per_class=1, test_per_class=1, size=32)
    assert counts["train"] == {"seen": 18}
    with Image.open(out / "train_images" / "0.jpg") as im:
        assert im.size == (32, 32)


def test_refuses_non_empty_folder_and_leaves_it_alone(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(SupersubError, match="not empty"):
        write_synth(tmp_path, train_per_class=1, test_per_class=1)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_refuses_a_file_path_and_bad_counts(tmp_path: Path) -> None:
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(SupersubError, match="a_file"):
        write_synth(target)
    for bad in ({"train_per_class": 0}, {"test_per_class": -1}, {"size": 8}, {"seed": -1}):
        with pytest.raises(SupersubError, match=next(iter(bad))):
            write_synth(tmp_path / "new", **bad)
    assert not (tmp_path / "new").exists()


def test_family_table_documents_the_structure() -> None:
    roles = Counter(f.role for f in SYNTH_FAMILIES)
    assert roles == {"seen": 3, "novel_super": 1, "pool": 1}
    for fam in SYNTH_FAMILIES:
        names = [v.name for v in fam.seen + fam.held_out]
        assert len(set(names)) == len(names)
        if fam.role == "seen":
            assert (len(fam.seen), len(fam.held_out)) == (6, 2)
            assert all(v.hue is not None for v in fam.seen + fam.held_out)
        else:
            assert fam.seen == () and len(fam.held_out) >= 4
