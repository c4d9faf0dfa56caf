"""Evidence: a trained model's outputs on its stage's images, which the open-set head is fitted from
(:class:`~supersub.novelty.head_fit.Evidence`, re-exported here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..config import TrainConfig
from ..data.mapped import release
from ..errors import SupersubError
from ..inference import Outputs, pick_device, run_model
from ..io import load_checkpoint
from ..run_dir import load_model_file
from ..models.ensemble import BaggingEnsemble
from ..models.hierarchical import HierarchicalClassifier
from ..novelty.head_fit import Evidence
from ..novelty.outputs import RowSelection
from ..novelty.level_scorer import SeenView, linear_heads, seen_view
from ..taxonomy import Taxonomy
from ..training.finetune import CACHED_REGIMES, cached_outputs
from ..training.module import HierarchicalModule
from .stage_plan import Pool, Stage, stage_targets


EVIDENCE_BLOCK = 1024  # images copied out of the pool at a time (a multiple of supersub.inference.BATCH)


@dataclass
class SharedRows:
    """Feature matrices (final features, tapped layers) of the pool that several stages' evidence hold as one.

    Why: with a frozen backbone and no trained neck every stage's features are the same numbers; each stage
    keeping its own copy until calibration made training's memory grow by one feature matrix per stage.
    """

    kept: list[torch.Tensor] = field(default_factory=list)

    def share(self, out: Outputs) -> Outputs:
        """``out`` with each feature matrix replaced by an equal one kept earlier (bit for bit), if any."""
        layers = None if out.layers is None else {k: self._one(v) for k, v in out.layers.items()}
        return replace(out, features=self._one(out.features), layers=layers)

    def _one(self, t: torch.Tensor) -> torch.Tensor:
        for kept in self.kept:
            if kept.shape == t.shape and kept.dtype == t.dtype and (_same_memory(kept, t) or torch.equal(kept, t)):
                return kept
        self.kept.append(t)
        return t


class StageEvidence(Mapping[str, Evidence]):
    """Each stage's evidence by stage name; some are made again each time they are read instead of kept.

    Why: a stage of the frozen recipe reads the run's held rows, so its evidence is the stage's head over those
    rows, seconds to make; keeping every stage's logits until calibration (eight stages x 90 logits) grew
    training's memory by about 3 KB an image. Calibration reads the folds and LOSO models one at a time
    (:class:`Stages`), so an evidence made on demand lives only while it is used.
    """

    def __init__(self) -> None:
        self._kept: dict[str, Evidence] = {}
        self._makers: dict[str, Callable[[], Evidence]] = {}

    def keep(self, name: str, evidence: Evidence) -> None:
        self._makers.pop(name, None)
        self._kept[name] = evidence

    def make_when_read(self, name: str, make: Callable[[], Evidence]) -> None:
        self._kept.pop(name, None)
        self._makers[name] = make

    @property
    def made_when_read(self) -> bool:
        """Whether some evidence is made on demand (it reads the run's held rows: keep them while this lives)."""
        return bool(self._makers)

    def __getitem__(self, name: str) -> Evidence:
        if name in self._kept:
            return self._kept[name]
        return self._makers[name]()

    def __iter__(self) -> Iterator[str]:
        return iter([*self._kept, *self._makers])

    def __len__(self) -> int:
        return len(self._kept) + len(self._makers)


class Stages(Sequence[Evidence]):
    """Some stages' evidence in order, each read from ``evidence`` when indexed (a :class:`StageEvidence` makes
    it then): calibration walks the folds one at a time without holding them all."""

    def __init__(self, evidence: Mapping[str, Evidence], names: Sequence[str]) -> None:
        self._evidence, self.names = evidence, list(names)

    def __getitem__(self, i):  # type: ignore[no-untyped-def, override]
        if isinstance(i, slice):
            return Stages(self._evidence, self.names[i])
        return self._evidence[self.names[i]]

    def __len__(self) -> int:
        return len(self.names)


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two views of the same numbers (the run's shared rows): equal without comparing them."""
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride()


def collect_evidence(
    model: HierarchicalClassifier | BaggingEnsemble, pool: Pool, taxonomy: Taxonomy, stage: Stage, accelerator: str = "auto",
    cfg: TrainConfig | None = None, shared: SharedRows | None = None,
) -> Evidence:
    """Run ``model`` on the stage's labelled training, validation, held-out and novel images.

    With a cached regime (``cfg.optim.finetune`` frozen/partial) the frozen part's outputs come from the
    cache that training filled, so the backbone does not run again; the views then read their features out of
    the pool's matrix when used (:class:`RowSelection`), a matrix that ``shared`` (one per run) keeps once for
    every stage whose features are the same.
    """
    # a planned stage carries its targets; one read back from the split file (calibrate) gets them here, once
    t = stage.targets or stage_targets(pool, taxonomy, stage, "uniform")
    tax, y_super, y_sub = t.taxonomy, t.y_super, t.y_sub
    device = pick_device(accelerator)
    everything: Outputs | None = None
    if cfg is not None and cfg.optim.finetune in CACHED_REGIMES:
        everything = cached_outputs(model, pool.images, cfg, device)
        if shared is not None:
            everything = shared.share(everything)

    def view(idx: Sequence[int]) -> SeenView | None:
        if not idx:
            return None
        if everything is not None:
            out: Outputs = RowSelection.pick(everything, idx, after_read=release)  # a mapped matrix's pages go
        else:
            # a block of rows at a time (multiples of run_model's batch: the same batches as all at once), so
            # memory-mapped images are never all copied into memory
            rows = list(idx)
            out = Outputs.gather((run_model(model, pool.images[rows[i:i + EVIDENCE_BLOCK]], device=device)
                                  for i in range(0, len(rows), EVIDENCE_BLOCK)), len(rows))
        return seen_view(out, tax.n_super, tax.n_sub)

    train = [i for i in stage.train if y_super[i] >= 0 and y_sub[i] >= 0]
    trained = view(train)
    if trained is None:
        raise SupersubError(f"{stage.name} model: no labelled training images")
    return Evidence(
        tax, trained, y_super[train], y_sub[train], view(stage.val), y_super[stage.val], y_sub[stage.val],
        view(stage.held), y_super[stage.held] if stage.held else None, view(stage.novel),
        linear_heads(model, tax.n_super, tax.n_sub),
    )


STAGE_MODEL_FILE = "model.pt"  # checkpoints/<stage>/model.pt: a stage's trained model, in the format of RUN/model.pt


def load_stage_model(run_path: Path, stage: str) -> HierarchicalClassifier | BaggingEnsemble:
    """A calibration or LOSO model: ``checkpoints/<stage>/model.pt`` (any approach: networks, ensembles, trees),
    else, for runs made before that file existed, its best Lightning checkpoint (``weights_only`` loading)."""
    saved = run_path / "checkpoints" / stage / STAGE_MODEL_FILE
    if saved.is_file():
        return load_model_file(saved)[0]
    path = run_path / "checkpoints" / stage / "best.ckpt"
    ckpt = load_checkpoint(path)
    try:
        module = HierarchicalModule(ckpt["hyper_parameters"]["config"], ckpt["hyper_parameters"]["taxonomy"])
        module.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise SupersubError(f"{path}: not a checkpoint of this run's {stage} model ({type(e).__name__})") from None
    return module.model.eval()
