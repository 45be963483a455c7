"""A one-line progress display on stderr, redrawn in place; silent unless wanted."""

from __future__ import annotations

import sys
from typing import TextIO


class Progress:
    """Redraws one status line with `\\r`; `enabled` defaults to stderr being a terminal."""

    def __init__(self, *, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._width = 0

    def update(self, text: str) -> None:
        """Replaces the line with `text`."""
        if not self.enabled:
            return
        pad = max(0, self._width - len(text))
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()
        self._width = len(text)

    def done(self) -> None:
        """Ends the line so later output starts on a fresh one."""
        if self.enabled and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0
