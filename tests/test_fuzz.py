"""Property tests: the CSV readers fail only with SupersubError, and the decision rule keeps its invariants.

The readers see random cells (small, negative and huge integers, floats, text, empty, unicode, quotes)
written both as well-formed CSV and as raw comma-joined text; whatever they accept must be in range.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from supersub.data.formats import read_competition, read_image_list, read_labels, read_mapping
from supersub.errors import SupersubError
from supersub.novelty.decide import decide
from supersub.taxonomy import Taxonomy

# Derandomized so every run checks the same examples; SUPERSUB_FUZZ_EXAMPLES=5000 digs deeper on demand.
EXAMPLES = int(os.environ.get("SUPERSUB_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

SUPER_MAPPING = "index,class\n0,A\n1,B\n2,novel\n"
SUB_MAPPING = "index,class\n0,a1\n1,a2\n2,b1\n3,novel\n"
TAXONOMY = Taxonomy(("A", "B"), ("a1", "a2", "b1"), (0, 0, 1))
IMAGES = ("a.jpg", "b.jpg", "c.png", "d.jpg")

# ---- random CSV content --------------------------------------------------------------------------
AWKWARD = ['"', '""', '"1"', "'1'", " 1 ", "+1", "-0", "1e3", "0x1", "1_000", "\u0663", "\uff11", "1\n2",
           "a,b", "\x00", "novel", "NOVEL", " novel ", "..", "../a.jpg", "/etc/passwd", "a.jpg ", "./a.jpg",
           "9" * 5000, "-" + "1" * 4400, "x" * 300 + ".jpg"]
CELLS = st.one_of(
    st.integers(-3, 6).map(str),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
    st.sampled_from(["", " ", *AWKWARD]),
    st.sampled_from(IMAGES),
)


def _as_csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _as_raw(rows: list[list[str]]) -> str:
    """Comma-joined without quoting: stray quotes and commas make ragged or malformed rows."""
    return "".join(",".join(r) + "\n" for r in rows)


Row = dict[str, str]


@st.composite
def tables(draw: st.DrawFn, headers: list[list[str]], pool: list[Row]) -> str:
    """A CSV text whose rows are valid ``pool`` rows with random cells mutated, plus random rows.

    Starting from valid rows keeps a good share of examples on the accepting path, where the range and
    consistency assertions bite; the header is sometimes random too, and rows are sometimes ragged.
    """
    random_header = not draw(st.integers(0, 3))
    header = draw(st.lists(CELLS, min_size=1, max_size=4) if random_header else st.sampled_from(headers))
    chosen = draw(st.permutations(pool))[: draw(st.one_of(st.just(len(pool)), st.integers(0, len(pool))))]
    rows = [[r[c] if c in r and draw(st.integers(0, 15)) else draw(CELLS) for c in header] for r in chosen]
    if not draw(st.integers(0, 3)):
        rows.append(draw(st.lists(CELLS, min_size=len(header), max_size=len(header))))
    if rows and not draw(st.integers(0, 9)):
        rows[draw(st.integers(0, len(rows) - 1))] = draw(st.lists(CELLS, max_size=len(header) + 1))
    return draw(st.sampled_from([_as_csv, _as_raw]))([header, *rows])


LABEL_HEADERS = [["image", "superclass_index", "subclass_index"],
                 ["image", "superclass_index", "subclass_index", "description"],
                 ["subclass_index", "image", "superclass_index", "kind"]]


def _labels(*rows: tuple[str, str, str]) -> list[Row]:
    return [{"image": i, "superclass_index": k, "subclass_index": j} for i, k, j in rows]


TRAIN_POOL = _labels(("a.jpg", "0", "0"), ("b.jpg", "0", "1"), ("c.png", "1", "2"), ("d.jpg", "1", "2"))
TEST_POOL = _labels(("a.jpg", "0", "0"), ("b.jpg", "0", "3"), ("c.png", "2", "3"), ("d.jpg", "1", "2"))
MAPPING_POOL = [{"index": "0", "class": "A"}, {"index": "1", "class": "B"}, {"index": "2", "class": "novel"}]
LIST_POOL = [{"image": name} for name in IMAGES]


@pytest.fixture(scope="module")
def competition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A competition folder whose train_data.csv each example rewrites; the images are empty files."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "superclass_mapping.csv").write_text(SUPER_MAPPING, encoding="utf-8")
    (root / "subclass_mapping.csv").write_text(SUB_MAPPING, encoding="utf-8")
    (root / "train_images").mkdir()
    for name in IMAGES:
        (root / "train_images" / name).touch()
    return root


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _rejected(e: SupersubError, path: Path) -> None:
    """What every refusal must be: one line that names the file at fault, not a wall of text."""
    message = str(e)
    assert message and "\n" not in message
    assert path.name in message, message
    assert len(message) < 2000 + len(str(path)), message  # huge cells are shown cut short
    event("rejected")


def _check_competition(ds, root: Path) -> None:
    event("accepted")
    tax = ds.taxonomy
    assert tax is not None and tax.super_names == ("A", "B") and tax.sub_names == ("a1", "a2", "b1")
    assert ds.records and len(set(ds.names)) == len(ds.names)
    for r in ds.records:
        assert 0 <= r.super_index <= 1 and 0 <= r.sub_index <= 2
        assert tax.sub_to_super[r.sub_index] == r.super_index
        assert r.path.is_file() and r.path.parent == root / "train_images"


def _check_labels(ds, images: Path) -> None:
    event("accepted")
    assert ds.records and len(set(ds.names)) == len(ds.names)
    for r in ds.records:
        assert 0 <= r.super_index <= TAXONOMY.novel_super and 0 <= r.sub_index <= TAXONOMY.novel_sub
        if r.super_index == TAXONOMY.novel_super:
            assert r.sub_index == TAXONOMY.novel_sub
        if r.sub_index != TAXONOMY.novel_sub:
            assert TAXONOMY.sub_to_super[r.sub_index] == r.super_index
        assert r.path.is_file() and r.path.parent == images


def _check_mapping(names: list[str]) -> None:
    event("accepted")
    assert names and len(set(names)) == len(names)
    assert all(n.strip() and n.strip().lower() != "novel" for n in names)


def _check_image_list(ds, folder: Path) -> None:
    event("accepted")
    assert ds.records  # (a pool may list an image twice)
    assert all(r.path.is_file() and r.path.parent == folder for r in ds.records)


@FUZZ
@given(text=tables(LABEL_HEADERS, TRAIN_POOL))
def test_read_competition_accepts_only_seen_consistent_labels(competition: Path, text: str) -> None:
    path = _write(competition / "train_data.csv", text)
    try:
        ds = read_competition(competition)
    except SupersubError as e:
        return _rejected(e, path)
    _check_competition(ds, competition)


@FUZZ
@given(text=tables(LABEL_HEADERS, TEST_POOL))
def test_read_labels_keeps_novel_consistent(competition: Path, text: str) -> None:
    labels = _write(competition / "labels.csv", text)
    try:
        ds = read_labels(labels, competition / "train_images", TAXONOMY)
    except SupersubError as e:
        return _rejected(e, labels)
    _check_labels(ds, competition / "train_images")


@FUZZ
@given(text=tables([["index", "class"], ["class", "index"]], MAPPING_POOL))
def test_read_mapping_returns_distinct_seen_names(competition: Path, text: str) -> None:
    mapping = _write(competition / "mapping.csv", text)
    try:
        names = read_mapping(mapping)
    except SupersubError as e:
        return _rejected(e, mapping)
    _check_mapping(names)


@FUZZ
@given(text=tables([["image"], ["image", "superclass_index", "subclass_index"], ["note", "image"]], LIST_POOL))
def test_read_image_list_returns_existing_files(competition: Path, text: str) -> None:
    listing = _write(competition / "train_images" / "pool.csv", text)
    try:
        ds = read_image_list(listing)
    except SupersubError as e:
        return _rejected(e, listing)
    _check_image_list(ds, competition / "train_images")


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_arbitrary_files_are_refused_in_one_line_or_read_consistently(competition: Path, raw: bytes) -> None:
    """Whole-file garbage (including invalid UTF-8) in each CSV the readers open: whatever is accepted
    keeps the same invariants as above, whatever is refused is one line naming the file."""
    images = competition / "train_images"
    for name, read, check in (
        ("train_data.csv", lambda p: read_competition(competition), lambda r: _check_competition(r, competition)),
        ("labels.csv", lambda p: read_labels(p, images, TAXONOMY), lambda r: _check_labels(r, images)),
        ("mapping.csv", read_mapping, _check_mapping),
        ("train_images/pool.csv", read_image_list, lambda r: _check_image_list(r, images)),
    ):
        path = _write(competition / name, "")
        path.write_bytes(raw)
        try:
            result = read(path)
        except SupersubError as e:
            _rejected(e, path)
            continue
        check(result)


def test_the_unmutated_pools_are_read_exactly(competition: Path) -> None:
    """The starting rows of the generators parse to what they say: the properties above are not vacuous
    (a reader that refused everything would pass them all)."""
    _write(competition / "train_data.csv", _as_csv([list(TRAIN_POOL[0]), *[list(r.values()) for r in TRAIN_POOL]]))
    ds = read_competition(competition)
    assert [(r.path.name, r.super_index, r.sub_index) for r in ds.records] == [
        (r["image"], int(r["superclass_index"]), int(r["subclass_index"])) for r in TRAIN_POOL]
    labels = _write(competition / "labels.csv", _as_csv([list(TEST_POOL[0]), *[list(r.values()) for r in TEST_POOL]]))
    ds = read_labels(labels, competition / "train_images", TAXONOMY)
    assert [(r.super_index, r.sub_index) for r in ds.records] == [(0, 0), (0, 3), (2, 3), (1, 2)]
    mapping = _write(competition / "mapping.csv", _as_csv([["index", "class"], *[list(r.values()) for r in
                                                                                  MAPPING_POOL]]))
    assert read_mapping(mapping) == ["A", "B"]
    listing = _write(competition / "train_images" / "pool.csv", _as_csv([["image"], *[[r["image"]] for r in
                                                                                     LIST_POOL]]))
    assert [r.path.name for r in read_image_list(listing).records] == list(IMAGES)


# ---- the decision rule ---------------------------------------------------------------------------
WEIGHTS = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.25, 0.5, 1.0]))
TAUS = st.one_of(st.floats(0.0, 1.2), st.sampled_from([0.0, 0.25, 0.5, 1.0]))


def _normalised(rows: list[list[float]], dtype: torch.dtype) -> torch.Tensor:
    t = torch.tensor(rows, dtype=torch.float64)
    t[t.sum(dim=1) == 0] = 1.0  # an all-zero row becomes uniform
    return (t / t.sum(dim=1, keepdim=True)).to(dtype)


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(N, K) and (N, M) probability rows (ties and zeros included) and a random sub->super map."""
    n, k, m = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    sup = _normalised(draw(st.lists(st.lists(WEIGHTS, min_size=k, max_size=k), min_size=n, max_size=n)), dtype)
    sub = _normalised(draw(st.lists(st.lists(WEIGHTS, min_size=m, max_size=m), min_size=n, max_size=n)), dtype)
    return sup, sub, draw(st.lists(st.integers(0, k - 1), min_size=m, max_size=m))


