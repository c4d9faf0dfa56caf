"""What benchmarks/speed.py's run depends on (:class:`Plan`) and what its preparation made (:class:`Prepared`):
plain dataclasses, shared by the driver and the table builder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Plan:
    """Everything the run depends on (saved with the results)."""

    data: str
    backbone: str
    image_size: int
    input_size: int | None
    batch_size: int
    threads: int
    seed: int
    warmup_batches: int
    train_batches: int  # per turn
    train_rounds: int
    regime_images: int
    regime_epochs: int
    predict_images: int
    predict_repeats: int
    forward_batches: int  # per turn
    forward_pool: int
    run_per_class: int  # images per subclass of the run trained for (c)
    run_epochs: int
    smoke: bool = False

    def overrides(self, cache_dir: Path | str | None, **more: Any) -> dict[str, Any]:
        """The config of every side: the plan's backbone and sizes, no progress bar, ``data.cache_dir``."""
        base = {"model.backbone": self.backbone, "data.image_size": self.image_size,
                "optim.batch_size": self.batch_size, "model.input_size": self.input_size, "trainer.progress": False,
                "seed": self.seed, "data.cache_dir": None if cache_dir is None else str(cache_dir)}
        return {**base, **more}


@dataclass
class Prepared:
    """What :func:`speed_sides.prepare_inputs` made (paths as strings) and found (threads, versions)."""

    data: str  # labelled training set
    image_cache: str  # decoded images, shared by every side
    n_images: int
    n_train: int
    folder: str  # images to predict
    n_predict: int
    warmup_folder: str
    run: str  # a trained run (the recipe) for (c)
    threads: int  # torch's default thread count, when --threads is not given
    versions: dict[str, str]
    seconds: float
