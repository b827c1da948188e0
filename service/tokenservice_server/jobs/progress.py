"""Progress lines for jobs run by hand: on a terminal only, on stderr, rate limited.

A CronJob's output is not a terminal, so it gets the structured log summary alone.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``update("cleanup tokens: 1500 removed")`` redraws one stderr line at most 10 times
    a second; ``done()`` ends the line. Silent unless ``stream`` is a terminal."""

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._drawn = False

    def update(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self._stream.write("\r\x1b[K" + text)
        self._stream.flush()
        self._drawn = True

    def done(self, text: str | None = None) -> None:
        if text is not None:
            self.update(text, force=True)
        if self.enabled and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
        self._drawn = False
