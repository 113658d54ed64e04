"""modelguard: every file a model needs is present, complete and the right bytes
before the model is built, and no part of it is silently randomly initialized.

Importing this package is cheap: torch, transformers and FlagEmbedding are never
imported here. Public names are loaded on first use. Module names never equal function
names, so ``modelguard.verify`` is always the function (the engine is ``modelguard.engine``).
"""

from __future__ import annotations

import importlib

from .version import __version__

_LAZY = {
    # errors
    "ModelGuardError": "errors", "ManifestError": "errors", "ManifestNotFoundError": "errors",
    "UnsafePathError": "errors", "VerificationError": "errors", "MissingHeadError": "errors",
    "RandomInitError": "errors", "UnsafeFileError": "errors", "DownloadError": "errors",
    "OfflineError": "errors", "UsageError": "errors", "SignatureError": "errors",
    "SignatureFormatError": "errors", "SigstoreUnavailableError": "errors",
    # manifests
    "Manifest": "manifest", "FileEntry": "manifest", "Component": "manifest", "TensorSpec": "manifest",
    "load_manifest": "manifest", "parse_manifest_text": "manifest", "dump_manifest": "manifest",
    "save_manifest": "manifest",
    "find_manifest": "registry",
    "build_manifest": "build",
    # verification (the engine, dataclasses and typing load on first use)
    "verify": "verifying", "VerifyReport": "report", "FileResult": "report",
    # the Hub
    "fetch": "hub", "FetchResult": "hub",
    # signatures (OpenSSF model signing; needs modelguard[signing])
    "read_signature": "signing", "verify_signed": "signing", "sign_directory": "signing",
    # loader guard
    "install": "guard", "uninstall": "guard", "allow_random_init": "guard",
    "GuardWarning": "guard", "UnknownModelWarning": "guard",
    # reproducibility
    "seed_everything": "determinism", "deterministic": "determinism",
    "probe": "probing", "ProbeReport": "probing", "audit": "auditing", "AuditReport": "auditing",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
