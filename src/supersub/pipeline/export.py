"""``supersub export``: a trained run *with its open-set decision* as one ONNX graph, plus its class names.

The graph is the path ``supersub predict`` takes, traced once: uint8 images -> the model's outputs -> the run's
novelty confidences (the fitted detectors' statistics are constants of the graph) -> the decision rule at the
run's thresholds -> temperature-scaled probabilities with the calibrated novel column. What a deployment needs
besides onnxruntime is the JSON beside it: class names, the input size and the layout of the outputs.

Exported with torch's TorchScript-based ONNX exporter (``dynamo=False``): the decision and the probabilities
with the novel column branch on tensor values only to skip work (:func:`supersub.novelty.probs._agree`), which
a trace keeps whole, where torch.export would refuse the data-dependent branches.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SupersubError
from ..io import atomic_path, write_json_atomic
from ..models.ensemble import BaggingEnsemble
from ..models.hierarchical import HierarchicalClassifier
from ..novelty.detectors import level_scores
from ..novelty.open_set import OpenSetHead
from ..run_dir import RunDir

log = logging.getLogger("supersub")

EXPORT_FORMAT = "supersub-onnx-1"
# scores whose confidence is a closed-form function of one image's logits and features (fitted statistics are
# constants); kNN scores search a bank of training features, ensemble scores need members: not in the graph
EXPORTABLE_SCORES = ("msp", "maxlogit", "energy", "entropy", "gen", "mahalanobis", "vim", "probe")
OUTPUTS = ("superclass_index", "subclass_index", "super_probs", "sub_probs")
OPSET = 18  # Resize with antialias (the model's upsampling to its input size) needs opset 18


class OpenSetGraph(nn.Module):
    """uint8 images (N, 3, S, S) -> superclass index, subclass index (novel = K resp. M) and the probabilities of
    both levels with the novel column last: the run's :class:`~supersub.novelty.open_set.OpenSetHead` on the model's
    outputs, as ``supersub predict`` applies it."""

    def __init__(self, model: nn.Module, head: OpenSetHead) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.head.decide(self.model.outputs(images))
        return d.super_pred, d.sub_pred, d.super_probs.float(), d.sub_probs.float()


def _antialiased_bilinear(g: Any, x: Any, output_size: Any, align_corners: Any, *scales: Any) -> Any:
    """ONNX for ``F.interpolate(..., mode="bilinear", antialias=True)``, which torch's exporter lacks: Resize with
    ``antialias=1`` to the (N, C) of the input and the model's input size. Identical to torch when enlarging
    (what the recipe does: images at data.image_size, the backbone at 224); see :func:`check_exportable`."""
    shape = g.op("Shape", x)
    batch_channels = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])),
                          g.op("Constant", value_t=torch.tensor([2])))
    sizes = g.op("Concat", batch_channels, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: int64
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op("Resize", x, empty, empty, sizes, mode_s="linear", antialias_i=1,
                coordinate_transformation_mode_s="half_pixel")


@contextmanager
def _resize_symbolic() -> Iterator[None]:
    """The symbolic above, registered for this export only (the exporter's registry is process state)."""
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _antialiased_bilinear, OPSET)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::_upsample_bilinear2d_aa", OPSET)


def check_exportable(model: Any, score: str, image_size: int) -> None:
    """One line naming what cannot go into the graph, and what can."""
    parts = [s for s in level_scores(score)]
    bad = [s for s in parts if s not in EXPORTABLE_SCORES] or ([] if "," not in score else [score])
    if bad:
        raise SupersubError(f"export: score {bad[0]!r} cannot be expressed in an ONNX graph (it searches training "
                            f"features or averages scores); exportable: {', '.join(EXPORTABLE_SCORES)} (one per level, "
                            "e.g. vim+maxlogit): re-choose with 'supersub calibrate RUN --score ...' first")
    if isinstance(model, BaggingEnsemble) or not isinstance(model, HierarchicalClassifier):
        raise SupersubError(f"export: a {type(model).__name__} model is not exportable (one network only: the bagging "
                            "approach is not)")
    input_size = getattr(model, "input_size", None)
    if input_size is not None and input_size < image_size:
        raise SupersubError(f"export: the model shrinks its {image_size} px images to {input_size} px, and ONNX "
                            "Runtime's antialiased shrinking differs from torch's; export a run whose data.image_size "
                            "is at most model.input_size (the recipe enlarges)")
    if any(getattr(m, "booster_bytes", None) is not None for m in model.modules()):
        raise SupersubError("export: head xgboost runs XGBoost's own trees, which an ONNX graph of this model cannot "
                            "hold; export a run with head linear, cosine or mlp")


def export_run(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """:func:`supersub.api.export`: write ``out`` (ONNX) and ``out`` with suffix ``.json`` (class names, input)."""
    run = RunDir.open(run_dir)
    run.require_finished()
    out = Path(out)
    names_file = out.with_suffix(".json")
    for target in (out, names_file):
        if target.exists() and not overwrite:
            raise SupersubError(f"{target}: exists (pass --overwrite to replace it)")
    model, cfg, _ = run.load_model()
    head, taxonomy = run.load_open_set_head(), run.load_taxonomy()
    thresholds = head.thresholds
    check_exportable(model, thresholds.score, cfg.data.image_size)
    graph = OpenSetGraph(model.cpu().eval(), head).eval()
    size = cfg.data.image_size
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = {0: "batch"}
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings(), _resize_symbolic():
        warnings.simplefilter("ignore")  # TracerWarnings of the input checks, which a trace drops by design
        try:
            torch.onnx.export(graph, (example,), str(tmp), dynamo=False, opset_version=OPSET, input_names=["images"],
                              output_names=list(OUTPUTS), dynamic_axes={"images": batch, **{k: batch for k in OUTPUTS}})
        except Exception as e:  # noqa: BLE001 - an operator the exporter lacks is one line, not a traceback
            raise SupersubError(f"export: torch could not express this model in ONNX ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
    info = {
        "format": EXPORT_FORMAT,
        "model": out.name,
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", 3, size, size],
                  "what": f"RGB images decoded and resized to {size}x{size} as supersub does (normalisation and "
                          "any upsampling are inside the graph)"},
        "outputs": {"superclass_index": "int64 (batch,): novel = len(superclasses) - 1",
                    "subclass_index": "int64 (batch,): novel = len(subclasses) - 1",
                    "super_probs": "float32 (batch, len(superclasses)): novel column last",
                    "sub_probs": "float32 (batch, len(subclasses)): novel column last"},
        "superclasses": [*taxonomy.super_names, "novel"],
        "subclasses": [*taxonomy.sub_names, "novel"],
        "subclass_superclass": list(taxonomy.sub_to_super),
        "score": thresholds.score,
        "thresholds": thresholds.to_dict(),
        "run": str(run.path),
    }
    write_json_atomic(names_file, info)
    log.info("exported %s (%s) and %s", out, thresholds.score, names_file)
    return {"onnx": str(out), "names": str(names_file), "score": thresholds.score, "image_size": size,
            "bytes": out.stat().st_size}
