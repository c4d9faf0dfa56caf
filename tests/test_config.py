import pytest

from supersub.config import build_config, load_config
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
