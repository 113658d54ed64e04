"""What the CLI writes: one JSON document on stdout for ``--json``, and a user error as one
``modelguard: error:`` block on stderr (plus its JSON form) with the error's exit code."""

from __future__ import annotations

import json
import sys
from typing import Any

from .errors import ModelGuardError


def emit_json(document: Any) -> None:
    """Write ``document`` as one indented JSON document on stdout."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


def report_error(exc: ModelGuardError, as_json: bool) -> int:
    """Say what went wrong (and, with ``--json``, as a document); return the exit code."""
    if as_json:
        emit_json({"ok": False, "error": exc.to_dict()})
    sys.stderr.write(f"modelguard: error: {exc}\n")
    return exc.exit_code
