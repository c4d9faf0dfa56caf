"""Run ``supersub ARGS`` with one hook patched in that pauses the process on an event, for tests that interrupt
a real run at a known point (never after a sleep): the hook writes a flag file, then waits for a signal.

    python tests/pause_driver.py FLAG WHERE supersub-args...

WHERE: ``epoch-end:STAGE:E`` (after the end-of-epoch hooks of 0-based epoch E of STAGE ran, before Lightning's
checkpoint of it), ``epoch-start:STAGE:E`` (when epoch E starts: last.ckpt then holds epoch E-1) or
``thresholds`` (just after the open-set head, open_set_head.pt, was written).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any


def _pause(flag: Path) -> None:
    flag.write_text("paused")
    while True:
        time.sleep(0.05)


def _patch(where: str, flag: Path) -> None:
    kind, _, rest = where.partition(":")
    if kind in ("epoch-end", "epoch-start"):
        from supersub.training import lightning_fit as fit

        stage, epoch = rest.rsplit(":", 1)
        name = "on_train_epoch_end" if kind == "epoch-end" else "on_train_epoch_start"
        original = getattr(fit.EpochTimer, name)

        def hook(self: Any, trainer: Any, module: Any) -> None:
            original(self, trainer, module)
            if Path(trainer.checkpoint_callback.dirpath).name == stage and trainer.current_epoch == int(epoch):
                _pause(flag)

        setattr(fit.EpochTimer, name, hook)
    elif kind == "thresholds":
        from supersub import run_dir as run

        save = run.RunDir.save_open_set_head

        def after_save(self: Any, t: Any) -> None:
            save(self, t)
            _pause(flag)

        run.RunDir.save_open_set_head = after_save  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown pause point {where!r}")


if __name__ == "__main__":
    _patch(sys.argv[2], Path(sys.argv[1]))
    sys.argv = ["supersub", *sys.argv[3:]]
    from supersub.cli import main

    main()
