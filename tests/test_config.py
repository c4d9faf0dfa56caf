import logging

import pytest

from supersub.config import build_config, ignored_options, load_config, warn_ignored_options
from supersub.errors import SupersubError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("optim:\n  lr: 0.01\n  epochs: 3\nloss:\n  alpha: 0.5\n")
    cfg = load_config(p, {"optim.epochs": 7, "model.width": 16, "seed": 3})
    assert cfg.optim.lr == 0.01 and cfg.optim.epochs == 7 and cfg.loss.alpha == 0.5
    assert cfg.model.width == 16 and cfg.seed == 3 and cfg.data.image_size == 64


@pytest.mark.parametrize(
    "data,match",
    [
        ({"optim": {"lrr": 1}}, r"optim\.lrr: unknown key"),
        ({"optim": {"lr": -1}}, r"optim\.lr: Input should be greater than 0"),
        ({"loss": {"kl_direction": "sideways"}}, r"loss\.kl_direction"),
        ({"model": {"depth": []}}, "depth must be a non-empty"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"novelty": {"novel_share_super": 0.5, "novel_share_sub": 0.4}}, "novel_share_sub .* must be above"),
        ({"novelty": {"novel_share_sub": 1.0}}, r"novelty\.novel_share_sub: Input should be less than 1"),
    ],
)
def test_bad_values_name_the_key(data, match):
    with pytest.raises(SupersubError, match=match):
        build_config(data, "exp.yaml")


def test_bad_yaml_files(tmp_path):
    with pytest.raises(SupersubError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(SupersubError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(SupersubError, match="top level must be a mapping"):
        load_config(lst)


def test_subclass_share_is_taken_among_seen_superclass_images():
    cfg = build_config({"novelty": {"novel_share_super": 0.28, "novel_share_sub": 0.79}}, "exp.yaml").novelty
    # of 100 test images 72 have a seen superclass, and 79 - 28 = 51 of those a novel subclass
    assert cfg.sub_novel_share_within_seen_super() == pytest.approx(51 / 72)


# ---- novelty.score_options ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "novelty,match",
    [
        ({"score": "knn", "score_options": {"kk": 5}}, r"score 'knn': unknown option\(s\) kk \(options: k\)"),
        ({"score": "knn", "score_options": {"k": 0}}, "option k must be a positive integer, got 0"),
        ({"score": "vim", "score_options": {"k": 5}}, r"unknown option\(s\) k \(options: dim\)"),
        ({"score": "msp", "score_options": {"temperature": 2}}, "msp .* takes no options"),
        ({"score": "maxlogit", "score_options": {"temperature": 2}},
         r"unknown option\(s\) temperature \(options: none\)"),
    ],
)
def test_score_options_are_validated_against_the_detector(novelty, match):
    with pytest.raises(SupersubError, match=match):
        build_config({"novelty": novelty}, "exp.yaml")


def test_score_options_belong_to_the_configured_score_only():
    cfg = build_config({"novelty": {"score": "vim", "score_options": {"dim": 16}}}).novelty
    assert cfg.options_for("vim") == {"dim": 16} and cfg.options_for("knn") == {}
    # dotted --set keys reach the mapping too
    assert load_config(None, {"novelty.score": "knn", "novelty.score_options.k": 50}).novelty.score_options == {"k": 50}


# ---- options an approach ignores ---------------------------------------------------------------------
def _ignored(data):
    return ignored_options(build_config(data))


def test_defaults_and_options_in_use_are_never_reported():
    assert _ignored({}) == []
    assert _ignored({"model": {"approach": "two-models"}}) == []  # alpha left at its default: not the user's
    assert _ignored({"loss": {"alpha": 0.5, "temperature": 2.0}, "optim": {"finetune": "full"},
                     "augment": {"rotation": 20.0}}) == []
    assert _ignored({"model": {"approach": "two-models"}, "loss": {"alpha": 0.0}}) == []  # says what happens


@pytest.mark.parametrize(
    "data,keys,reason",
    [
        ({"model": {"approach": "two-models"}, "loss": {"alpha": 0.5}}, ["loss.alpha"], "only approach two-heads"),
        ({"model": {"approach": "cosine"}, "loss": {"alpha": 0.2, "kl_t2_scaling": True}}, ["loss.alpha"],
         "cosine trains with alpha 0"),
        ({"loss": {"alpha": 0.0, "temperature": 4.0, "kl_t2_scaling": True}},
         ["loss.temperature", "loss.kl_t2_scaling"], "loss.alpha is 0"),
        ({"optim": {"finetune": "frozen"}, "augment": {"rotation": 15.0, "hflip": True, "translate": 0.0,
                                                      "mixup_alpha": 0.4}},
         ["augment.hflip", "augment.rotation", "augment.mixup_alpha"], "finetune=frozen trains on cached"),
        ({"model": {"backbone": "cnn"}, "optim": {"finetune": "full", "trainable_stages": 2}},
         ["optim.trainable_stages"], "only finetune=partial"),
        ({"model": {"backbone": "cnn"}, "augment": {"cached_hflip": False}}, ["augment.cached_hflip"],
         "not full"),
        ({"optim": {"scheduler": "cosine", "step_size": 3}}, ["optim.step_size"], "only scheduler=step"),
        ({"model": {"width": 64}}, ["model.width"], "'cnn' backbone, not efficientnet_lite0"),
        ({"data": {"novel_count": 100}}, ["data.novel_count"], "no data.novel_data"),
        ({"novelty": {"objective": "balanced", "novel_share_super": 0.3, "novel_share_sub": 0.8}},
         ["novelty.novel_share_super", "novelty.novel_share_sub"], "only objective=expected"),
        ({"novelty": {"score": "msp", "tau_super": 0.9, "tau_sub": 0.5, "objective": "eer"}},
         ["novelty.objective"], "both thresholds are hand-set"),
    ],
)
def test_ignored_options_are_named_with_the_reason(data, keys, reason):
    (line,) = [line for line in _ignored(data) if reason in line]
    assert line.startswith(f"ignored options: {', '.join(keys)} (")


def test_ignored_options_are_logged_on_the_supersub_logger(caplog):
    cfg = build_config({"model": {"approach": "two-models"}, "loss": {"alpha": 0.5}})
    with caplog.at_level(logging.WARNING, logger="supersub"):
        assert warn_ignored_options(cfg) == ignored_options(cfg)
    assert [r.name for r in caplog.records] == ["supersub"] and "loss.alpha" in caplog.text
