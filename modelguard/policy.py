"""The guard's settings: the failure policy, the unknown-model policy, extra manifest folders,
offline, and folders the program declared to hold a known model. Also the warning classes
users filter. Cheap to import (``import modelguard.auto`` loads it at program start).

Configuration, by argument or environment (arguments win):

- policy, ``MODELGUARD_POLICY``: what to do when files fail verification:
  ``refuse`` (default, raise :class:`~modelguard.errors.VerificationError`),
  ``repair`` (re-download through :func:`modelguard.hub.repair_files`, then verify
  again), ``warn`` (warn and load anyway);
- unknown, ``MODELGUARD_UNKNOWN``: a model with no manifest: ``warn`` (default),
  ``refuse`` or ``allow``. Random initialization is refused either way;
- manifest_dirs, ``MODELGUARD_MANIFEST_PATH``: extra manifest folders;
- offline, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``: never download;
- public_key, ``MODELGUARD_PUBLIC_KEY``: a folder holding ``model.sig`` is loaded only if
  that OpenSSF model signature verifies with this key and every file it lists matches
  (:mod:`modelguard.signing`, needs ``modelguard[signing]``); identity and identity_provider,
  ``MODELGUARD_IDENTITY`` and ``MODELGUARD_IDENTITY_PROVIDER``: the same for a Sigstore
  signature, which must name that signer (sigstore_trust_config,
  ``MODELGUARD_SIGSTORE_TRUST_CONFIG``: the Sigstore instance, default production); require_signature,
  ``MODELGUARD_REQUIRE_SIGNATURE=1``: refuse a model without such a signature;
- all_files, ``MODELGUARD_ALL_FILES``: for a model that no manifest describes but the
  Hugging Face cache does (:mod:`modelguard.hflisting`), check every listed file, not only
  the files loaders read;
- rehash, ``MODELGUARD_REHASH``: hash every file in full before each load, whatever the
  verified-digest cache holds (for high-assurance loads; see :mod:`modelguard.statcache`).

The project lock (``modelguard.lock``, or ``$MODELGUARD_LOCK``; :mod:`modelguard.lockfile`) is read
by the resolver, not configured here: a locked model loads only at its locked commit and bytes.

A model in the Hugging Face cache with no manifest is checked against the Hub's listing
saved at download (else its blobs' content addresses); the unknown-model policy applies
only where no such source exists.
"""

from __future__ import annotations

import os
import threading
from collections import namedtuple

from .env import SIGNING_VARIABLES, is_offline, rehash_by_env
from .errors import UsageError

POLICIES = ("refuse", "repair", "warn")
UNKNOWN_POLICIES = ("warn", "refuse", "allow")
ENV_POLICY = "MODELGUARD_POLICY"
ENV_UNKNOWN = "MODELGUARD_UNKNOWN"
ENV_ALLOW_RANDOM_INIT = "MODELGUARD_ALLOW_RANDOM_INIT"


class GuardWarning(UserWarning):
    """The guard let something through that deserves attention (policy warn, unknown model)."""


class UnknownModelWarning(GuardWarning):
    """A model was loaded that no manifest describes, so its files were not verified."""


class UnsupportedLibraryWarning(GuardWarning):
    """An installed library version is outside what a hook supports; it was not patched."""


# --------------------------------------------------------------------------- configuration


class Policy(namedtuple("Policy", "on_failure unknown manifest_dirs offline all_files rehash",
                        defaults=(None, None, (), None, None, None))):
    """The guard's settings (immutable). ``None`` fields are read from the environment at each check.

    ``on_failure``: refuse | repair | warn; ``unknown``: warn | refuse | allow;
    ``manifest_dirs``: tuple of folders; ``offline``: bool; ``all_files``: bool; ``rehash``: bool.
    """

    __slots__ = ()

    def effective_on_failure(self) -> str:
        return self.on_failure or env_choice(ENV_POLICY, POLICIES, "refuse")

    def effective_unknown(self) -> str:
        return self.unknown or env_choice(ENV_UNKNOWN, UNKNOWN_POLICIES, "warn")

    def effective_offline(self) -> bool:
        if self.offline is not None:
            return self.offline
        return is_offline()

    def effective_all_files(self) -> bool:
        if self.all_files is not None:
            return self.all_files
        return os.environ.get("MODELGUARD_ALL_FILES", "").strip().lower() in ("1", "true", "yes", "on")

    def effective_rehash(self) -> bool:
        if self.rehash is not None:
            return self.rehash
        return rehash_by_env()


