"""tau_super for the ``knn`` superclass score, taken on the final model's own bank (``novelty.super_protocol: bank``).

Why: a kNN cut chosen on the calibration folds did not travel to the final model. A fold's bank lacks its held-out
subclasses and a tenth of the images, so its seen images sit farther from their bank than the test images sit from
the final one, and the recall cut that kept 92% of a fold's seen images kept 96-98% of the test's. kNN has no
trained part to re-fit: the final bank scored with one row left out stands for a seen image of a seen subclass, and
with its whole subclass left out for an image of a new subclass of a known superclass (seen at the superclass level).
On the suite their medians match the test images' to 0.01 (docs/results/novelty-suite.md, "A kNN cut on the final
bank").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SupersubError
from .detectors import KNNScore

# the weight of "a new subclass of a known superclass" among the seen-superclass images the cut keeps super_recall
# of: as likely as a known one (the suite's protocols have 35-50% of them among their seen-superclass test images)
NEW_SUBCLASS_WEIGHT = 0.5


@dataclass(frozen=True)
class BankCut:
    """The cut, and the shares of each kind of bank row it keeps (what the summary records)."""

    tau: float
    seen_kept: float
    new_subclass_kept: float
    rows: int

    def summary(self) -> dict[str, float | int]:
        return {"super_bank_seen_kept": round(100 * self.seen_kept, 2),
                "super_bank_new_subclass_kept": round(100 * self.new_subclass_kept, 2), "super_bank_rows": self.rows}


def bank_cut(detector: KNNScore, subclass_of_row: torch.Tensor, recall: float,
             new_subclass_weight: float = NEW_SUBCLASS_WEIGHT) -> BankCut:
    """The confidence above which ``recall`` of the bank's weighted seen-superclass evidence lies.

    ``subclass_of_row``: the subclass of each bank row, in the order the detector was fitted on.
    """
    alone, others = detector.left_out_confidence(subclass_of_row)
    seen, new = alone[torch.isfinite(alone)].double().numpy(), others[torch.isfinite(others)].double().numpy()
    if len(seen) < 2:
        raise SupersubError("novelty.super_protocol: bank needs at least 2 training images in the kNN bank")
    if len(new) == 0:  # one subclass: no row can stand for a new one
        new_subclass_weight = 0.0
    values = np.concatenate([seen, new])
    weights = np.concatenate([np.full(len(seen), (1 - new_subclass_weight) / len(seen)),
                              np.full(len(new), new_subclass_weight / max(len(new), 1))])
    order = np.argsort(values, kind="stable")
    below = np.cumsum(weights[order])
    tau = float(values[order][min(int(np.searchsorted(below, 1 - recall)), len(values) - 1)])
    return BankCut(tau, float((seen >= tau).mean()), float((new >= tau).mean()) if len(new) else float("nan"),
                   len(alone))
