"""Helpers shared by CLI commands: a progress counter on stderr."""

from __future__ import annotations

import sys
import threading


class Progress:
    """Bytes hashed, drawn on stderr by tqdm (percent, rate, time left) when stderr is a
    terminal and the job is long; otherwise nothing is drawn and tqdm is not imported."""

    def __init__(self, total: int, label: str, *, min_total: int = 256 * 1024 * 1024,
                 mininterval: float = 0.2) -> None:
        self.total = total
        self.label = label
        self.enabled = sys.stderr.isatty() and total >= min_total
        self._lock = threading.Lock()  # hashing threads report concurrently
        self._bar = None
        if self.enabled:
            from tqdm import tqdm  # installed with huggingface_hub

            self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=mininterval)

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
