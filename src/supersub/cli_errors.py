"""What the ``supersub`` command says when it stops early: a usage mistake as one line, and the command that
continues an interrupted one. :func:`supersub.cli.main` maps these to stderr and exit codes."""

from __future__ import annotations

import difflib

import typer


def click_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage/click exceptions, abort exceptions) of the typer in use.

    Recent typer (0.29 here) raises its own bundled copy of click's exceptions (``typer._click.exceptions``, all
    subclasses of :class:`typer.TyperException`), which are not ``click.ClickException``; older typers raise
    click's own. Both are caught, so either typer gives one line.
    """
    errors: list[type[BaseException]] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    aborts: list[type[BaseException]] = [typer.Abort]
    try:
        import click

        errors.append(click.exceptions.ClickException)
        aborts.append(click.exceptions.Abort)
    except ImportError:  # pragma: no cover - recent typer no longer needs click
        pass
    return tuple(errors), tuple(aborts)


def usage_message(e: BaseException) -> str:
    """A typer/click usage error as one line: the message (keeping the "Did you mean" hint) and where to look."""
    format_message = getattr(e, "format_message", None)
    message = format_message() if callable(format_message) else str(e)
    possibilities = getattr(e, "possibilities", None)
    option = getattr(e, "option_name", None)
    if option and possibilities:  # an unknown option close to known ones (closest first, as difflib ranks them)
        best, *others = possibilities
        # only near ties are named too: --epoch is --epochs, and naming --approach beside it only misleads
        closeness = {o: difflib.SequenceMatcher(None, option, o).ratio() for o in possibilities}
        others = [o for o in others if closeness[o] >= closeness[best] - 0.05]
        also = f" (or {', '.join(others)})" if others else ""
        message = f"No such option: {option}. Did you mean {best}{also}?"
    message = " ".join(message.split())
    ctx = getattr(e, "ctx", None)
    if ctx is not None and getattr(ctx, "command_path", None):
        message += f" (see '{ctx.command_path} --help')"
    return message


RESUMABLE = ("train", "pretrain")  # commands with --resume; `experiment` resumes its runs by itself
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (128 + 2); typer returns it for a Ctrl-C


def continue_command(argv: list[str]) -> str:
    """The command that continues an interrupted ``supersub ARGV``: train and pretrain with ``--resume``
    (and never ``--overwrite``, which would delete the checkpoints), every other command as it was given."""
    import shlex

    args = list(argv)
    command = next((a for a in args if not a.startswith("-")), "")
    if command in RESUMABLE:
        args = [a for a in args if a not in ("--overwrite", "--no-overwrite", "--resume", "--no-resume")]
        args.append("--resume")
    return shlex.join(["supersub", *args])
