"""``supersub discover``: the flagged images, grouped, with a template to name them and a contact sheet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli
from supersub import api
from supersub.errors import SupersubError


@pytest.fixture(scope="module")
def discovered(trained_run: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("discover") / "d"
    assert run_cli(["discover", str(trained_run), str(synth_dir / "test_images"), "--out", str(out)]) == 0
    return out


def test_the_flagged_images_are_grouped_by_level(discovered: Path, trained_run: Path, synth_dir: Path) -> None:
    clusters = pd.read_csv(discovered / "clusters.csv")
    preds = api.predict(trained_run, synth_dir / "test_images", names=True).set_index("image")
    flagged = preds[(preds["superclass_name"] == "novel") | (preds["subclass_name"] == "novel")]
    assert sorted(clusters["image"]) == sorted(flagged.index)  # exactly the images the run flags novel
    for row in clusters.itertuples():
        assert row.level == ("superclass" if preds.loc[row.image, "superclass_name"] == "novel" else "subclass")
        assert row.superclass == preds.loc[row.image, "superclass_name"]  # a new dog breed is a dog
    # a cluster lives in one set (one level, one superclass); each has its most central image ranked 1
    per_cluster = clusters.groupby("cluster")
    assert (per_cluster["level"].nunique() == 1).all() and (per_cluster["superclass"].nunique() == 1).all()
    assert (per_cluster["rank"].min() == 1).all() and (clusters["distance"] >= 0).all()
    central = clusters.loc[per_cluster["distance"].idxmin(), "rank"]
    assert (central == 1).all()


def test_the_template_has_one_editable_name_per_cluster(discovered: Path) -> None:
    clusters = pd.read_csv(discovered / "clusters.csv")
    labels = pd.read_csv(discovered / "labels.csv")
    assert list(labels.columns) == ["image", "superclass", "subclass", "cluster"]
    assert list(labels["image"]) == list(clusters["path"])
    assert (labels.groupby("cluster")["subclass"].nunique() == 1).all()
    assert labels.drop_duplicates("cluster")["subclass"].is_unique
    merged = labels.merge(clusters, left_on="image", right_on="path", suffixes=("", "_c"))
    known = merged[merged["level"] == "subclass"]
    assert (known["superclass"] == known["superclass_c"]).all()  # a new subclass under its predicted superclass
    assert all(Path(p).is_file() for p in labels["image"])


def test_the_contact_sheet_shows_every_cluster(discovered: Path) -> None:
    html = (discovered / "clusters.html").read_text(encoding="utf-8")
    clusters = pd.read_csv(discovered / "clusters.csv")
    for c in clusters["cluster"].unique():
        assert f"cluster {c}:" in html
    assert html.count("data:image/jpeg;base64") == sum(min(12, n) for n in clusters.groupby("cluster").size())


def test_groups_forces_k_and_nothing_is_overwritten_without_asking(discovered: Path, trained_run: Path,
                                                                  synth_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (discovered / "labels.csv").read_bytes()
    code = run_cli(["discover", str(trained_run), str(synth_dir / "test_images"), "--out", str(discovered), "--groups", "1"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (discovered / "labels.csv").read_bytes() == before
    d = api.discover(trained_run, synth_dir / "test_images", discovered, groups=1, overwrite=True)
    assert all(not s["estimated"] and s["groups"] == 1 for s in d.sets)
    assert d.clusters["cluster"].nunique() == len(d.sets)


def test_bad_input_is_one_line(trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["discover", str(trained_run), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "Traceback" not in err
    with pytest.raises(SupersubError, match="is a file"):
        (tmp_path / "f").write_text("x")
        api.discover(trained_run, tmp_path, tmp_path / "f")
