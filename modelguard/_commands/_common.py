"""Helpers shared by CLI commands: a progress counter on stderr, and the verdict of a verify."""

from __future__ import annotations

import sys
import threading
from typing import Any

from ..output import emit_json
from ..report import format_report
from ..safety import format_findings
from ..signing import format_signature


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


def emit_verdict(args: Any, report: Any, findings: list[Any] | None, *,
                 signature: Any = None) -> int:
    """Print a verify report (text, or one JSON document with ``--json``), with the pickle/header
    scan's findings when ``--scan`` ran and the signature that supplied the expectations, if any;
    return the exit code: 0 when every file verified and nothing unsafe was found, else 1."""
    unsafe = [f for f in findings or () if not f.safe]
    if args.json:
        document = report.to_dict()
        if signature is not None:
            document["signature"] = signature.to_dict()
        if findings is not None:
            document["ok"] = report.ok and not unsafe
            document["scan"] = {"files": len(findings), "unsafe": len(unsafe),
                                "findings": [f.to_dict() for f in findings]}
        emit_json(document)
    else:
        if signature is not None:
            print(format_signature(signature))
        print(format_report(report, quiet=args.quiet))
        if findings is not None:
            print(format_findings(findings, quiet=args.quiet))
    return 0 if report.ok and not unsafe else 1
