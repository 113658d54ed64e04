"""modelguard: every file a model needs is present, complete and the right bytes
before the model is built, and no part of it is silently randomly initialized.

Importing this package is cheap: torch, transformers and FlagEmbedding are never
imported here. Public names are loaded on first use.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_LAZY = {
    # errors
    "ModelGuardError": "errors", "ManifestError": "errors", "ManifestNotFoundError": "errors",
    "UnsafePathError": "errors", "VerificationError": "errors", "MissingHeadError": "errors",
    "RandomInitError": "errors", "UnsafeFileError": "errors", "DownloadError": "errors",
    "OfflineError": "errors", "UsageError": "errors", "SignatureError": "errors",
    "SignatureFormatError": "errors",
    # manifests
    "Manifest": "manifest", "FileEntry": "manifest", "Component": "manifest", "TensorSpec": "manifest",
    "load_manifest": "manifest", "parse_manifest_text": "manifest", "dump_manifest": "manifest",
    "save_manifest": "manifest",
    "find_manifest": "registry",
    "build_manifest": "build",
    "fetch": "hub",
    # signatures (OpenSSF model signing; needs modelguard[signing])
    "read_signature": "signing", "verify_signed": "signing", "sign_directory": "signing",
    # loader guard
    "install": "guard", "uninstall": "guard", "allow_random_init": "guard",
    # reproducibility
    "seed_everything": "determinism", "deterministic": "determinism", "probe": "probing", "audit": "auditing",
}

# ``verify`` and its result types load on first use too (the verify engine, dataclasses and
# typing cost more than the rest of ``import modelguard``). The import system binds a loaded
# submodule to the package attribute of the same name: the package class below keeps that
# from replacing the function ``modelguard.verify`` with the submodule ``modelguard.verify``.
_LAZY.update({"verify": "verify", "VerifyReport": "verify", "FileResult": "verify"})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: object) -> None:
        if name == "verify" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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
