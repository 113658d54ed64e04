"""The pre-load check: before a guarded loader builds a model, resolve which manifest
applies, verify the files it will read (download or repair them when the policy says so),
scan the pickle-based ones, and apply the unknown-model policy.

Within one guarded load (:func:`verified_scope`) every directory is verified once, every
file is scanned once (the torch.load hook asks :func:`scan_once`), and the resolution of
a target is remembered, so nested loaders (sentence-transformers -> transformers) repeat
nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from pathlib import Path
from shlex import quote
from typing import Any, Iterable, Iterator

from . import engine, hfcache, overlap, registry
from .errors import ManifestNotFoundError, ModelGuardError, OfflineError, VerificationError
from .hashing import stat_key
from .hflisting import checked_components
from .manifest import Manifest
from .policy import (ENV_POLICY, ENV_UNKNOWN, GuardWarning, Policy, UnknownModelWarning, current_policy, directory_map,
                     identity_settings, signature_checks_configured, signing_settings)
from .recording import record_load, recording_path
from .remedy import fetch_command
from .report import VerifyReport, format_report
from .resolve import LOCAL_MANIFEST_NAME, Resolution, resolve
from .safety import SafetyFinding, require_safe, scan_file, scan_manifest_files

# Directories verified during the current load call: a loader that calls another
# guarded loader (sentence-transformers -> transformers) hashes the files once.
# None outside a guarded load.
_verified: contextvars.ContextVar[frozenset[tuple[str, str]] | None] = contextvars.ContextVar(
    "modelguard_verified", default=None
)
_resolutions: contextvars.ContextVar[dict[tuple[Any, ...], Any] | None] = contextvars.ContextVar(
    "modelguard_resolutions", default=None
)
# Verifications running while the current load call runs (modelguard.overlap).
_pending: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("modelguard_pending", default=None)
# Files scanned during the current load call: realpath -> (stat key, finding).
_scanned: contextvars.ContextVar[dict[str, tuple[Any, SafetyFinding]] | None] = contextvars.ContextVar(
    "modelguard_scanned", default=None
)


def resolve_model(
    name_or_path: str | os.PathLike[str],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Resolution:
    """Which manifest applies to ``name_or_path``, and where its files are (:func:`modelguard.resolve.resolve`
    with the guard's manifest folders and declared directories).

    Within one guarded load (:func:`verified_scope`) the answer is remembered, so
    nested loaders do not search the manifests again.
    """
    memo = _resolutions.get()
    key = (os.path.abspath(os.fspath(name_or_path)) if os.path.exists(name_or_path) else os.fspath(name_or_path),
           revision, None if cache_dir is None else os.fspath(cache_dir))
    if memo is not None and key in memo:
        return memo[key]
    policy = current_policy()
    resolved = resolve(name_or_path, revision, cache_dir=cache_dir, manifest_dirs=policy.manifest_dirs,
                       directory_map=dict(directory_map), all_files=policy.effective_all_files())
    if memo is not None:
        memo[key] = resolved
    return resolved


def check_before_load(
    name_or_path: str | os.PathLike[str],
    *,
    components: Iterable[str] | None = None,
    revision: str | None = None,
    loader: str = "transformers",
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Resolution:
    """Verify the files of the model about to be loaded, and apply the policy.

    ``components`` limits the check (unknown names are ignored, so a loader can
    ask for what it reads). ``local_files_only`` (the loader's own flag) forbids
    downloads for this load. Raises :class:`VerificationError` when the policy is
    ``refuse`` and a file fails; :class:`ManifestNotFoundError` for an unknown
    model when the unknown-model policy is ``refuse``.
    """
    policy = current_policy()
    if local_files_only:
        policy = policy._replace(offline=True)
    on_failure = policy.effective_on_failure()
    resolved = resolve_model(name_or_path, revision, cache_dir=cache_dir)
    signed = _check_signature(resolved, name_or_path, loader, on_failure)
    manifest = resolved.manifest
    if manifest is None:
        if signed:
            _record(resolved, None, loader, cache_dir)
            return resolved  # the signature listed every file, and they verified
        if resolved.directory is None and not registry.looks_like_model_id(os.fspath(name_or_path)):
            return resolved  # neither a folder nor a model id: the loader reports its own "not found"
        done = _verified.get()
        key = (os.path.realpath(resolved.directory) if resolved.directory else os.fspath(name_or_path), "?")
        if done is None or key not in done:
            unknown_model(name_or_path, resolved, policy.effective_unknown(), loader)
            _record(resolved, None, loader, cache_dir)
            if done is not None:
                _verified.set(done | {key})
        return resolved
    if resolved.how == "hf-listing":
        # The loaders' component names mean nothing to a cache listing: check the files loaders read.
        components = checked_components(manifest, policy.effective_all_files())
    wanted = None
    if components is not None:
        wanted = sorted(set(components) & set(manifest.components))
        if not wanted:
            return resolved
    directory = resolved.directory
    fetched = None
    if directory is None:
        fetched = _download(resolved, wanted, policy, cache_dir)
        directory = Path(fetched.directory)
        resolved = Resolution(resolved.model_id, resolved.revision, directory, manifest, resolved.how)
    elif resolved.how in ("hub-id", "lock") and not policy.effective_offline():
        from .hub import complete_snapshot

        complete_snapshot(manifest, directory, wanted)
    key = (os.path.realpath(directory), ",".join(wanted) if wanted is not None else "*")
    done = _verified.get()
    if done is not None and (key in done or (key[0], "*") in done):
        return resolved
    # Within a guarded load, safetensors weights are hashed while the library reads them
    # (modelguard.overlap); everything else, and every stat-level check, comes first.
    pendings = _pending.get()
    parts = (overlap.split(manifest, directory, wanted) if fetched is None and pendings is not None
             and on_failure in ("refuse", "warn") and overlap.enabled() else None)
    if fetched is not None:
        report = fetched
    elif parts is not None:
        report = _verify(parts[0], directory, wanted if wanted is not None else sorted(manifest.components))
    else:
        report = _verify(manifest, directory, wanted)
    if not report.ok:
        if on_failure == "repair" and not policy.effective_offline() and manifest.origin == "manifest":
            repair(manifest, directory, wanted, report)
            report = _verify(manifest, directory, wanted)
        if not report.ok:
            error = verification_error(resolved, report, loader, on_failure, policy.effective_offline())
            if on_failure == "warn":
                warnings.warn(str(error), GuardWarning, stacklevel=3)
            else:
                raise error
    pending = None
    if parts is not None:
        offline = policy.effective_offline()

        def on_verdict(failed: VerifyReport) -> None:
            error = verification_error(resolved, failed, loader, on_failure, offline)
            if on_failure != "warn":
                raise error
            warnings.warn(str(error), GuardWarning, stacklevel=2)

        pending = overlap.start(parts[1], directory, wanted, rehash=policy.effective_rehash(), on_verdict=on_verdict)
        pendings.append(pending)
    try:
        _refuse_unsafe_files(manifest, directory, wanted, on_failure)
    except ModelGuardError as exc:
        if pending is not None:  # a damaged header: the digests say what happened to the file
            pendings.remove(pending)
            overlap.join([pending], exc)
        raise
    if report.ok:  # a load let through with failures (policy warn) is not recorded for a lock
        # Blob names list only what was downloaded so far: the loader may fetch more (None: the snapshot after the run).
        files = [e.path for e in manifest.files if wanted is None or e.component in wanted] \
            if manifest.lists_every_file else None
        if pending is None:
            _record(resolved, files, loader, cache_dir)
        else:  # the weights hashed while loading must verify too
            pending.on_success = lambda: _record(resolved, files, loader, cache_dir)
    if done is not None:
        _verified.set(done | {key})
    return resolved


def _record(resolved: Resolution, files: list[str] | None, loader: str, cache_dir: Any) -> None:
    """For ``modelguard lock record`` (``$MODELGUARD_RECORD``): note the load the guard let through."""
    if recording_path() is not None:
        record_load(resolved.model_id, resolved.revision, resolved.directory, files, how=resolved.how,
                    loader=loader, cache_dir=cache_dir)


def _check_signature(resolved: Resolution, name_or_path: Any, loader: str, on_failure: str) -> bool:
    """With a signing key or identity, or the signature requirement configured, check
    ``model.sig`` (once per load). True when a signature verified with every file it lists."""
    if resolved.how != "lock" and not signature_checks_configured():
        return False  # the signing modules load only for a load that checks a signature
    from .signature_lock import enforce_locked_signer, locked_signer
    from .signing import configured_identity, configured_public_key, enforce_before_load, signature_required

    locked = locked_signer(resolved)
    if locked is not None:  # the lock entry names its signer: the guard-wide settings do not apply
        done = _verified.get()
        key = (os.path.realpath(resolved.directory) if resolved.directory is not None else resolved.model_id,
               "signature")
        if done is None or key not in done:
            enforce_locked_signer(resolved, loader, on_failure, *locked)
            if done is not None:
                _verified.set(_verified.get() | {key})
        return True
    key_setting, require_setting = signing_settings()
    public_key = configured_public_key(key_setting)
    identity = configured_identity(*identity_settings())
    require = signature_required(require_setting)
    if public_key is None and identity is None and not require:
        return False
    directory = resolved.directory
    if directory is not None and not Path(directory).is_dir():
        directory = None  # a Hub id not downloaded yet
    if directory is None and not require:
        return False
    done = _verified.get()
    key = (os.path.realpath(directory) if directory is not None else os.fspath(name_or_path), "signature")
    if done is not None and any(kind == "signature" and (key[0] == path or key[0].startswith(path + os.sep))
                                for path, kind in done):
        return True  # this folder, or the signed folder holding it, verified in this load
    statement = enforce_before_load(directory, public_key=public_key, require=require, loader=loader,
                                    target=resolved.model_id or os.fspath(name_or_path), on_failure=on_failure,
                                    identity=identity)
    if statement is None:
        return False
    if done is not None:
        _verified.set(_verified.get() | {key})
    return True


# Findings that mean code would run on load: refused whatever the failure policy.
_CODE_RISKS = ("dangerous_pickle", "mislabeled")


def _refuse_unsafe_files(manifest: Manifest, directory: Path, components: list[str] | None,
                         on_failure: str) -> None:
    """Scan the pickle-based weights and safetensors headers about to be loaded (never loading them)."""
    findings = scan_manifest_files(manifest, directory, components)
    _remember_scans(directory, findings)
    unsafe = [f for f in findings if not f.safe]
    code = [f for f in unsafe if f.diagnosis in _CODE_RISKS]
    if code or (unsafe and on_failure != "warn"):
        require_safe(code or unsafe)
    for finding in unsafe:
        warnings.warn(f"modelguard: {finding.path}: {finding.message}", GuardWarning, stacklevel=4)


def _remember_scans(directory: Path, findings: Iterable[SafetyFinding]) -> None:
    scanned = _scanned.get()
    if scanned is None:
        return
    for finding in findings:
        full = Path(directory) / finding.path
        try:
            scanned[os.path.realpath(full)] = (stat_key(os.stat(full)), finding)
        except OSError:
            continue


def scan_once(path: str | os.PathLike[str]) -> SafetyFinding:
    """The safety finding for the file at ``path``: scanned now, or, inside a guarded load, the
    finding of the scan of the same unchanged file earlier in this load (each file is scanned
    at most once per load)."""
    scanned = _scanned.get()
    if scanned is None:
        return scan_file(path)
    real = os.path.realpath(path)
    try:
        key = stat_key(os.stat(real))
    except OSError:
        return scan_file(path)
    known = scanned.get(real)
    if known is not None and known[0] == key:
        return known[1]
    finding = scan_file(path)
    scanned[real] = (key, finding)
    return finding


def in_loader_scope() -> bool:
    """Whether the caller runs inside a guarded loader (see :func:`verified_scope`)."""
    return _verified.get() is not None


@contextlib.contextmanager
def verified_scope() -> Iterator[None]:
    """Within this block, directories verified once are not hashed again by nested loaders,
    and files scanned once are not scanned again. Files hashed while the library loads
    (:mod:`modelguard.overlap`) are judged when the outermost block ends: a failure raises
    there, so the model built inside is never returned."""
    current = _verified.get()
    token = _verified.set(frozenset() if current is None else current)
    memo = _resolutions.get()
    memo_token = _resolutions.set({} if memo is None else memo)
    scanned = _scanned.get()
    scanned_token = _scanned.set({} if scanned is None else scanned)
    pendings = _pending.get()
    pending_token = _pending.set([] if pendings is None else pendings)
    try:
        try:
            yield
        except BaseException as exc:
            if pendings is None:  # the outermost load: its verdicts before anything is returned
                overlap.join(_pending.get(), exc)
            raise
        if pendings is None:
            overlap.join(_pending.get(), None)
    finally:
        _pending.reset(pending_token)
        _scanned.reset(scanned_token)
        _resolutions.reset(memo_token)
        _verified.reset(token)


def verified_keys() -> frozenset[tuple[str, str]] | None:
    """What the current guarded load has verified: ``(realpath, components)`` pairs (``*`` all,
    ``?`` reported unverified, or a hook's own kind); None outside a guarded load."""
    return _verified.get()


def add_verified(keys: Iterable[tuple[str, str]]) -> None:
    """Record ``keys`` (see :func:`verified_keys`) as checked in the current guarded load."""
    done = _verified.get()
    if done is not None:
        _verified.set(done | set(keys))


def mark_verified(directory: str | os.PathLike[str]) -> None:
    """Tell nested guarded loaders that every file of ``directory`` was checked in this load
    (a hook that verified a model itself, such as FlagEmbedding's): its files are not hashed
    again, and a component absent with allow_random_init is not refused by a loader that
    never reads it. Outside a guarded load, nothing happens."""
    done = _verified.get()
    if done is not None:
        _verified.set(done | {(os.path.realpath(directory), "*")})


def _verify(manifest: Manifest, directory: Path, components: list[str] | None) -> VerifyReport:
    return engine.verify_directory(manifest, directory, components=components,  # by module: tests spy on it
                                   rehash=current_policy().effective_rehash())


def unknown_model(name_or_path: Any, resolved: Resolution, unknown: str, loader: str) -> None:
    if unknown == "allow":
        return
    target = resolved.model_id or os.fspath(name_or_path)
    model = quote(resolved.model_id) if resolved.model_id else "ORG/NAME"
    where = resolved.directory or name_or_path
    remedy = (
        f"write a manifest: `modelguard build {quote(os.fspath(where))} --model {model} "
        f"-o {quote(str(Path(os.fspath(where)) / LOCAL_MANIFEST_NAME))}`"
        if resolved.directory is not None and resolved.how == "unknown" and Path(os.fspath(where)).is_dir()
        else f"write a manifest with `modelguard build DIR --model {model}` into one of: "
             + ", ".join(str(d) for d in registry.search_path(list(current_policy().manifest_dirs)))
    ) + ("; or download it with huggingface_hub's snapshot_download (or `hf download`), which saves the Hub's "
         "listing that the guard then checks the files against"
         + (f"; or pin it in the project lock: `modelguard lock add {model}`" if resolved.model_id else "")
         + f"; or set {ENV_UNKNOWN}=allow to load unverified models without this message")
    message = (f"modelguard: no manifest applies to {target} (loaded by {loader}), "
               "so its files are not verified; random initialization is still refused")
    pinned = _manifest_for_another_revision(resolved)
    if pinned is not None:
        message += f"; the manifest for {resolved.model_id} pins revision {pinned}, not {resolved.revision}"
        remedy = (f"load revision {pinned} (`{fetch_command(resolved.model_id, pinned)}`), "
                  f"or add a manifest for {resolved.revision}; " + remedy)
    if unknown == "refuse":
        raise ManifestNotFoundError(
            message.replace("so its files are not verified; random initialization is still refused",
                            "and the unknown-model policy 'refuse' forbids loading unverified models"),
            path=where, remedy=remedy,
        )
    warnings.warn(f"{message}\n  fix: {remedy}", UnknownModelWarning, stacklevel=4)


def _manifest_for_another_revision(resolved: Resolution) -> str | None:
    """The revision a known manifest of this model pins, when it is not the one being loaded."""
    if not resolved.model_id or not resolved.revision:
        return None
    try:
        manifest = registry.find_manifest(resolved.model_id, extra_dirs=list(current_policy().manifest_dirs))
    except ModelGuardError:
        return None
    if manifest is None or not manifest.revision:
        return None
    return manifest.revision


def _download(resolved: Resolution, components: list[str] | None, policy: Policy,
              cache_dir: str | os.PathLike[str] | None) -> Any:
    """A Hub model with a manifest but not in the cache: fetch exactly its pinned files.

    Returns the verification report of the fetched files.
    """
    manifest = resolved.manifest
    assert manifest is not None and resolved.model_id is not None
    fetch_cmd = fetch_command(manifest.model, manifest.revision)
    if policy.effective_offline():
        raise OfflineError(
            f"{manifest.model} is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE or local_files_only)",
            expected=f"a snapshot of {manifest.model}" + (f" at {manifest.revision}" if manifest.revision else ""),
            actual="no snapshot in " + str(hfcache.hf_cache_dir(cache_dir)),
            remedy=f"run `{fetch_cmd}` while online, then load again",
        )
    from .hub import fetch

    return fetch(manifest, resolved.revision, components=components, cache_dir=cache_dir)


def repair(manifest: Manifest, directory: Path, components: list[str] | None, report: Any) -> None:
    from .hub import repair_files

    repair_files(manifest, directory, components=components)


def verification_error(
    resolved: Resolution, report: Any, loader: str, on_failure: str, offline: bool
) -> VerificationError:
    manifest = resolved.manifest
    assert manifest is not None
    verb = {"refuse": "refused to load", "repair": "could not repair", "warn": "loading despite failed checks:"}
    lines = [
        f"modelguard {verb[on_failure]} {manifest.model} ({loader}) from {report.directory}: "
        f"files do not match {report.expectations_phrase}",
        f"  {resolved.describe()}",
        *("  " + line for line in format_report(report, quiet=True).splitlines()),
    ]
    remedies = list(dict.fromkeys(r.remedy for r in report.failures if r.remedy))
    remedy = "; ".join(remedies) if remedies else None
    if on_failure == "repair" and offline:
        lines.append("  (repair skipped: downloads are off, HF_HUB_OFFLINE)")
    elif on_failure == "repair" and manifest.origin != "manifest":
        lines.append("  (repair skipped: it needs a manifest; download the files again with the command below)")
    if resolved.how == "identified":
        hint = (f"if this directory is a different model (e.g. a fine-tune of {manifest.model}), save its own manifest: "
                f"`modelguard build {quote(str(report.directory))} --model ORG/NAME "
                f"-o {quote(str(Path(report.directory) / LOCAL_MANIFEST_NAME))}`")
        remedy = f"{remedy}; {hint}" if remedy else hint
    elif on_failure == "refuse" and remedy and manifest.origin == "manifest":
        remedy += f"; or set {ENV_POLICY}=repair to re-download broken files while loading"
    return VerificationError("\n".join(lines), report=report, path=report.directory, remedy=remedy)
