"""Readers that turn the supported on-disk layouts into a :class:`Dataset`.

Layouts: the competition layout (``train_data.csv`` + mapping CSVs + an image folder), a nested folder
tree ``root/<superclass>/<subclass>/<image>``, a flat folder of unlabelled images, and a labelled
evaluation CSV whose labels may be "novel". CSVs are parsed with the ``csv`` module and every cell is
validated by hand, so a malformed file fails with the file, row and column at fault instead of being
coerced into plausible garbage. Records are always sorted by name, so the same files give the same order.
"""

from __future__ import annotations

import csv
import difflib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SupersubError
from ..taxonomy import Taxonomy
from .images import IMAGE_EXTENSIONS, is_image_file
from .records import Dataset, ImageRecord

COMPETITION_CSV = "train_data.csv"
SUPER_MAPPING_CSV = "superclass_mapping.csv"
SUB_MAPPING_CSV = "subclass_mapping.csv"

LABEL_COLUMNS = ("image", "superclass_index", "subclass_index")
OPTIONAL_LABEL_COLUMNS = ("description", "kind")
MAPPING_COLUMNS = ("index", "class")

_INTEGER = re.compile(r"[+-]?[0-9]+")
# No class index needs more digits; int() itself refuses strings over 4,300 digits with a ValueError.
_MAX_INDEX_DIGITS = 18
_SHOWN_CHARS = 40
_LISTED_ENTRIES = 5

log = logging.getLogger("supersub")

_LAYOUTS_HELP = (
    f"expected either a competition folder (containing {COMPETITION_CSV}, {SUPER_MAPPING_CSV}, "
    f"{SUB_MAPPING_CSV} and an image folder), a nested folder <superclass>/<subclass>/<images>, or a CSV of "
    "image,superclass,subclass names"
)


# ---- CSV plumbing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    """One CSV data row; ``number`` is 1-based and counts data rows (the header is not row 1)."""

    number: int
    cells: dict[str, str]


def _read_csv(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...] = (), *, any_other_columns: bool = False
) -> list[_Row]:
    """Parse ``path`` strictly: known columns only, the same field count on every row, at least one row.

    ``any_other_columns`` accepts unknown columns besides the required ones (they are carried, unchecked).
    """
    table = _csv_table(path)
    if not table:
        raise SupersubError(f"{path}: empty file (expected a header row: {','.join(required)})")
    header = [name.strip() for name in table[0]]
    _check_header(path, header, required, tuple(header) if any_other_columns else optional)
    rows: list[_Row] = []
    for number, fields in enumerate(table[1:], 1):
        if not fields:  # a blank line
            continue
        if len(fields) != len(header):
            raise SupersubError(f"{path}: row {number} has {len(fields)} fields but the header has {len(header)}")
        rows.append(_Row(number, dict(zip(header, fields))))
    if not rows:
        raise SupersubError(f"{path}: no data rows after the header")
    return rows


def _csv_table(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise SupersubError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, strict=True)
            try:
                return list(reader)
            except csv.Error as e:
                raise SupersubError(f"{path}: malformed CSV at line {reader.line_num} ({e})") from None
    except UnicodeDecodeError as e:
        raise SupersubError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise SupersubError(f"{path}: cannot read ({e.strerror})") from None


