"""The loader guard: verify a model's files before it is built, refuse silent random init.

``modelguard.install()`` (or ``import modelguard.auto``) puts a post-import hook on
``sys.meta_path`` (:mod:`modelguard.importhooks`). When the user's program imports a
supported library (see :data:`modelguard.hooks.HOOKS`), its loader functions are wrapped
right after the library's own import finishes. The hooks call this module's public API:

- :func:`check_before_load` (:mod:`modelguard.preload`): resolve, verify, scan, apply the policy;
- :func:`verified_scope`, :func:`in_loader_scope`, :func:`mark_verified`, :func:`scan_once`:
  one guarded load verifies each directory and scans each file once;
- :func:`refuse_random_init`, :func:`random_init_allowed`, :func:`allow_random_init`
  (:mod:`modelguard.randominit`): the only way to keep randomly initialized weights.

Settings (:mod:`modelguard.policy`): the failure policy (``MODELGUARD_POLICY``), the
unknown-model policy (``MODELGUARD_UNKNOWN``), extra manifest folders
(``MODELGUARD_MANIFEST_PATH``), offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``), model
signatures (``MODELGUARD_PUBLIC_KEY``, ``MODELGUARD_REQUIRE_SIGNATURE``, :mod:`modelguard.signing`),
full re-hashing before each load whatever the verified-digest cache holds (``MODELGUARD_REHASH``,
:mod:`modelguard.statcache`).

Importing this module is cheap (it runs at the top of programs): the pre-load check and
what it needs (the manifest schema, the verify engine, the resolver) load with the first
model, through :func:`__getattr__`.
"""

from __future__ import annotations

from . import policy as _settings
from .importhooks import LoaderProxy as _LoaderProxy  # noqa: F401 - the hook's types, for isinstance checks
from .importhooks import PostImportFinder as _PostImportFinder  # noqa: F401
from .importhooks import install_finder, is_installed, patched_libraries, remove_finder
from .policy import (
    ENV_POLICY,
    ENV_UNKNOWN,
    POLICIES,
    UNKNOWN_POLICIES,
    GuardWarning,
    Policy,
    UnknownModelWarning,
    UnsupportedLibraryWarning,
    current_policy,
    map_directory,
)
from .policy import directory_map as _directory_map  # noqa: F401 - the declared directories (tests clear it)
from .randominit import ENV_ALLOW_RANDOM_INIT, allow_random_init, random_init_allowed, refuse_random_init

TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from typing import Iterable

__all__ = [
    "ENV_ALLOW_RANDOM_INIT", "ENV_POLICY", "ENV_UNKNOWN", "POLICIES", "UNKNOWN_POLICIES", "GuardWarning", "Policy",
    "UnknownModelWarning", "UnsupportedLibraryWarning", "allow_random_init", "check_before_load", "current_policy",
    "directory_map_file", "in_loader_scope", "install", "is_installed", "map_directory", "mark_verified",
    "patched_libraries", "random_init_allowed", "refuse_random_init", "resolve_model", "scan_once", "uninstall",
    "verified_scope", "verified_keys", "add_verified", "unknown_model", "repair", "verification_error",
]
# Loaded with the first model: name -> module.
_ON_FIRST_USE = {
    "check_before_load": "preload", "resolve_model": "preload", "verified_scope": "preload",
    "in_loader_scope": "preload", "mark_verified": "preload", "scan_once": "preload",
    "verified_keys": "preload", "add_verified": "preload", "unknown_model": "preload", "repair": "preload",
    "verification_error": "preload",
    "ResolvedModel": "resolve", "Resolution": "resolve", "directory_map_file": "registry",
    "LOCAL_MANIFEST_NAME": "registry", "DIRECTORY_MAP_NAME": "registry",
}


def install(
    policy: str | Policy | None = None,
    *,
    manifest_dirs: Iterable[str | os.PathLike[str]] | None = None,
    offline: bool | None = None,
    unknown: str | None = None,
    public_key: str | os.PathLike[str] | None = None,
    require_signature: bool | None = None,
    identity: str | None = None,
    identity_provider: str | None = None,
    sigstore_trust_config: str | os.PathLike[str] | None = None,
    all_files: bool | None = None,
    rehash: bool | None = None,
) -> None:
    """Guard every supported loader, now and when its library is imported later.

    Idempotent: a second call only updates the settings given. ``policy`` is
    ``refuse`` | ``repair`` | ``warn`` (or a :class:`Policy`); ``unknown`` is
    ``warn`` | ``refuse`` | ``allow``; ``manifest_dirs`` are searched before
    ``$MODELGUARD_MANIFEST_PATH``; ``offline`` overrides ``HF_HUB_OFFLINE``;
    ``public_key`` (a PEM file) overrides ``$MODELGUARD_PUBLIC_KEY`` and
    ``require_signature`` ``$MODELGUARD_REQUIRE_SIGNATURE`` (see :mod:`modelguard.signing`);
    ``identity`` and ``identity_provider`` (``$MODELGUARD_IDENTITY``,
    ``$MODELGUARD_IDENTITY_PROVIDER``) the Sigstore signer a keyless signature must name, and
    ``sigstore_trust_config`` (``$MODELGUARD_SIGSTORE_TRUST_CONFIG``) a Sigstore client trust
    configuration to check it with instead of the trust root fetched from Sigstore.
    ``all_files``
    (``$MODELGUARD_ALL_FILES``) checks every file of a cache listing, not only what loaders read.
    ``rehash=True`` (or ``MODELGUARD_REHASH=1``) hashes every file in full before each
    load instead of trusting the verified-digest cache.
    """
    _settings.set_signing_settings(public_key, require_signature)
    _settings.set_identity_settings(identity, identity_provider, sigstore_trust_config)
    new = _settings.make_policy(policy, manifest_dirs=manifest_dirs, offline=offline, unknown=unknown,
                                all_files=all_files, rehash=rehash)
    if not is_installed():
        _settings.set_policy(new)
        install_finder()
    elif (policy is not None or manifest_dirs is not None or offline is not None or unknown is not None
          or all_files is not None or rehash is not None):
        _settings.set_policy(_settings.merge_policy(current_policy(), new))


def uninstall() -> None:
    """Remove the import hook and restore every original function. Idempotent."""
    remove_finder()
    _settings.set_policy(Policy())
    _settings.set_signing_settings(None, None, keep=False)
    _settings.set_identity_settings(None, None, None, keep=False)


def __getattr__(name: str) -> object:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'modelguard.guard' has no attribute {name!r}")
    import importlib  # the pre-load check loads with the first model, not at program start

    target = importlib.import_module(f"modelguard.{module}")
    value = getattr(target, "Resolution" if name == "ResolvedModel" else name)
    globals()[name] = value
    return value
