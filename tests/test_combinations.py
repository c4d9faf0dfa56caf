"""Every approach x finetune x backbone-kind combination the CLI accepts either builds what training needs or
is refused by the config's validation, in one line, before anything is trained or written.

`--approach two-models --finetune partial` from scratch used to pass validation and then raise a ValueError
(a traceback) once the run directory existed; the same under bagging, after every member had trained.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from supersub.config import ModelConfig, OptimConfig, build_config, config_to_dict
from supersub.errors import SupersubError
from supersub.models.build import create_model
from supersub.models.hierarchical import TWO_MODELS
from supersub.taxonomy import Taxonomy
from supersub.training.bagging import member_config
from supersub.training.module import HierarchicalModule

TAX = Taxonomy(("a", "b"), ("a1", "a2", "b1", "b2"), (0, 0, 1, 1))
APPROACHES = [a for a in ModelConfig.model_fields["approach"].annotation.__args__]  # every approach the CLI takes
FINETUNES = [f for f in OptimConfig.model_fields["finetune"].annotation.__args__ if f != "auto"]
KINDS = {
    "scratch": {"backbone": "cnn", "width": 4, "depth": [1, 1]},
    "bundled": {"backbone": "efficientnet_lite0"},  # ImageNet weights from the installed package
    "random": {"backbone": "efficientnet_lite0", "pretrained": False},  # a timm model with random weights
}


def test_the_grid_covers_every_approach_and_regime() -> None:
    assert set(APPROACHES) == {"two-heads", "two-models", "cosine", "sub-only", "moe", "bagging"}
    assert set(FINETUNES) == {"frozen", "partial", "full", "discriminative", "gradual"}
    from supersub.config import TWO_NETWORK_APPROACHES

    assert set(TWO_NETWORK_APPROACHES) == set(TWO_MODELS)  # config.py's copy of the models' list


def _built(cfg) -> None:
    """What a stage builds before its first step: each network's module and, for partial, the trunk cut the
    cached rows come from (of the ensemble too: its members' trunks are cached once)."""
    if cfg.model.approach == "bagging":
        for k in range(cfg.model.members):
            HierarchicalModule(config_to_dict(member_config(cfg, k)), TAX.to_dict(), load_weights=True)
        model = create_model(cfg.model, TAX, load_weights=True)
    else:
        model = HierarchicalModule(config_to_dict(cfg), TAX.to_dict(), load_weights=True).model
    if cfg.optim.finetune == "partial":
        model.stage_splits(cfg.optim.trainable_stages)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_combination_builds_or_is_refused_by_validation(kind: str) -> None:
    refused: list[tuple[str, str]] = []
    for approach, finetune in itertools.product(APPROACHES, FINETUNES):
        model = {**KINDS[kind], "approach": approach, **({"members": 2} if approach == "bagging" else {})}
        try:
            cfg = build_config({"model": model, "optim": {"finetune": finetune, "epochs": 4}}, "config")
        except SupersubError as e:
            assert "\n" not in str(e) and len(str(e)) < 400, str(e)
            refused.append((approach, finetune))
            continue
        try:
            _built(cfg)
        except SupersubError:
            pass  # a one-line error the CLI prints (none expected here, but it is no traceback)
        except Exception as e:  # what the CLI would show as a traceback, after creating the run directory
            pytest.fail(f"{approach} x {finetune} x {kind}: passed validation, then {type(e).__name__}: {e}")
    # the one rule: partial caches a single trunk, so several networks need the same starting weights
    several = ("two-models", "cosine", "bagging")
    assert refused == ([] if kind == "bundled" else [(a, "partial") for a in APPROACHES if a in several])


def test_partial_with_several_networks_is_one_line_naming_the_fix(synth_dir: Path, tmp_path: Path) -> None:
    from conftest import run_cli

    with pytest.raises(SupersubError, match="optim.finetune partial caches one frozen trunk for all the backbones of "
                       "approach two-models, so they must start from the same weights"):
        build_config({"model": {"backbone": "cnn", "approach": "two-models"}, "optim": {"finetune": "partial"}})
    with pytest.raises(SupersubError, match="all the members of approach bagging"):
        build_config({"model": {"backbone": "cnn", "approach": "bagging"}, "optim": {"finetune": "partial"}})
    code = run_cli(["train", "--data", str(synth_dir), "--out", str(tmp_path / "run"), "--approach", "two-models",
                    "--finetune", "partial", "--backbone", "cnn"])
    assert code == 2 and not (tmp_path / "run").exists()
