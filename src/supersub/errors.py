"""User-facing errors.

Library code raises :class:`SupersubError` with a one-line message that names the file, row or key at
fault; the CLI boundary (``supersub.cli``) prints it and exits with code 2, never a traceback.
"""

from __future__ import annotations


class SupersubError(Exception):
    """An error caused by the user's input or environment, explained in one line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
