"""Libraries the product promises to guard must be importable wherever the suite runs.

``need("FlagEmbedding")`` at the top of a test module imports the library and returns it.
If it is missing or its import fails (a broken release, an incompatible neighbour), the
module's collection FAILS and the run shows the library's own import error: 34 guard
tests must never vanish from a run as skips. A developer working in a partial
environment may set ``MODELGUARD_TEST_ALLOW_MISSING=1`` to turn that into a skip with
the same reason, except under CI (``CI=true``) and ``make test``, where it is always a failure.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

ALLOW_MISSING = "MODELGUARD_TEST_ALLOW_MISSING"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def strict() -> bool:
    """Under CI or `make test` (MODELGUARD_TEST_STRICT=1) nothing may turn into a skip."""
    return in_ci() or os.environ.get("MODELGUARD_TEST_STRICT", "") == "1"


def missing_allowed() -> bool:
    return not strict() and os.environ.get(ALLOW_MISSING, "") == "1"


class RequiredLibraryError(ImportError):
    """A library the suite needs cannot be imported."""


def need(name: str) -> ModuleType:
    """Import ``name`` or fail this test module with the import error (see module docstring)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001  a broken package can raise anything at import
        reason = f"{name} cannot be imported: {type(exc).__name__}: {exc}"
        if missing_allowed():
            pytest.skip(f"{reason} ({ALLOW_MISSING}=1)", allow_module_level=True)
        raise RequiredLibraryError(
            f"{reason}\n  the test suite needs it (a skip would hide the guard tests); "
            f"install the pinned environment with 'make test', or set {ALLOW_MISSING}=1 "
            f"outside CI to skip these tests") from exc
