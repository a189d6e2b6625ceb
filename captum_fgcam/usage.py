"""User errors of the ``captum-fgcam`` commands: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class UsageError(ValueError):
    """A mistake in a command's arguments or inputs, reported as one line."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """``err``'s message on one line, cut after ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def suggest(name: str, names: Sequence[str]) -> str:
    """"; did you mean a, b?" for the names close to ``name``, else ""."""
    close = difflib.get_close_matches(name, names, n=3)
    return f"; did you mean {', '.join(close)}?" if close else ""
