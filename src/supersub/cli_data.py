"""The ``supersub data`` and ``supersub cache`` commands: datasets to write and cache folders to look after,
no trained run involved. :mod:`supersub.cli` adds them to the ``supersub`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

data_app = typer.Typer(no_args_is_help=True, help="Datasets: the built-in synthetic one, exposure sets.")
cache_app = typer.Typer(no_args_is_help=True, help="The disk caches of decoded images and frozen backbone outputs.")
console = Console()


@data_app.command("synth")
def data_synth(
    out_dir: Path = typer.Argument(..., help="folder to create (must not exist or be empty)"),
    seed: int = typer.Option(0, help="random seed: the same seed gives byte-identical files"),
) -> None:
    """Write the built-in procedural dataset in the competition layout (train/test/novel pools)."""
    from . import api

    counts = api.synth(out_dir, seed=seed)
    console.print(f"wrote {out_dir}: {counts}")


@data_app.command("tin-outliers")
def data_tin_outliers(
    tin_dir: Path = typer.Argument(..., help="Tiny-ImageNet folder (classes.csv, train/<wnid>/)"),
    out: Path = typer.Argument(..., help="flat folder to create, for --novel-data"),
    count: Optional[int] = typer.Option(None, help="a seeded sample of N images", show_default="all"),
    seed: int = typer.Option(0, help="seed of the sample"),
) -> None:
    """Outlier-exposure images: Tiny-ImageNet classes that are no bird, dog or reptile (fish counts as novel)."""
    from .data.tiny_imagenet import write_tin_outliers

    console.print(f"wrote {out}: {write_tin_outliers(tin_dir, out, count, seed)} images")


@data_app.command("tin-novel-sub")
def data_tin_novel_sub(
    tin_dir: Path = typer.Argument(..., help="Tiny-ImageNet folder (classes.csv, train/<wnid>/)"),
    out: Path = typer.Argument(..., help="folder to create, OUT/<superclass>/<wnid>/, for --novel-sub-data"),
    superclasses: Optional[str] = typer.Option(
        None, help="comma-separated superclasses to keep, e.g. bird,dog", show_default="all"
    ),
    count: Optional[int] = typer.Option(None, help="a seeded sample of N images", show_default="all"),
    seed: int = typer.Option(0, help="seed of the sample"),
) -> None:
    """Novel-subclass images: bird/dog/reptile classes of Tiny-ImageNet that the competition lacks."""
    from .data.tiny_imagenet import write_tin_novel_sub

    keep = [s.strip() for s in superclasses.split(",") if s.strip()] if superclasses else None
    console.print(f"wrote {out}: {write_tin_novel_sub(tin_dir, out, keep, count, seed)} images")


@data_app.command("tin-source")
def data_tin_source(
    tin_dir: Path = typer.Argument(..., help="Tiny-ImageNet folder (classes.csv, train/<wnid>/)"),
    out: Path = typer.Argument(..., help="folder to create, OUT/<superclass>/<wnid>/, for train --data"),
    per_class: Optional[int] = typer.Option(60, min=1, help="a seeded sample of N images per class (none = all)"),
    seed: int = typer.Option(0, help="seed of the sample"),
    link: bool = typer.Option(False, "--link/--no-link", help="symlink the images instead of copying them"),
) -> None:
    """A transfer source: every Tiny-ImageNet class the competition lacks, to tune the backbone's last stage on first."""
    from .data.tiny_imagenet import write_tin_source

    console.print(f"wrote {out}: {write_tin_source(tin_dir, out, per_class, seed, link)} images")


CACHE_DIR_OPTION = typer.Option(None, "--dir", help="cache folder (a run's data.cache_dir)",
                                show_default="$SUPERSUB_CACHE_DIR, else ~/.cache/supersub")


def _cache_folder(folder: Optional[Path]) -> Path:
    from .models.feature_cache import default_cache_dir

    return folder if folder is not None else default_cache_dir()


@cache_app.command("info")
def cache_info(folder: Optional[Path] = CACHE_DIR_OPTION) -> None:
    """Files, size, oldest and newest use, and the size limit of a cache folder."""
    import datetime as dt

    from .data.cache_limit import cache_info as info

    i = info(_cache_folder(folder))
    when = {k: "-" if i[k] is None else dt.datetime.fromtimestamp(float(i[k])).isoformat(" ", "seconds")  # type: ignore[arg-type]
            for k in ("oldest_use", "newest_use")}
    limit = "none" if i["limit_bytes"] is None else f"{int(i['limit_bytes']) / 1e9:.3g} GB"  # type: ignore[arg-type]
    console.print(f"{i['folder']}: {i['files']} files, {int(i['bytes']) / 1e6:.1f} MB (limit {limit}; least recently "  # type: ignore[arg-type]
                  f"used deleted first); oldest use {when['oldest_use']}, newest {when['newest_use']}",
                  markup=False, highlight=False, soft_wrap=True)


@cache_app.command("clear")
def cache_clear(
    folder: Optional[Path] = CACHE_DIR_OPTION,
    older_than: Optional[float] = typer.Option(None, "--older-than", help="only files not used for this many days",
                                               show_default="all"),
) -> None:
    """Delete supersub's cache files (images-*.pt, features-*.pt; nothing else in the folder)."""
    from .data.cache_limit import clear_cache

    where = _cache_folder(folder)
    files, freed = clear_cache(where, older_than)
    console.print(f"{where}: removed {files} files, {freed / 1e6:.1f} MB", markup=False, highlight=False, soft_wrap=True)
