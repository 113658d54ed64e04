"""Helpers shared by CLI commands: a progress counter on stderr."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    """A byte counter drawn on stderr when it is a terminal and the job is long."""

    def __init__(self, total: int, label: str, *, min_total: int = 256 * 1024 * 1024) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty() and total >= min_total
        self._lock = threading.Lock()
        self._last = 0.0

    def __call__(self, n: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last < 0.2:
                return
            self._last = now
            pct = 100.0 * self.done / self.total if self.total else 100.0
            sys.stderr.write(f"\r{self.label}: {pct:5.1f}% of {self.total / 1e9:.2f} GB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()