def _check_header(path: Path, header: list[str], required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    for name in header:
        if header.count(name) > 1:
            raise SupersubError(f"{path}: column {_shown(name)} appears twice in the header")
        if name not in required and name not in optional:
            allowed = ", ".join(required + optional)
            raise SupersubError(f"{path}: unexpected column {_shown(name)} (allowed columns: {allowed})")
    for name in required:
        if name not in header:
            raise SupersubError(f"{path}: missing required column {name!r} (header: {_clipped(','.join(header))})")


def _cell_error(path: Path, row: _Row, column: str, problem: str) -> SupersubError:
    return SupersubError(f"{path}: row {row.number}, column {column!r}: {problem}")


def _shown(value: str) -> str:
    """A cell quoted for an error message, cut short so a runaway cell cannot flood the one-line error."""
    return repr(value) if len(value) <= _SHOWN_CHARS else repr(value[:_SHOWN_CHARS]) + "..."


def _clipped(text: object, limit: int = 300) -> str:
    """A path or header for an error message: in full unless it is longer than any real file name could be."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _int_cell(path: Path, row: _Row, column: str) -> int:
    """An integer cell; "3.0", "", "three" are errors rather than being coerced."""
    value = row.cells[column].strip()
    if not _INTEGER.fullmatch(value):
        raise _cell_error(path, row, column, f"{_shown(value)} is not an integer")
    if len(value.lstrip("+-").lstrip("0")) > _MAX_INDEX_DIGITS:
        raise _cell_error(path, row, column, f"{_shown(value)} is far too large for a class index")
    return int(value)


# ---- mapping CSVs ----------------------------------------------------------------------------------
def read_mapping(csv_path: Path) -> list[str]:
    """Seen class names of a competition mapping CSV (``index,class``; indices 0..n, index n is "novel")."""
    path = Path(csv_path)
    names: dict[int, tuple[_Row, str]] = {}
    for row in _read_csv(path, MAPPING_COLUMNS):
        index = _int_cell(path, row, "index")
        if index in names:
            raise _cell_error(path, row, "index", f"index {index} already used on row {names[index][0].number}")
        name = row.cells["class"].strip()
        if not name:
            raise _cell_error(path, row, "class", "empty class name")
        names[index] = (row, name)
    last = len(names) - 1
    for index, (row, _) in names.items():
        if not 0 <= index <= last:
            raise _cell_error(path, row, "index", f"index {index} is outside 0..{last} (indices must be 0..n)")
    novel_row, novel_name = names[last]
    if novel_name.lower() != "novel":
        raise _cell_error(
            path, novel_row, "class", f"the last index ({last}) must be 'novel', found {_shown(novel_name)}"
        )
    if last == 0:
        raise SupersubError(f"{path}: no seen classes (only 'novel')")
    _check_unique_names(path, [names[i] for i in range(last)])
    return [names[i][1] for i in range(last)]


def _check_unique_names(path: Path, rows: list[tuple[_Row, str]]) -> None:
    first: dict[str, _Row] = {}
    for row, name in rows:
        if name.lower() == "novel":
            raise _cell_error(path, row, "class", "'novel' may only be the last index")
        if name in first:
            raise _cell_error(path, row, "class", f"class {_shown(name)} already named on row {first[name].number}")
        first[name] = row


# ---- labelled image CSVs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Labelled:
    row: _Row
    name: str
    path: Path
    super_index: int
    sub_index: int


def _read_labelled(csv_path: Path, images_dir: Path, max_super: int, max_sub: int, why: str) -> list[_Labelled]:
    """Rows of an ``image,superclass_index,subclass_index`` CSV, indices checked against 0..max_*."""
    path = Path(csv_path)
    rows = _read_csv(path, LABEL_COLUMNS, OPTIONAL_LABEL_COLUMNS)
    first_row: dict[str, _Row] = {}
    out: list[_Labelled] = []
    for row in rows:
        name = _image_cell(path, row)
        if name in first_row:
            raise _cell_error(path, row, "image", f"{_shown(name)} already listed on row {first_row[name].number}")
        first_row[name] = row
        k = _index_cell(path, row, "superclass_index", max_super, why)
        j = _index_cell(path, row, "subclass_index", max_sub, why)
        out.append(_Labelled(row, name, Path(images_dir) / name, k, j))
    _check_files_exist(path, out)
    return out


def _image_cell(path: Path, row: _Row) -> str:
    """The image name, normalised ("./a.jpg" -> "a.jpg") so one file cannot be listed under two names."""
    name = row.cells["image"].strip()
    if not name:
        raise _cell_error(path, row, "image", "empty image name")
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise _cell_error(path, row, "image", f"{_shown(name)} must be a path inside the image folder")
    if not Path(name).parts:
        raise _cell_error(path, row, "image", f"{_shown(name)} is not a file name")
    return Path(name).as_posix()


def _is_file(path: Path) -> bool:
    """``Path.is_file`` that answers False (not OSError) for names the OS cannot even look up (too long)."""
    try:
        return path.is_file()
    except OSError:
        return False


def _index_cell(path: Path, row: _Row, column: str, maximum: int, why: str) -> int:
    index = _int_cell(path, row, column)
    if not 0 <= index <= maximum:
        raise _cell_error(path, row, column, f"index {index} is outside 0..{maximum} ({why})")
    return index


def _check_files_exist(csv_path: Path, items: list[_Labelled]) -> None:
    missing = [item for item in items if not _is_file(item.path)]
    if missing:
        first = missing[0]
        raise _cell_error(
            csv_path, first.row, "image",
            f"image file {_clipped(first.path)} not found ({len(missing)} missing in total)",
        )


def _records(items: list[_Labelled]) -> list[ImageRecord]:
    return sorted(
        (ImageRecord(item.path, item.name, item.super_index, item.sub_index) for item in items),
        key=lambda r: r.name,
    )


def _check_one_superclass_per_subclass(csv_path: Path, items: list[_Labelled]) -> None:
    """Name the offending rows here; Taxonomy.from_pairs would only name the subclass."""
    owner: dict[int, _Labelled] = {}
    for item in items:
        first = owner.setdefault(item.sub_index, item)
        if first.super_index != item.super_index:
            raise _cell_error(
                csv_path,
                item.row,
                "superclass_index",
                f"subclass {item.sub_index} is labelled superclass {item.super_index} here "
                f"but superclass {first.super_index} on row {first.row.number}",
            )


def read_competition(
    root: Path, csv_name: str = COMPETITION_CSV, images_dir: str = "train_images"
) -> Dataset:
    """The competition training layout; the taxonomy comes from the mapping CSVs plus the labelled pairs."""
    root = Path(root)
    if not root.is_dir():
        raise SupersubError(f"{root}: not a folder")
    super_names = read_mapping(root / SUPER_MAPPING_CSV)
    sub_names = read_mapping(root / SUB_MAPPING_CSV)
    csv_path = root / csv_name
    why = "a training set may only use seen classes; the last mapping index is 'novel'"
    items = _read_labelled(csv_path, root / images_dir, len(super_names) - 1, len(sub_names) - 1, why)
    _check_one_superclass_per_subclass(csv_path, items)
    pairs = [(item.super_index, item.sub_index) for item in items]
    taxonomy = Taxonomy.from_pairs(super_names, sub_names, pairs, source=str(csv_path))
    return Dataset(_records(items), taxonomy, source=str(csv_path))


def read_labels(csv_path: Path, images_dir: Path, taxonomy: Taxonomy) -> Dataset:
    """A labelled evaluation CSV in ``taxonomy``'s index space, where the novel indices are allowed."""
    path = Path(csv_path)
    why = "seen classes or the novel index"
    items = _read_labelled(path, Path(images_dir), taxonomy.novel_super, taxonomy.novel_sub, why)
    for item in items:
        _check_label_pair(path, item, taxonomy)
    return Dataset(_records(items), taxonomy, source=str(path))


def _check_label_pair(csv_path: Path, item: _Labelled, taxonomy: Taxonomy) -> None:
    k, j = item.super_index, item.sub_index
    if k == taxonomy.novel_super and j != taxonomy.novel_sub:
        raise _cell_error(
            csv_path, item.row, "subclass_index",
            f"superclass is novel ({k}) so the subclass must be novel ({taxonomy.novel_sub}), found {j}",
        )
    if j != taxonomy.novel_sub and taxonomy.sub_to_super[j] != k:
        raise _cell_error(
            csv_path, item.row, "superclass_index",
            f"subclass {j} ({taxonomy.sub_names[j]!r}) belongs to superclass {taxonomy.sub_to_super[j]} "
            f"({taxonomy.super_names[taxonomy.sub_to_super[j]]!r}), not {k}",
        )


# ---- folders ---------------------------------------------------------------------------------------
def _visible(folder: Path) -> Iterator[Path]:
    """Entries of ``folder`` in name order; hidden entries (".DS_Store", "._x.jpg", ".git") are ignored."""
    return (p for p in sorted(folder.iterdir(), key=lambda p: p.name) if not p.name.startswith("."))


def _require_folder(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise SupersubError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise SupersubError(f"{root}: not a folder")
    return root


def _split_images(folder: Path, root: Path) -> tuple[list[Path], list[str]]:
    """Image files directly in ``folder``, and every other entry (relative to ``root``) as skipped."""
    images: list[Path] = []
    skipped: list[str] = []
    for p in _visible(folder):
        if p.is_file() and is_image_file(p):
            images.append(p)
        else:
            skipped.append(_relative(p, root))
    return images, skipped


def _relative(p: Path, root: Path) -> str:
    """POSIX path relative to ``root``; folders end in "/" so skipped lists show what was a folder."""
    return p.relative_to(root).as_posix() + ("/" if p.is_dir() else "")


def _listing(entries: list[str]) -> str:
    shown = ", ".join(entries[:_LISTED_ENTRIES])
    more = len(entries) - _LISTED_ENTRIES
    return shown + (f" and {more} more" if more > 0 else "")


def _report_skipped(root: Path, skipped: list[str]) -> None:
    """Warn about ignored entries, so images with an unexpected extension are not dropped unnoticed."""
    if skipped:
        log.warning("%s: ignored %d entries that are not images: %s", root, len(skipped), _listing(skipped))


def read_flat(root: Path) -> Dataset:
    """Unlabelled images directly in ``root`` (not recursive); other entries are listed in ``skipped``."""
    root = _require_folder(root)
    images, skipped = _split_images(root, root)
    if not images:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        found = f"; found only {_listing(skipped)}" if skipped else ""
        raise SupersubError(f"{root}: no image files in this folder (extensions: {extensions}){found}")
    _report_skipped(root, skipped)
    return Dataset([ImageRecord(p, p.name) for p in images], None, source=str(root), skipped=skipped)


def _scan_nested(root: Path) -> tuple[dict[tuple[str, str], list[Path]], list[str]]:
    """Images per (superclass, subclass) folder pair; stray files and image-less folders are skipped."""
    classes: dict[tuple[str, str], list[Path]] = {}
    skipped: list[str] = []
    for sup in _visible(root):
        if not sup.is_dir():
            skipped.append(_relative(sup, root))
            continue
        for sub in _visible(sup):
            if not sub.is_dir():
                skipped.append(_relative(sub, root))
                continue
            images, other = _split_images(sub, root)
            skipped.extend(other)
            if images:
                classes[(sup.name, sub.name)] = images
            else:
                skipped.append(_relative(sub, root))
        if not any(key[0] == sup.name for key in classes):
            skipped.append(_relative(sup, root))
    return classes, skipped


def _check_unique_subclass_names(root: Path, keys: list[tuple[str, str]]) -> None:
    owner: dict[str, str] = {}
    for sup, sub in keys:
        first = owner.setdefault(sub, sup)
        if first != sup:
            raise SupersubError(
                f"{root}: subclass folder {sub!r} appears under both {first!r} and {sup!r}; "
                "subclass names must be unique across superclasses"
            )


def read_nested(root: Path) -> Dataset:
    """``root/<superclass>/<subclass>/<image>``; indices follow sorted names, subclasses numbered globally."""
    root = _require_folder(root)
    classes, skipped = _scan_nested(root)
    if not classes:
        raise SupersubError(f"{root}: no images found in <superclass>/<subclass>/ folders")
    keys = sorted(classes)
    _check_unique_subclass_names(root, keys)
    super_names = sorted({sup for sup, _ in keys})
    sub_to_super = [super_names.index(sup) for sup, _ in keys]
    taxonomy = Taxonomy(tuple(super_names), tuple(sub for _, sub in keys), tuple(sub_to_super), source=str(root))
    records = [
        ImageRecord(p, p.relative_to(root).as_posix(), sub_to_super[j], j)
        for j, key in enumerate(keys)
        for p in classes[key]
    ]
    _report_skipped(root, skipped)
    return Dataset(sorted(records, key=lambda r: r.name), taxonomy, source=str(root), skipped=skipped)


NAMED_COLUMNS = ("image", "superclass", "subclass")


def read_named(csv_path: Path) -> Dataset:
    """The named training layout: a CSV of ``image,superclass,subclass`` (class names, other columns ignored, such
    as the ``cluster`` of ``supersub discover``'s labels.csv). An image is an absolute path or a path relative to
    the CSV's folder. Classes are indexed in the order they first appear in the file (``train --extend`` writes
    the run's classes first, so they keep their indices)."""
    path = Path(csv_path)
    rows = _read_csv(path, NAMED_COLUMNS, any_other_columns=True)
    supers: dict[str, int] = {}
    subs: dict[str, int] = {}
    owner: dict[str, tuple[str, _Row]] = {}
    first_row: dict[str, _Row] = {}
    records: list[ImageRecord] = []
    for row in rows:
        name = row.cells["image"].strip()
        if not name:
            raise _cell_error(path, row, "image", "empty image name")
        file = Path(name) if Path(name).is_absolute() else path.parent / name
        key = str(file.resolve())
        if key in first_row:
            raise _cell_error(path, row, "image", f"{_shown(name)} already listed on row {first_row[key].number}")
        first_row[key] = row
        sup, sub = (" ".join(row.cells[c].split()) for c in ("superclass", "subclass"))
        for column, value in (("superclass", sup), ("subclass", sub)):
            if not value:
                raise _cell_error(path, row, column, f"empty {column} name")
            if value.lower() == "novel":
                raise _cell_error(path, row, column, "'novel' is reserved for the novel class")
        first_owner = owner.setdefault(sub, (sup, row))
        if first_owner[0] != sup:
            raise _cell_error(path, row, "superclass", f"subclass {_shown(sub)} is under {_shown(first_owner[0])} on "
                              f"row {first_owner[1].number}; a subclass belongs to one superclass")
        if not _is_file(file):
            raise _cell_error(path, row, "image", f"image file {_clipped(file)} not found")
        k = supers.setdefault(sup, len(supers))
        j = subs.setdefault(sub, len(subs))
        records.append(ImageRecord(file, Path(name).as_posix(), k, j))
    sub_to_super = [supers[owner[sub][0]] for sub in subs]
    taxonomy = Taxonomy(tuple(supers), tuple(subs), tuple(sub_to_super), source=str(path))
    return Dataset(sorted(records, key=lambda r: r.name), taxonomy, source=str(path))


def _looks_nested(root: Path) -> bool:
    return any(
        f.is_file() and is_image_file(f)
        for sup in _visible(root)
        if sup.is_dir()
        for sub in _visible(sup)
        if sub.is_dir()
        for f in _visible(sub)
    )


def read_dataset(path: Path) -> Dataset:
    """Read a labelled training set, detecting its layout (competition CSV or nested folders)."""
    root = Path(path)
    if not root.exists():
        raise SupersubError(f"{root}: no such file or folder")
    if root.is_dir() and (root / COMPETITION_CSV).is_file():
        return read_competition(root)
    if root.is_dir() and _looks_nested(root):
        return read_nested(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return read_named(root)
    raise SupersubError(f"{root}: unrecognised dataset layout; {_LAYOUTS_HELP}")


def images_folder_for(csv_path: Path) -> Path:
    """The competition's pairing of a CSV with its images: ``X_data.csv`` -> ``X_images/`` beside it.

    Falls back to the CSV's own folder when no such sibling folder exists.
    """
    csv_path = Path(csv_path)
    stem = csv_path.stem[: -len("_data")] if csv_path.stem.endswith("_data") else csv_path.stem
    sibling = csv_path.parent / f"{stem}_images"
    return sibling if sibling.is_dir() else csv_path.parent


def read_image_list(csv_path: Path) -> Dataset:
    """Unlabelled images named in the ``image`` column of a CSV (other columns are ignored).

    Used for outlier-exposure pools such as make_protocol's ``novel_data.csv``; the images are looked up
    with :func:`images_folder_for`.
    """
    path = Path(csv_path)
    rows = _read_csv(path, ("image",), any_other_columns=True)
    folder = images_folder_for(path)
    records: list[ImageRecord] = []
    for row in rows:
        name = _image_cell(path, row)
        if not _is_file(folder / name):
            raise _cell_error(path, row, "image", f"image file {_clipped(folder / name)} not found")
        records.append(ImageRecord(folder / name, name))
    return Dataset(records, None, source=str(path))


def read_images(path: Path) -> Dataset:
    """Unlabelled images to predict: a flat folder, a nested ``<superclass>/<subclass>/`` folder or a CSV.

    A CSV names its images in the ``image`` column (see :func:`read_image_list`); a nested folder's images
    are named by their path below ``path`` and its folder names are ignored.
    """
    root = Path(path)
    if root.is_file():
        return read_image_list(root)
    root = _require_folder(root)
    if not any(p.is_file() and is_image_file(p) for p in _visible(root)) and _looks_nested(root):
        ds = read_nested(root)
        return Dataset([ImageRecord(r.path, r.name) for r in ds.records], None, ds.source, ds.skipped)
    return read_flat(root)


def read_nested_labels(root: Path, taxonomy: Taxonomy, strict: bool = False) -> Dataset:
    """A labelled ``root/<superclass>/<subclass>/`` folder in a trained run's label space.

    Folder names are matched against ``taxonomy`` by name: an unknown superclass folder is novel at both
    levels, an unknown subclass folder under a known superclass is a novel subclass of it. A subclass matches
    by its own name or as ``superclass/subclass`` (the competition mapping's spelling). A typo (``Dog/`` for
    ``dog``) would silently turn seen images into "novel" truth, so every unmatched folder is logged with the
    closest training name, and ``strict`` refuses them.
    """
    ds = read_nested(root)
    assert ds.taxonomy is not None
    seen = ds.taxonomy
    super_of = {name: k for k, name in enumerate(taxonomy.super_names)}
    sub_of = {name: j for j, name in enumerate(taxonomy.sub_names)}
    records: list[ImageRecord] = []
    unmatched: dict[str, tuple[str, str | None]] = {}  # folder -> (what its images count as, closest training name)
    counts: dict[str, int] = {}
    for r in ds.records:
        sup_name, sub_name = seen.super_names[r.super_index], seen.sub_names[r.sub_index]
        k = super_of.get(sup_name, taxonomy.novel_super)
        j = sub_of.get(sub_name, sub_of.get(f"{sup_name}/{sub_name}", taxonomy.novel_sub))  # "bird/sparrow" too
        j = taxonomy.novel_sub if k == taxonomy.novel_super else j
        if j != taxonomy.novel_sub and taxonomy.sub_to_super[j] != k:
            owner = taxonomy.super_names[taxonomy.sub_to_super[j]]
            raise SupersubError(f"{root}: subclass folder {sub_name!r} is under {sup_name!r}, but the run knows it "
                                f"as a subclass of {owner!r}")
        if k == taxonomy.novel_super:
            folder, what = sup_name, ("a novel superclass", _closest(sup_name, taxonomy.super_names))
        elif j == taxonomy.novel_sub:
            names = [taxonomy.sub_names[i].rsplit("/", 1)[-1] for i in taxonomy.subs_of(k)]
            folder, what = f"{sup_name}/{sub_name}", (f"a novel subclass of {sup_name!r}", _closest(sub_name, names))
        else:
            folder = ""
        if folder:
            unmatched.setdefault(folder, what)
            counts[folder] = counts.get(folder, 0) + 1
        records.append(ImageRecord(r.path, r.name, k, j))
    for folder, (what, closest) in unmatched.items():
        line = (f"{root}: folder {folder!r} matches no class of the run: its {counts[folder]} image(s) count as {what} "
                f"({'closest training name: ' + repr(closest) if closest else 'no training name is close'})")
        if strict:
            more = f"; {len(unmatched) - 1} more unknown folder(s)" if len(unmatched) > 1 else ""
            raise SupersubError(f"{line}{more}; --strict refuses unknown folders (without it they are novel)")
        log.warning("%s", line)
    return Dataset(records, taxonomy, ds.source, ds.skipped)


def _closest(name: str, candidates: Sequence[str]) -> str | None:
    """The training name a folder name was most likely meant to be: the same up to case, else difflib's best."""
    for candidate in candidates:
        if candidate.lower() == name.lower():
            return candidate
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in candidates], n=1, cutoff=0.6)
    return next((c for c in candidates if close and c.lower() == close[0]), None)
