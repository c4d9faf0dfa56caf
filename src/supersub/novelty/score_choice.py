"""``score: auto``: which detector a level scores with, chosen on the run's own calibration evidence.

The novelty suite picked one default per level (ViM for a new superclass, the probe for a new subclass), but a
user's images may be far from what the suite measured (microscopy, drawings, the built-in shapes), where the
default can fail without a word. With ``auto`` at a level, :mod:`.head_fit` measures every candidate of
:data:`~supersub.score_catalog.AUTO_CANDIDATES` on the evidence that stands for that level's novelty (subclass:
held-out subclasses against validation images, over the calibration folds; superclass: each left-out
superclass against the others, on the LOSO models), and this module decides. Pure: AUROCs in, a choice out.

Why a margin and not the arg-max: on the suite the evidence AUROCs of close candidates do not rank them as the
test images do (held-out subclasses picked knn-class over the probe on near-amphibian by 0.02, and the probe
was 0.05 better on the test images); a clear margin is what the evidence can vouch for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

AUTO_MARGIN = 0.05  # evidence AUROC by which a candidate must beat the default to replace it
SEPARATES_AT = 0.70  # below this evidence AUROC no candidate tells novel from seen usefully: the run says so
EVIDENCE = {"super": "left-out superclasses of the LOSO models", "sub": "held-out subclasses of the calibration folds"}
LEVEL_NAMES = {"super": "superclass", "sub": "subclass"}


@dataclass(frozen=True)
class ScoreChoice:
    """One level's choice: the detector, every candidate's evidence AUROC (None: no evidence), what to say."""

    level: str
    detector: str
    aurocs: Mapping[str, float] | None
    message: str
    separates: bool = True

    def summary(self) -> dict[str, object]:
        """What metrics.json records of the choice."""
        out: dict[str, object] = {f"{self.level}_score_auto": self.detector}
        if self.aurocs is not None:
            out[f"{self.level}_score_auto_auroc"] = {k: round(v, 4) for k, v in self.aurocs.items()}
        if not self.separates:
            out[f"{self.level}_score_auto_no_separation"] = True
        return out


def choose_score(level: str, candidates: tuple[str, ...], aurocs: Mapping[str, float] | None,
                 why_none: str = "") -> ScoreChoice:
    """The default (``candidates[0]``) unless another candidate's evidence AUROC beats it by :data:`AUTO_MARGIN`.

    ``aurocs`` holds the candidates that could be fitted (None: the run has no evidence for this level, said in
    ``why_none``). A best AUROC under :data:`SEPARATES_AT` is reported as a warning-worthy choice.
    """
    name, default = LEVEL_NAMES[level], candidates[0]
    if not aurocs:
        return ScoreChoice(level, default, None, f"{name} score auto: {default} (the default; {why_none})")
    best = max(aurocs, key=lambda c: (aurocs[c], c == default))
    base = aurocs.get(default, float("-inf"))
    chosen = best if aurocs[best] >= base + AUTO_MARGIN or default not in aurocs else default
    table = ", ".join(f"{c} {aurocs[c]:.3f}" for c in sorted(aurocs, key=lambda c: -aurocs[c]))
    if aurocs[best] < SEPARATES_AT:
        return ScoreChoice(
            level, chosen, aurocs,
            f"{name} score auto: no candidate separates novel from seen on the {EVIDENCE[level]} (AUROC {table}); "
            f"using {chosen}: expect novel {name}es to pass as known ones (features far from these images: fine-tune "
            "the backbone or pick one closer to them)", separates=False)
    how = "the default" if chosen == default else f"over the default {default} by >= {AUTO_MARGIN}"
    return ScoreChoice(level, chosen, aurocs, f"{name} score auto: {chosen} ({how}; AUROC on the {EVIDENCE[level]}: "
                       f"{table})")