@FUZZ
@given(problem=problems(), tau_super=TAUS, tau_sub=TAUS)
def test_decision_is_hierarchically_consistent(problem: tuple, tau_super: float, tau_sub: float) -> None:
    sup, sub, s2s = problem
    k, m = sup.shape[1], sub.shape[1]
    d = decide(sup, sub, s2s, tau_super, tau_sub)
    # thresholds are compared in the probabilities' dtype (a float32 tensor rounds a float64 tau)
    t_super, t_sub = (float(torch.tensor(t, dtype=sup.dtype)) for t in (tau_super, tau_sub))
    for i in range(len(sup)):
        ks, js = int(d.super_pred[i]), int(d.sub_pred[i])
        assert 0 <= ks <= k and 0 <= js <= m
        if ks == k:  # novel superclass => novel subclass
            assert js == m and float(d.super_conf[i]) < t_super
        else:  # a seen superclass is the argmax and cleared its threshold
            assert float(sup[i, ks]) == float(sup[i].max()) and float(d.super_conf[i]) >= t_super
        if js != m:  # a seen subclass belongs to the predicted superclass
            assert s2s[js] == ks and float(d.sub_conf[i]) >= t_sub


def _novel(pred: torch.Tensor, novel_index: int) -> torch.Tensor:
    return pred == novel_index


