"""``supersub train --extend``: a run's data plus newly named images, trained with its config; the taxonomy grows.
Also the named training layout (image,superclass,subclass) that labels.csv is written in."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import TINY_TRAIN_ARGS, run_cli
from supersub import api
from supersub.data.formats import read_dataset
from supersub.errors import SupersubError


def _write(path: Path, rows: list[list[str]]) -> Path:
    pd.DataFrame(rows, columns=["image", "superclass", "subclass"]).to_csv(path, index=False)
    return path


def test_the_named_layout_reads_names_and_refuses_bad_rows(synth_dir: Path, tmp_path: Path) -> None:
    images = sorted((synth_dir / "test_images").iterdir())[:4]
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(images[0].read_bytes())
    ds = read_dataset(_write(tmp_path / "ok.csv", [["pics/a.png", "cat", "tabby"], [str(images[1]), "dog", "pug"],
                                                  [str(images[2]), "cat", "siamese"]]))
    assert ds.taxonomy is not None
    assert ds.taxonomy.super_names == ("cat", "dog") and ds.taxonomy.sub_names == ("tabby", "pug", "siamese")
    assert ds.taxonomy.sub_to_super == (0, 1, 0)
    assert {r.path for r in ds.records} == {tmp_path / "pics" / "a.png", images[1], images[2]}
    bad = {"empty subclass name": [[str(images[0]), "cat", " "]],
           "already listed on row 1": [[str(images[0]), "cat", "a"], [str(images[0]), "cat", "b"]],
           "a subclass belongs to one superclass": [[str(images[0]), "cat", "a"], [str(images[1]), "dog", "a"]],
           "not found": [["nope.png", "cat", "a"]],
           "reserved": [[str(images[0]), "novel", "a"]]}
    for message, rows in bad.items():
        with pytest.raises(SupersubError, match=message) as e:
            read_dataset(_write(tmp_path / "bad.csv", rows))
        assert "bad.csv: row" in str(e.value)


def test_extend_grows_the_taxonomy_and_keeps_the_old_classes(trained_run: Path, synth_dir: Path, tmp_path: Path) -> None:
    found = api.discover(trained_run, synth_dir / "test_images", tmp_path / "found")
    labels = pd.read_csv(tmp_path / "found" / "labels.csv")
    # the person's names: every novel-superclass cluster is one new superclass, each its own subclass
    labels["superclass"] = labels["superclass"].replace("new_superclass", "gadget")
    labels["subclass"] = "widget " + labels["cluster"].astype(str)
    labels.to_csv(tmp_path / "named.csv", index=False)
    run2 = tmp_path / "run2"
    assert run_cli(["train", "--extend", str(trained_run), "--data", str(tmp_path / "named.csv"), "--out", str(run2),
                    "--epochs", "1"]) == 0
    old, new = api.RunDir.open(trained_run).load_taxonomy(), api.RunDir.open(run2).load_taxonomy()
    assert new.sub_names[:old.n_sub] == old.sub_names and new.super_names[:old.n_super] == old.super_names
    assert new.sub_to_super[:old.n_sub] == old.sub_to_super
    assert set(new.sub_names[old.n_sub:]) == set(labels["subclass"])
    assert set(new.super_names[old.n_super:]) == ({"gadget"} if (found.clusters["level"] == "superclass").any() else set())
    # the run's recipe, except what was set; the combined data is in the run and recorded for calibrate
    cfg_old, cfg_new = api.RunDir.open(trained_run).load_config(), api.RunDir.open(run2).load_config()
    assert cfg_new.optim.epochs == 1 and cfg_new.model == cfg_old.model and cfg_new.data == cfg_old.data
    split = json.loads((run2 / "calibration" / "split.json").read_text())
    assert split["data"] == str((run2 / "training_data.csv").resolve())
    combined = pd.read_csv(run2 / "training_data.csv")
    assert len(combined) == split["n_labelled"] == len(read_dataset(synth_dir)) + len(labels)
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert metrics["extended_from"] == str(api.RunDir.open(trained_run).path) and metrics["n_new_images"] == len(labels)
    preds = api.predict(run2, synth_dir / "test_images", names=True)
    assert len(preds) == found.images


def test_extend_refuses_what_it_cannot_do(trained_run: Path, synth_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    tax = api.RunDir.open(trained_run).load_taxonomy()
    image = str(sorted((synth_dir / "test_images").iterdir())[0])
    wrong = _write(tmp_path / "wrong.csv", [[image, tax.super_names[1], tax.sub_names[tax.subs_of(0)[0]]]])
    assert run_cli(["train", "--extend", str(trained_run), "--data", str(wrong), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"is a subclass of {tax.super_names[0]!r}" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(SupersubError, match="--extend reuses the run's config"):
        api.train(wrong, tmp_path / "r", {"seed": 1}, extend=trained_run)
    with pytest.raises(SupersubError, match="must be a new run directory"):
        api.train(wrong, trained_run, extend=trained_run)
