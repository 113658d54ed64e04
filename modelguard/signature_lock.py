"""A lock entry's ``signed_by`` (:class:`modelguard.lockfile.SignedBy`): the one key or Sigstore
identity a locked model's ``model.sig`` must be signed by. The guard refuses the model before
construction unless its folder holds such a signature and the files match it
(:func:`enforce_locked_signer`, through :func:`modelguard.signing.enforce_before_load`);
``verify --lock`` asks :func:`signed_by_problem`.
"""

from __future__ import annotations

import os
from pathlib import Path
from shlex import quote
from typing import Any

from . import lockfile
from .errors import ModelGuardError, SignatureError, VerificationError
from .resolve import Resolution
from .signing import SIGNATURE_NAME, configured_identity, enforce_before_load, read_signature, verify_signed


def locked_signer(resolved: Resolution) -> tuple[Path, lockfile.LockEntry] | None:
    """The lock and entry a lock-resolved model came from, when the entry names ``signed_by``."""
    if resolved.how != "lock" or resolved.model_id is None:
        return None
    path = lockfile.find_lock()
    entry = lockfile.cached_lock(path).get(resolved.model_id) if path is not None else None
    return (path, entry) if path is not None and entry is not None and entry.signed_by is not None else None


def _trust(signed_by: lockfile.SignedBy, lock_path: Any) -> tuple[str | None, Any]:
    """(public key path, SigstoreTrust) for ``signed_by``; one of the two is None."""
    if signed_by.public_key is not None:
        return signed_by.key_path(lock_path), None
    return None, configured_identity(signed_by.identity, signed_by.identity_provider)


def enforce_locked_signer(resolved: Resolution, loader: str, on_failure: str, lock_path: Path,
                          entry: lockfile.LockEntry) -> None:
    """Refuse the load unless the model's folder holds a ``model.sig`` that verifies with the
    entry's ``signed_by`` and lists files that match (as ``MODELGUARD_REQUIRE_SIGNATURE=1`` with
    that key or identity, for this model only); errors name the lock entry and the fix."""
    signed_by = entry.signed_by
    assert signed_by is not None
    source = lockfile.lock_source(lock_path, entry)
    target = resolved.model_id or entry.model_id
    directory = resolved.directory
    if directory is not None and not Path(directory).is_dir():
        directory = None  # not downloaded yet
    if directory is None or not (Path(directory) / SIGNATURE_NAME).is_file():
        where = (f"{directory} holds no {SIGNATURE_NAME}" if directory is not None
                 else "the model is not on this machine yet, so no signature can be checked before it is downloaded")
        first = "" if directory is not None else f"download it first (modelguard sync --lock {quote(str(lock_path))}); "
        raise SignatureError(
            f"modelguard refused to load {target} ({loader}): the project lock requires it signed by "
            f"{signed_by.describe()} ({source}), and {where}",
            path=directory if directory is not None else lock_path,
            expected=f"a {SIGNATURE_NAME} signed by {signed_by.describe()}", actual="no signature",
            remedy=(f"{first}put the publisher's {SIGNATURE_NAME} in the model folder (or sign a copy you trust: "
                    f"modelguard sign {quote(str(directory)) if directory is not None else 'DIR'} --private-key "
                    f"KEY.pem); or remove signed_by from {entry.model_id} in {lock_path}"),
        )
    public_key, identity = _trust(signed_by, lock_path)
    try:
        enforce_before_load(directory, public_key=public_key, require=True, loader=loader, target=target,
                            on_failure=on_failure, identity=identity)
    except VerificationError as exc:  # SignatureError too
        raise type(exc)(
            f"{exc.message}\n  the project lock requires {target} signed by {signed_by.describe()} ({source})",
            report=exc.report, path=exc.path, expected=exc.expected, actual=exc.actual,
            remedy=(f"{exc.remedy + '; or ' if exc.remedy else ''}get the model with the {SIGNATURE_NAME} its "
                    f"publisher made with that key or identity, or correct signed_by in {lock_path}"),
        ) from None


def signed_by_problem(lock: lockfile.Lock, entry: lockfile.LockEntry,
                      directory: str | os.PathLike[str]) -> tuple[str, str] | None:
    """For ``verify --lock``: None when the entry names no signer, or when ``directory``'s
    ``model.sig`` verifies with it and its files match; else (what is wrong, the fix)."""
    signed_by = entry.signed_by
    if signed_by is None:
        return None
    wanted = f"the lock requires a {SIGNATURE_NAME} signed by {signed_by.describe()}"
    fix = (f"put the publisher's {SIGNATURE_NAME} in {directory}, or correct signed_by of {entry.model_id} "
           f"in {lock.path if lock.path is not None else lockfile.LOCK_NAME}")
    sig = Path(directory) / SIGNATURE_NAME
    if not sig.is_file():
        return f"{wanted}, and {directory} holds none", fix
    public_key, identity = _trust(signed_by, lock.path)
    trust: dict[str, Any] = ({"public_key": public_key} if identity is None else
                             {"identity": identity.identity, "identity_provider": identity.provider,
                              "trust_config": identity.trust_config})
    try:
        read_signature(sig, **trust)
        _, report = verify_signed(sig, directory, **trust)
    except ModelGuardError as exc:
        return f"{wanted}: {exc.message}", (f"{exc.remedy}; or " if exc.remedy else "") + fix
    if not report.ok:
        return f"{wanted}: files do not match the signature {sig}: " + ", ".join(r.path for r in report.failures), fix
    return None
