"""Optional libraries (numpy, torch, transformers, FlagEmbedding, sentence-transformers):
imported only where a feature needs them, with a clear error naming the extra to install."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import UsageError


def require(module: str, extra: str) -> Any:
    """Import a library the probe needs, or say how to install it (``pip install 'modelguard[extra]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"the probe needs {module}, which cannot be imported: {exc}",
                         expected=f"{module} installed", remedy=f"pip install 'modelguard[{extra}]'") from None
