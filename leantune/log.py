"""leantune's one logger, `logging.getLogger("leantune")`: every line leantune prints goes through it.

Like transformers' library logger it brings a handler of its own, unless one is there already: lines go to
stderr as `leantune: <message>`, from INFO up, and do not propagate to the root logger. The stream is
looked up at each line, so a redirected `sys.stderr` is honoured. Library users control it the standard way:
`logging.getLogger("leantune").setLevel(logging.WARNING)` keeps warnings only; their own handlers (or
`propagate = True`) route the lines elsewhere. Errors for bad input are not logged: they are raised
(`LeantuneError`), and the CLI prints them.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("leantune")


class _Stderr(logging.StreamHandler):
    """A handler writing to `sys.stderr` as it is when a line is written, not as it was at import."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


if not logger.handlers:
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("leantune: %(message)s"))
    logger.addHandler(_handler)
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def note(enabled: bool, message: str) -> None:
    """An INFO line, from the process that should say it (`enabled`: the main one of a distributed run)."""
    if enabled:
        logger.info(message)
