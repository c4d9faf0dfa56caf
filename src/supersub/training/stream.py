"""Predict any number of images in chunks through Lightning's predict loop, on one device or several.

Each chunk of records (:class:`~supersub.data.chunks.ChunkImages`) is read, decoded, forwarded, scored and handed
to a sink (a CSV being written, a collector of scores), then dropped: memory holds a chunk, not the dataset.
Under several devices (``--devices 2 --strategy ddp``, a SLURM job) every rank takes every world-th chunk, each
step's chunks are gathered on rank 0, and rank 0 hands them to its sink in record order: one process and N
processes give the same result, chunk boundaries (and so batch boundaries) included.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import BasePredictionWriter
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text
from torch.utils.data import DataLoader, DistributedSampler

from ..data.chunks import ChunkImages, ChunkRows, unreadable
from ..data.records import ImageRecord
from ..errors import SupersubError
from ..inference import Outputs
from ..memory import return_freed_memory
from .process import _devices, quiet_lightning, scoped_process_state

log = logging.getLogger("supersub")

Scores = dict[str, torch.Tensor]  # one row per kept image of a chunk
ScoreFn = Callable[[Outputs], Scores]
OutputsFn = Callable[[torch.nn.Module, torch.Tensor, torch.device], Outputs]


class Sink(Protocol):
    """Receives the scores of each chunk's readable images, in record order, on rank 0 only."""

    def add(self, records: list[ImageRecord], scores: Scores) -> None: ...


@dataclass
class Devices:
    """Where the predict loop runs: Lightning's ``accelerator``, ``devices`` and ``strategy``."""

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    num_nodes: int = 1  # machines of a multi-node job (SLURM: --nodes); devices is per machine


@dataclass
class Streamed:
    """What rank 0 saw: the indices of the readable records and one message per unreadable one."""

    kept: list[int] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    lead: bool = True  # False on every other rank, whose sink received nothing


class _Scoring(L.LightningModule):
    """The run's model in Lightning's predict loop: a chunk of uint8 images in, its scores out."""

    def __init__(self, model: torch.nn.Module, dataset: ChunkImages | ChunkRows, outputs: Callable[..., Any],
                 score: Callable[[Any], Scores]) -> None:
        super().__init__()
        self.model, self.dataset, self._outputs, self._score = model, dataset, outputs, score

    def predict_dataloader(self) -> DataLoader:
        """Chunks in order; under several processes a padded DistributedSampler gives each rank every world-th
        chunk and every rank the same number of steps (the gather of each step needs all of them)."""
        world = self.trainer.world_size
        sampler = DistributedSampler(self.dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=False) \
            if world > 1 else None
        return DataLoader(self.dataset, batch_size=None, sampler=sampler, num_workers=0)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Scores:
        images = batch["images"]
        if len(images) == 0:  # a chunk of unreadable files: the widths of the scores still come from the model
            probe = torch.zeros((1, *images.shape[1:]), dtype=torch.uint8, device=images.device)
            return {k: v[:0] for k, v in self._score(self._outputs(self.model, probe, self.device)).items()}
        return self._score(self._outputs(self.model, images, self.device))


class _ReturnFreedMemory(L.Callback):
    """Trims the heap after every chunk (:func:`supersub.memory.return_freed_memory`): the resident set of a
    stream of 50,000 images stays that of a stream of 1,000."""

    def on_predict_batch_end(self, *args: Any, **kwargs: Any) -> None:
        return_freed_memory()