def env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise UsageError(
            f"${name}={raw!r} is not a valid setting",
            expected="one of: " + ", ".join(choices), actual=raw,
            remedy=f"export {name}={default}  (or unset it for the default, {default})",
        )
    return value


def check_choice(what: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in choices:
        raise UsageError(f"{what} {value!r} is not valid", expected="one of: " + ", ".join(choices), actual=repr(value))
    return value.lower()


_lock = threading.RLock()
_policy = Policy()
# Folders the program declared (map_directory): realpath -> (model id, revision).
directory_map: dict[str, tuple[str, str | None]] = {}
# install(public_key=..., require_signature=...); None: read from the environment at each check.
_signing_settings: tuple[str | None, bool | None] = (None, None)
# install(identity=..., identity_provider=..., sigstore_trust_config=...): the Sigstore signer required
# and the instance that vouches for it; None: the environment decides.
_identity_settings: tuple[str | None, str | None, str | None] = (None, None, None)


def current_policy() -> Policy:
    return _policy


def signing_settings() -> tuple[str | None, bool | None]:
    """``(public_key, require_signature)`` given to install(); None where the environment decides."""
    return _signing_settings


def signature_checks_configured() -> bool:
    """Whether install() or the environment asks for any signature check at load (told without
    importing the signing modules: a load with none set never imports them)."""
    key, require = _signing_settings
    identity, provider, _ = _identity_settings
    return (key is not None or require is not None or identity is not None or provider is not None
            or any(os.environ.get(name, "").strip() for name in SIGNING_VARIABLES))


def set_signing_settings(public_key: str | os.PathLike[str] | None, require_signature: bool | None, *,
                         keep: bool = True) -> None:
    """Set the signature settings; with ``keep``, a None argument keeps the current value."""
    global _signing_settings
    with _lock:
        old = _signing_settings if keep else (None, None)
        _signing_settings = (os.fspath(public_key) if public_key is not None else old[0],
                             require_signature if require_signature is not None else old[1])


def identity_settings() -> tuple[str | None, str | None, str | None]:
    """``(identity, identity_provider, sigstore_trust_config)`` given to install(); None where the
    environment decides."""
    return _identity_settings


def set_identity_settings(identity: str | None, provider: str | None, trust_config: str | os.PathLike[str] | None,
                          *, keep: bool = True) -> None:
    """Set the Sigstore identity settings; with ``keep``, a None argument keeps the current value."""
    global _identity_settings
    with _lock:
        old = _identity_settings if keep else (None, None, None)
        _identity_settings = (identity if identity is not None else old[0],
                              provider if provider is not None else old[1],
                              os.fspath(trust_config) if trust_config is not None else old[2])


def set_policy(policy: Policy) -> None:
    global _policy
    with _lock:
        _policy = policy


def make_policy(policy: str | Policy | None, *, manifest_dirs=None, offline: bool | None = None,
                unknown: str | None = None, all_files: bool | None = None, rehash: bool | None = None) -> Policy:
    """A :class:`Policy` from :func:`modelguard.install`'s arguments (checked)."""
    if isinstance(policy, Policy):
        return policy
    return Policy(
        on_failure=check_choice("policy", policy, POLICIES),
        unknown=check_choice("unknown-model policy", unknown, UNKNOWN_POLICIES),
        manifest_dirs=tuple(str(d) for d in manifest_dirs or ()),
        offline=offline,
        all_files=all_files,
        rehash=None if rehash is None else bool(rehash),
    )


def merge_policy(old: Policy, new: Policy) -> Policy:
    """``new``'s settings where given, ``old``'s elsewhere (a second install() call)."""
    return Policy(
        on_failure=new.on_failure or old.on_failure,
        unknown=new.unknown or old.unknown,
        manifest_dirs=new.manifest_dirs or old.manifest_dirs,
        offline=new.offline if new.offline is not None else old.offline,
        all_files=new.all_files if new.all_files is not None else old.all_files,
        rehash=new.rehash if new.rehash is not None else old.rehash,
    )


def map_directory(directory: str | os.PathLike[str], model: str, revision: str | None = None) -> None:
    """Declare that the local ``directory`` holds ``model`` (its manifest then applies)."""
    from .registry import validate_model_id  # the manifest schema loads with the first model, not at start

    validate_model_id(model)
    with _lock:
        directory_map[os.path.realpath(directory)] = (model, revision)
