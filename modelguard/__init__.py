"""modelguard: every file a model needs is present, complete and the right bytes
before the model is built, and no part of it is silently randomly initialized.

Importing this package is cheap: torch, transformers and FlagEmbedding are never
imported here. Public names are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # errors
    "ModelGuardError": "errors", "ManifestError": "errors", "ManifestNotFoundError": "errors",
    "UnsafePathError": "errors", "VerificationError": "errors", "MissingHeadError": "errors",
    "RandomInitError": "errors", "UnsafeFileError": "errors", "DownloadError": "errors",
    "OfflineError": "errors", "UsageError": "errors",
    # manifests
    "Manifest": "manifest", "FileEntry": "manifest", "Component": "manifest", "TensorSpec": "manifest",
    "load_manifest": "manifest", "parse_manifest_text": "manifest", "dump_manifest": "manifest",
    "save_manifest": "manifest",
    "find_manifest": "registry",
    "build_manifest": "build",
    "fetch": "hub",
    # loader guard
    "install": "guard", "uninstall": "guard", "allow_random_init": "guard",
    # reproducibility
    "seed_everything": "determinism", "deterministic": "determinism", "probe": "probing", "audit": "auditing",
}

# Imported eagerly: the submodule ``modelguard.verify`` would otherwise shadow the
# function ``modelguard.verify`` once anything imports it.
from .verify import FileResult, VerifyReport, verify  # noqa: E402

__all__ = ["__version__", "verify", "VerifyReport", "FileResult", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