class _InOrder(BasePredictionWriter):
    """Hands each chunk's scores to the sink on rank 0 in record order (gathering every rank's chunk of a step)."""

    def __init__(self, dataset: ChunkImages | ChunkRows, sink: Sink, skip_bad: bool, progress: Progress | None) -> None:
        super().__init__(write_interval="batch")
        self.dataset, self.sink, self.skip_bad, self.progress = dataset, sink, skip_bad, progress
        self.result = Streamed()
        self.last = -1  # the last chunk handed over (the sampler's padding repeats the first ones)
        self.first_error: str | None = None
        self.task = progress.add_task("predicting", total=len(dataset.records)) if progress is not None else None

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Scores,
                           batch_indices: Sequence[int] | None, batch: dict[str, Any], batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        if trainer.world_size == 1:
            self._hand_over(int(batch["chunk"]), batch["kept"].cpu(), prediction, list(batch["bad"]))
            return
        rows = self.dataset.chunk
        kept = torch.zeros(rows, dtype=torch.uint8, device=pl_module.device)
        kept[: len(batch["kept"])] = batch["kept"].to(torch.uint8)
        padded = {k: _pad(v.to(pl_module.device), rows) for k, v in prediction.items()}
        gathered = pl_module.all_gather({"chunk": batch["chunk"].view(1), "records": torch.tensor(
            [len(batch["kept"])], device=pl_module.device), "kept": kept, **padded})
        if not trainer.is_global_zero:
            return
        for r in range(trainer.world_size):
            n = int(gathered["records"][r])
            mask = gathered["kept"][r][:n].bool().cpu()
            scores = {k: gathered[k][r][: int(mask.sum())].cpu() for k in prediction}
            self._hand_over(int(gathered["chunk"][r]), mask, scores, None)

    def _hand_over(self, chunk: int, kept: torch.Tensor, scores: Scores, bad: list[str] | None) -> None:
        if chunk <= self.last:
            return  # the DistributedSampler's padding: this chunk was handed over already
        self.last = chunk
        span = self.dataset.span(chunk)
        kept_idx = [span[i] for i in torch.nonzero(kept).flatten().tolist()]
        if len(kept_idx) < len(span):
            missing = [span[i] for i in torch.nonzero(~kept).flatten().tolist()]
            messages = bad if bad is not None else [unreadable(self.dataset.records[i], self.dataset.size)
                                                    for i in missing]
            if not self.skip_bad and self.first_error is None:
                self.first_error = messages[0]
                if bad is not None:  # one process: stop at the first unreadable image
                    raise SupersubError(messages[0])
            self.result.bad.extend(messages)
        if self.first_error is None:
            self.sink.add([self.dataset.records[i] for i in kept_idx], scores)
        self.result.kept.extend(kept_idx)
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, len(span))


def _pad(t: torch.Tensor, rows: int) -> torch.Tensor:
    """``t`` with zero rows appended up to ``rows`` (every rank's tensors of a step must have one shape)."""
    out = torch.zeros((rows, *t.shape[1:]), dtype=t.dtype, device=t.device)
    out[: len(t)] = t
    return out


class _ImagesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} images/s" if speed else "- images/s")


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress | None]:
    """A rich progress bar on stderr with images/s (only on a terminal, never in a log file)."""
    console = Console(stderr=True)
    if not (enabled and console.is_terminal):
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _ImagesPerSecond(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        yield progress


def stream_predictions(model: torch.nn.Module, records: Sequence[ImageRecord], image_size: int, outputs: OutputsFn,
                       score: ScoreFn, sink: Sink, devices: Devices, *, skip_bad: bool, progress: bool = True,
                       chunk: int | None = None) -> Streamed:
    """Run ``score(outputs(model, images, device))`` on every chunk of ``records`` and hand the results to ``sink``.

    Unreadable images are an error naming the first of them, or with ``skip_bad`` left out (``Streamed.bad``).
    Returns on every rank; only rank 0's sink receives anything (``Streamed.lead``).
    """
    streamed = run_chunks(model, ChunkImages(records, image_size, chunk), outputs, score, sink, devices,
                          skip_bad=skip_bad, progress=progress)
    assert streamed is not None
    return streamed


def run_chunks(model: torch.nn.Module, dataset: ChunkImages | ChunkRows, outputs: Callable[..., Any],
               score: Callable[[Any], Scores], sink: Sink, devices: Devices, *, skip_bad: bool, progress: bool,
               several_only: bool = False) -> Streamed | None:
    """Lightning's predict loop over ``dataset``'s chunks (see :func:`stream_predictions`); with ``several_only``
    nothing runs (None) unless the devices make more than one process."""
    with scoped_process_state():
        quiet_lightning()
        warnings.filterwarnings("ignore", ".*infer the batch indices.*")  # the writer needs none
        warnings.filterwarnings("ignore", ".*all_gather is deprecated.*")  # inside Lightning's all_gather
        with progress_bar(progress) as bar:
            writer = _InOrder(dataset, sink, skip_bad, bar)
            trim = _ReturnFreedMemory()
            try:
                trainer = L.Trainer(
                    accelerator=devices.accelerator,
                    devices=_devices(devices.devices) if isinstance(devices.devices, str) else devices.devices,
                    strategy=devices.strategy, num_nodes=devices.num_nodes, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, use_distributed_sampler=False, callbacks=[writer, trim])
            except (ValueError, TypeError, MisconfigurationException) as e:
                raise SupersubError(f"predict: {str(e).strip().splitlines()[0]}") from None
            if several_only and trainer.world_size == 1:
                return None
            trainer.predict(_Scoring(model, dataset, outputs, score), return_predictions=False)
    if not trainer.is_global_zero:
        return Streamed(lead=False)
    if writer.first_error is not None:
        raise SupersubError(writer.first_error)
    if writer.result.bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(writer.result.bad), writer.result.bad[0])
    return writer.result


class Discard:
    """A sink that keeps nothing (feature extraction: the results went to the disk cache)."""

    def add(self, records: Sequence[Any], scores: Scores) -> None:
        return None