@FUZZ
@given(problem=problems(), taus=st.lists(TAUS, min_size=4, max_size=4))
def test_raising_a_threshold_never_turns_novel_into_seen(problem: tuple, taus: list[float]) -> None:
    sup, sub, s2s = problem
    k, m = sup.shape[1], sub.shape[1]
    lo_super, hi_super = sorted(taus[:2])
    lo_sub, hi_sub = sorted(taus[2:])
    low = decide(sup, sub, s2s, lo_super, lo_sub)
    for high in (decide(sup, sub, s2s, hi_super, lo_sub), decide(sup, sub, s2s, lo_super, hi_sub),
                 decide(sup, sub, s2s, hi_super, hi_sub)):
        assert not (_novel(low.super_pred, k) & ~_novel(high.super_pred, k)).any()
        assert not (_novel(low.sub_pred, m) & ~_novel(high.sub_pred, m)).any()
        # what is still seen at the higher threshold was predicted the same way at the lower one
        seen_super, seen_sub = ~_novel(high.super_pred, k), ~_novel(high.sub_pred, m)
        assert torch.equal(high.super_pred[seen_super], low.super_pred[seen_super])
        assert torch.equal(high.sub_pred[seen_sub], low.sub_pred[seen_sub])


@FUZZ
@given(problem=problems(), data=st.data())
def test_caller_confidences_keep_the_invariants(problem: tuple, data: st.DataObject) -> None:
    """Any novelty score in the "higher = more seen" orientation (here random) obeys the same rule."""
    sup, sub, s2s = problem
    n, k, m = len(sup), sup.shape[1], sub.shape[1]
    scores = st.lists(st.floats(-5.0, 5.0), min_size=n, max_size=n).map(torch.tensor)
    s_conf, b_conf = data.draw(scores), data.draw(scores)
    lo, hi = sorted(data.draw(st.lists(st.floats(-5.0, 5.0), min_size=2, max_size=2)))
    low = decide(sup, sub, s2s, lo, lo, super_conf=s_conf, sub_conf=b_conf)
    high = decide(sup, sub, s2s, hi, hi, super_conf=s_conf, sub_conf=b_conf)
    for d, tau in ((low, lo), (high, hi)):
        assert torch.equal(_novel(d.super_pred, k), s_conf < tau)
        assert (d.sub_pred[_novel(d.super_pred, k)] == m).all()
        seen = ~_novel(d.sub_pred, m)
        assert all(s2s[int(j)] == int(c) for j, c in zip(d.sub_pred[seen], d.super_pred[seen]))
    assert not (_novel(low.sub_pred, m) & ~_novel(high.sub_pred, m)).any()
