"""Image decoding (supersub.data.images) and dataset readers (supersub.data.formats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from supersub.data.formats import (
    read_competition,
    read_dataset,
    read_flat,
    read_labels,
    read_mapping,
    read_nested,
)
from supersub.data.images import IMAGE_EXTENSIONS, is_image_file, load_image
from supersub.data.records import UNLABELLED
from supersub.errors import SupersubError
from supersub.taxonomy import Taxonomy

# the competition data sits beside the repository, in ../shared/data
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bird-dog-reptile"


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def tiny(path: Path, colour: tuple[int, int, int] = (10, 20, 30)) -> Path:
    return save(path, Image.new("RGB", (4, 4), colour))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def pixels(t: torch.Tensor) -> set[tuple[int, ...]]:
    """The distinct (r, g, b) values of a (3, H, W) tensor."""
    return {tuple(int(v) for v in px) for px in t.reshape(3, -1).T}


# ---- images ----------------------------------------------------------------------------------------
def test_image_extensions_are_case_insensitive() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"} == IMAGE_EXTENSIONS
    assert is_image_file(Path("a.JPG")) and is_image_file(Path("x/b.Jpeg")) and is_image_file(Path("c.webp"))
    assert not is_image_file(Path("a.txt")) and not is_image_file(Path("jpg")) and not is_image_file(Path("a.jpg.csv"))


@pytest.mark.parametrize(
    ("mode", "value", "suffix", "expected"),
    [
        ("RGB", (10, 200, 30), ".png", (10, 200, 30)),
        ("L", 100, ".png", (100, 100, 100)),
        ("1", 1, ".png", (255, 255, 255)),
        ("RGBA", (255, 0, 0, 255), ".png", (255, 0, 0)),
        ("RGBA", (255, 0, 0, 0), ".png", (0, 0, 0)),  # fully transparent -> the black background
        ("RGBA", (200, 100, 0, 128), ".png", (100, 50, 0)),  # half transparent -> half way to black
        ("LA", (200, 255), ".png", (200, 200, 200)),
        ("CMYK", (0, 255, 255, 0), ".tif", (255, 0, 0)),
        ("RGB", (0, 0, 255), ".bmp", (0, 0, 255)),
    ],
)
def test_any_mode_becomes_rgb(tmp_path: Path, mode: str, value: object, suffix: str, expected: tuple) -> None:
    path = save(tmp_path / f"img{suffix}", Image.new(mode, (7, 5), value))  # odd, non-square size
    out = load_image(path, 6)
    assert out.dtype == torch.uint8 and out.shape == (3, 6, 6)
    (colour,) = pixels(out)
    assert np.allclose(colour, expected, atol=1)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[65535, 25700, 0, 257]], dtype=np.uint16)  # 25700 = 100 * 257
    path = save(tmp_path / "deep.png", Image.fromarray(values))
    with Image.open(path) as im:
        assert im.mode in {"I;16", "I"}  # really the 16-bit path
    out = load_image(path, 4)
    # resize 4x1 -> 4x4 keeps each column's value (rows are copies)
    assert out[0, 0].tolist() == [255, 100, 0, 1]
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_32_bit_integer_mode_is_read_as_sixteen_bit(tmp_path: Path) -> None:
    path = save(tmp_path / "deep.tif", Image.new("I", (3, 3), 32896))  # 128 * 257; clipping would give 255
    with Image.open(path) as im:
        assert im.mode == "I"
    assert pixels(load_image(path, 3)) == {(128, 128, 128)}


def test_palette_images_use_their_palette_and_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    out = load_image(save(tmp_path / "pal.png", im), 2)
    assert out[:, 0, 0].tolist() == [255, 0, 0] and out[:, 0, 1].tolist() == [0, 255, 0]
    im.info["transparency"] = 0
    out = load_image(save(tmp_path / "pal.gif", im), 2)
    assert out[:, 0, 0].tolist() == [0, 0, 0] and out[:, 0, 1].tolist() == [0, 255, 0]


def test_resize_squashes_without_cropping(tmp_path: Path) -> None:
    im = Image.new("RGB", (20, 10), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 5, 10))  # the left quarter is red: a centre crop would lose it
    out = load_image(save(tmp_path / "wide.png", im), 8)
    assert out.shape == (3, 8, 8)
    assert pixels(out[:, :, :1]) == {(255, 0, 0)}
    assert pixels(out[:, :, -3:]) == {(0, 0, 255)}


def test_truncated_jpeg_is_an_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = save(tmp_path / "cut.jpg", Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(SupersubError, match=r"cut\.jpg: cannot read image \(.*truncated"):
        load_image(path, 8)


@pytest.mark.parametrize("content", [b"", b"definitely not a JPEG"])
def test_unreadable_file_names_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(SupersubError, match=r"bad\.jpg: cannot read image \(.+\)"):
        load_image(path, 8)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(SupersubError, match=r"nope\.png: cannot read image \(No such file"):
        load_image(tmp_path / "nope.png", 8)


# ---- mapping CSVs ----------------------------------------------------------------------------------
def test_read_mapping_returns_seen_names_in_index_order(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", 'index,class\n1,dog\n0,"Scotch terrier, Scottie"\n2,Novel\n')
    assert read_mapping(path) == ["Scotch terrier, Scottie", "dog"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("0,bird\nx,dog\n2,novel\n", r"row 2, column 'index': 'x' is not an integer"),
        ("0,bird\n1.0,dog\n2,novel\n", r"row 2, column 'index': '1.0' is not an integer"),
        ("0,bird\n1,dog\n", r"row 2, column 'class': the last index \(1\) must be 'novel'"),
        ("0,bird\n2,dog\n3,novel\n", r"row 3, column 'index': index 3 is outside 0..2"),
        ("0,bird\n0,dog\n1,novel\n", r"row 2, column 'index': index 0 already used on row 1"),
        ("0,bird\n1,bird\n2,novel\n", r"row 2, column 'class': class 'bird' already named on row 1"),
        ("0,bird\n1, \n2,novel\n", r"row 2, column 'class': empty class name"),
        ("0,novel\n", r"no seen classes"),
        ("0,bird,extra\n1,novel\n", r"row 1 has 3 fields but the header has 2"),
    ],
)
def test_read_mapping_errors_name_row_and_column(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path / "super.csv", "index,class\n" + body)
    with pytest.raises(SupersubError, match=r"super\.csv: " + expected):
        read_mapping(path)


def test_read_mapping_rejects_unknown_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "index,class,colour\n0,a,red\n1,novel,blue\n")
    with pytest.raises(SupersubError, match=r"m\.csv: unexpected column 'colour'"):
        read_mapping(path)


# ---- competition layout ----------------------------------------------------------------------------
TRAIN_ROWS = [("b.jpg", "0", "0"), ("a.jpg", "1", "1"), ("c.jpg", "0", "2"), ("10.jpg", "0", "0")]


def competition(root: Path, rows: list[tuple[str, ...]] = TRAIN_ROWS, header: str = "", images: bool = True) -> Path:
    """bird/dog superclasses; robin(bird), pug(dog), crow(bird) subclasses; one tiny image per row."""
    write(root / "superclass_mapping.csv", "index,class\n0,bird\n1,dog\n2,novel\n")
    write(root / "subclass_mapping.csv", "index,class\n0,robin\n1,pug\n2,crow\n3,novel\n")
    header = header or "image,superclass_index,subclass_index,description"
    lines = [header] + [",".join(r) + (",photo" if header.endswith("description") else "") for r in rows]
    write(root / "train_data.csv", "\n".join(lines) + "\n")
    if images:
        for name, *_ in rows:
            tiny(root / "train_images" / name)
    return root


def test_read_competition_happy_path(tmp_path: Path) -> None:
    ds = read_competition(competition(tmp_path))
    assert ds.names == ["10.jpg", "a.jpg", "b.jpg", "c.jpg"]
    assert ds.super_labels == [0, 1, 0, 0] and ds.sub_labels == [0, 1, 0, 2]
    assert ds.records[1].path == tmp_path / "train_images" / "a.jpg"
    assert ds.taxonomy == Taxonomy(("bird", "dog"), ("robin", "pug", "crow"), (0, 1, 0))
    assert ds.source.endswith("train_data.csv")


def test_read_competition_accepts_kind_and_quoted_descriptions(tmp_path: Path) -> None:
    competition(tmp_path)
    write(
        tmp_path / "train_data.csv",
        'kind,image,subclass_index,superclass_index,description\nseen,a.jpg,1,1,"a dog, small"\n'
        "seen,b.jpg,0,0,x\nseen,c.jpg,2,0,y\n",
    )
    ds = read_competition(tmp_path)
    assert ds.names == ["a.jpg", "b.jpg", "c.jpg"] and ds.sub_labels == [1, 0, 2]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([*TRAIN_ROWS[:1], ("a.jpg", "one", "1")], r"row 2, column 'superclass_index': 'one' is not an integer"),
        ([*TRAIN_ROWS[:1], ("a.jpg", "1", "1.0")], r"row 2, column 'subclass_index': '1.0' is not an integer"),
        ([*TRAIN_ROWS[:3], ("d.jpg", "0", "3")], r"row 4, column 'subclass_index': index 3 is outside 0..2"),
        ([*TRAIN_ROWS[:3], ("d.jpg", "2", "3")], r"row 4, column 'superclass_index': index 2 is outside 0..1"),
        ([*TRAIN_ROWS[:3], ("d.jpg", "-1", "0")], r"row 4, column 'superclass_index': index -1 is outside"),
        ([*TRAIN_ROWS[:3], ("b.jpg", "0", "0")], r"row 4, column 'image': 'b.jpg' already listed on row 1"),
        ([*TRAIN_ROWS[:3], ("d.jpg", "1", "2")], r"row 4, column 'superclass_index': subclass 2 is labelled "
         r"superclass 1 here but superclass 0 on row 3"),
        ([*TRAIN_ROWS[:3], ("../d.jpg", "0", "0")], r"row 4, column 'image': '../d.jpg' must be a path inside"),
        (TRAIN_ROWS[:2], r"subclass 2 \('crow'\) has no labelled image"),
    ],
)
def test_read_competition_label_errors(tmp_path: Path, rows: list[tuple[str, ...]], expected: str) -> None:
    competition(tmp_path, rows)
    with pytest.raises(SupersubError, match=r"train_data\.csv: " + expected):
        read_competition(tmp_path)


def test_read_competition_names_the_missing_image(tmp_path: Path) -> None:
    competition(tmp_path)
    (tmp_path / "train_images" / "c.jpg").unlink()
    with pytest.raises(SupersubError, match=r"row 3, column 'image': image file .*c\.jpg not found \(1 missing"):
        read_competition(tmp_path)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("image,superclass_index,subclass_index,notes", r"unexpected column 'notes'"),
        ("image,superclass_index,description", r"missing required column 'subclass_index'"),
        ("image,image,superclass_index,subclass_index", r"column 'image' appears twice"),
    ],
)
def test_read_competition_column_errors(tmp_path: Path, header: str, expected: str) -> None:
    competition(tmp_path, [], images=False)
    write(tmp_path / "train_data.csv", header + "\n")
    with pytest.raises(SupersubError, match=r"train_data\.csv: " + expected):
        read_competition(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", r"empty file"), ("image,superclass_index,subclass_index\n\n", r"no data rows after the header")],
)
def test_read_competition_empty_csv(tmp_path: Path, text: str, expected: str) -> None:
    competition(tmp_path, [], images=False)
    write(tmp_path / "train_data.csv", text)
    with pytest.raises(SupersubError, match=r"train_data\.csv: " + expected):
        read_competition(tmp_path)


def test_read_competition_malformed_csv(tmp_path: Path) -> None:
    competition(tmp_path)
    write(tmp_path / "train_data.csv", 'image,superclass_index,subclass_index\na.jpg,1,"1"x\n')
    with pytest.raises(SupersubError, match=r"train_data\.csv: malformed CSV at line 2"):
        read_competition(tmp_path)


def test_read_competition_bad_mapping_names_the_mapping_file(tmp_path: Path) -> None:
    competition(tmp_path)
    write(tmp_path / "subclass_mapping.csv", "index,class\n0,robin\n1,pug\n2,crow\n")
    with pytest.raises(SupersubError, match=r"subclass_mapping\.csv: row 3, column 'class'.*'novel'"):
        read_competition(tmp_path)


# ---- labelled evaluation CSV -----------------------------------------------------------------------
TAXONOMY = Taxonomy(("bird", "dog"), ("robin", "pug", "crow"), (0, 1, 0))


def labels(tmp_path: Path, body: str) -> Path:
    for name in ("s.png", "n1.png", "n2.png", "x.png"):
        tiny(tmp_path / "imgs" / name)
    return write(tmp_path / "labels.csv", "image,superclass_index,subclass_index,kind\n" + body)


def test_read_labels_allows_novel_indices(tmp_path: Path) -> None:
    path = labels(tmp_path, "s.png,1,1,seen\nn2.png,2,3,novel\nn1.png,0,3,novel-sub\n")
    ds = read_labels(path, tmp_path / "imgs", TAXONOMY)
    assert ds.names == ["n1.png", "n2.png", "s.png"]
    assert ds.super_labels == [0, 2, 1] and ds.sub_labels == [3, 3, 1]
    assert ds.taxonomy is TAXONOMY


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("s.png,0,0,a\nx.png,2,1,b\n", r"row 2, column 'subclass_index': superclass is novel \(2\) so the "
         r"subclass must be novel \(3\), found 1"),
        ("s.png,1,0,a\n", r"row 1, column 'superclass_index': subclass 0 \('robin'\) belongs to superclass 0"),
        ("s.png,0,4,a\n", r"row 1, column 'subclass_index': index 4 is outside 0..3"),
        ("s.png,3,3,a\n", r"row 1, column 'superclass_index': index 3 is outside 0..2"),
        ("s.png,0,0,a\ns.png,0,0,a\n", r"row 2, column 'image': 's.png' already listed on row 1"),
        ("gone.png,0,0,a\n", r"row 1, column 'image': image file .*gone\.png not found"),
    ],
)
def test_read_labels_errors(tmp_path: Path, body: str, expected: str) -> None:
    path = labels(tmp_path, body)
    with pytest.raises(SupersubError, match=r"labels\.csv: " + expected):
        read_labels(path, tmp_path / "imgs", TAXONOMY)


# ---- folders ---------------------------------------------------------------------------------------
def nested(root: Path) -> Path:
    for rel in ("bird/robin/2.png", "bird/robin/1.png", "bird/crow/1.png", "dog/pug/x.jpg"):
        tiny(root / rel)
    write(root / "dog/pug/notes.txt", "not an image")
    (root / "dog/empty").mkdir()
    write(root / ".DS_Store", "")
    return root


def test_read_nested_assigns_indices_in_sorted_name_order(tmp_path: Path) -> None:
    ds = read_nested(nested(tmp_path))
    assert ds.taxonomy == Taxonomy(("bird", "dog"), ("crow", "robin", "pug"), (0, 0, 1))
    assert ds.names == ["bird/crow/1.png", "bird/robin/1.png", "bird/robin/2.png", "dog/pug/x.jpg"]
    assert ds.super_labels == [0, 0, 0, 1] and ds.sub_labels == [0, 1, 1, 2]
    assert ds.records[3].path == tmp_path / "dog" / "pug" / "x.jpg"
    assert ds.skipped == ["dog/empty/", "dog/pug/notes.txt"]


def test_read_nested_rejects_a_subclass_under_two_superclasses(tmp_path: Path) -> None:
    tiny(tmp_path / "bird/mixed/1.png")
    tiny(tmp_path / "dog/mixed/1.png")
    with pytest.raises(SupersubError, match=r"subclass folder 'mixed' appears under both 'bird' and 'dog'"):
        read_nested(tmp_path)


def test_read_nested_without_images_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "bird/robin/readme.txt", "x")
    with pytest.raises(SupersubError, match=r"no images found in <superclass>/<subclass>/ folders"):
        read_nested(tmp_path)


def test_read_flat_lists_images_and_skips_the_rest(tmp_path: Path) -> None:
    tiny(tmp_path / "b.PNG")
    tiny(tmp_path / "a.jpg")
    tiny(tmp_path / "sub" / "deeper.jpg")
    write(tmp_path / "notes.txt", "x")
    ds = read_flat(tmp_path)
    assert ds.names == ["a.jpg", "b.PNG"] and ds.taxonomy is None
    assert ds.super_labels == [UNLABELLED, UNLABELLED] and ds.sub_labels == [UNLABELLED, UNLABELLED]
    assert ds.skipped == ["notes.txt", "sub/"]


def test_read_flat_without_images_names_the_folder(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "x")
    with pytest.raises(SupersubError, match=rf"{tmp_path}: no image files"):
        read_flat(tmp_path)
    with pytest.raises(SupersubError, match=r"no such file or folder"):
        read_flat(tmp_path / "missing")


def test_read_dataset_detects_the_layout(tmp_path: Path) -> None:
    comp = read_dataset(competition(tmp_path / "comp"))
    assert comp.names == read_competition(tmp_path / "comp").names
    tree = read_dataset(nested(tmp_path / "tree"))
    assert tree.taxonomy is not None and tree.taxonomy.sub_names == ("crow", "robin", "pug")


def test_read_dataset_rejects_other_layouts(tmp_path: Path) -> None:
    tiny(tmp_path / "flat" / "a.jpg")
    with pytest.raises(SupersubError, match=r"flat: unrecognised dataset layout; expected either a competition"):
        read_dataset(tmp_path / "flat")
    with pytest.raises(SupersubError, match=r"missing: no such file or folder"):
        read_dataset(tmp_path / "missing")
    with pytest.raises(SupersubError, match=r"unrecognised dataset layout"):
        read_dataset(tiny(tmp_path / "one.jpg"))


@pytest.mark.skipif(not (REAL_DATA / "train_data.csv").is_file(),
                    reason=f"competition data not found at {REAL_DATA} (../shared/data beside the repository)")
def test_real_competition_csv() -> None:
    ds = read_competition(REAL_DATA)
    assert len(ds) == 6288
    assert ds.taxonomy is not None and ds.taxonomy.n_super == 3 and ds.taxonomy.n_sub == 87
    assert ds.taxonomy.super_names == ("bird", "dog", "reptile")
    assert len(set(ds.names)) == 6288
