"""File-level checks for loaders that read weight files directly (not a hook itself).

``check_files(paths, loader=...)`` verifies each file against the expectation that
covers it, before the caller lets the library read it:

- a manifest in the file's folder or a parent folder (``modelguard.yaml``, the nearest
  one that lists the file wins);
- a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/<commit>/...``) whose
  model has an entry in the project lock (a snapshot of another commit is refused) or a
  known manifest;
- a folder declared with :func:`modelguard.map_directory` (or the directory map file)
  (:mod:`modelguard.hooks.expectations` finds it).

A file that no expectation covers follows the unknown-model policy (warn, refuse or
allow); one that does not exist and is covered by nothing is left to the library's
own "not found". An open file object (``open(path, "rb")``, whose ``name`` is the path
of the very file its descriptor reads) is checked like its path (:func:`check_source`).

In-memory data (``bytes``, ``io.BytesIO``, a file object with no file behind it) has no
path, so no expectation can cover it: modelguard cannot say whether it holds what a
manifest promises. Under the unknown-model policy ``refuse`` a direct read of it outside a
guarded loader is refused (:class:`~modelguard.errors.ManifestNotFoundError`); otherwise
it loads, and the ``modelguard`` logger says once per process, at DEBUG level, that it
was not verified. Inside a guarded loader (diffusers reading a verified checkpoint's bytes
with ``disable_mmap``) it loads: the loader's files were verified before construction.
Inside a guarded load (:func:`modelguard.guard.verified_scope`) a file
that the load already verified (its folder checked by ``from_pretrained``, or the file
itself by an outer call) is not checked again. Verification uses the digest cache, so
an unchanged file costs a stat and a cache lookup; a file this process verified through the
digest cache is not looked up again while its stat key (device, inode, size, mtime, ctime) is
unchanged, for at most :data:`MEMO_MAX_AGE_S` (and never under ``rehash``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import contextvars
import logging
import os
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from .. import engine, guard, hfcache
from ..errors import ManifestNotFoundError
from ..hashing import stat_key
from ..policy import ENV_UNKNOWN
from ..recording import record_load, recording_path
from ..registry import LOCAL_MANIFEST_NAME
from ..resolve import Resolution
from ..statcache import max_age_from_env
from .expectations import MEMO_LIMIT, covering, expectations, file_path

__all__ = ["check_files", "check_folder", "check_source", "covering", "file_path", "inspecting", "mark_verified",
           "opened_file_path", "verify_entries"]

# Per process, bounded by MEMO_LIMIT: file -> (stat key, the entry it verified against, until when).
_verified_memo: dict[str, tuple[Any, Any, float]] = {}

_inspecting: contextvars.ContextVar[bool] = contextvars.ContextVar("modelguard_inspecting", default=False)

MEMO_MAX_AGE_S = 3600.0  # a file verified through the digest cache is trusted unchanged this long at most
_log = logging.getLogger("modelguard")
_noted_in_memory: set[str] = set()  # loaders whose unverified in-memory reads were noted (once per process)

FILE_KEY = "file"
UNKNOWN_FOLDER_KEY = "unknown-files"  # a folder whose uncovered files this load already reported


def opened_file_path(value: Any) -> str | None:
    """The path of the file an open file object reads: its ``name``, when that names a
    regular file and its descriptor reads that very file (same device and inode); else None."""
    name = getattr(value, "name", None)
    fileno = getattr(value, "fileno", None)
    if not isinstance(name, str) or not name or fileno is None:
        return None
    try:
        opened = os.fstat(fileno())
        named = os.stat(name)
    except (OSError, ValueError, TypeError, AttributeError):  # io.UnsupportedOperation is an OSError
        return None
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
        return None
    return file_path(name)


def check_source(value: Any, *, loader: str, in_loader: bool) -> str | None:
    """Check what a loader is about to read: a path (:func:`check_files`), an open file (its
    path), or in-memory data (see the module docstring; ``in_loader``: the read runs inside a
    guarded loader, as :func:`modelguard.guard.in_loader_scope` said before the caller opened
    its own scope). Returns the file's path, if any."""
    if _inspecting.get():
        return file_path(value)
    path = file_path(value)
    if path is None and not isinstance(value, (str, os.PathLike)):
        path = opened_file_path(value)
        if path is None:
            _in_memory(value, loader, in_loader)
            return None
    if path is not None:
        _check_paths([path], loader)
    return path


def _in_memory(value: Any, loader: str, in_loader: bool) -> None:
    what = (f"{len(value)} bytes in memory" if isinstance(value, (bytes, bytearray, memoryview))
            else f"a {type(value).__module__}.{type(value).__qualname__} object, not an open file at a known path")
    if guard.current_policy().effective_unknown() == "refuse" and not in_loader:
        raise ManifestNotFoundError(
            f"modelguard: {loader} was given {what}, not a file, so no manifest can cover it, and the "
            "unknown-model policy 'refuse' forbids loading unverified models",
            expected="a path (or a file opened from one) that a manifest, cache snapshot or mapped folder covers",
            actual=what,
            remedy=(f"load the weights from their file ({loader}(path)) so the guard verifies it; or set "
                    f"{ENV_UNKNOWN}=warn to let in-memory data load unverified"),
        )
    if loader not in _noted_in_memory:
        _noted_in_memory.add(loader)
        _log.debug("%s read %s: in-memory data has no path, so it is not verified (noted once per process)",
                   loader, what)


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _already_checked(path: str, done: frozenset[tuple[str, str]] | None) -> bool:
    """Whether this load already verified ``path`` (or reported its folder as unknown)."""
    if not done:
        return False
    if (path, FILE_KEY) in done:
        return True

    for folder, components in done:
        if components in (FILE_KEY, UNKNOWN_FOLDER_KEY) or not _under(path, folder):
            continue
        if components in ("*", "?"):
            return True
        resolved = guard.resolve_model(folder)
        if resolved.manifest is None or resolved.directory is None:
            continue
        relative = os.path.relpath(path, os.path.realpath(resolved.directory)).replace(os.sep, "/")
        entry = resolved.manifest.file(relative)
        if entry is not None and entry.component in components.split(","):
            return True
    return False


def mark_verified(directory: str | os.PathLike[str], *, unknown: bool = False) -> None:
    """Within the current guarded load, treat everything under ``directory`` as verified
    (``unknown``: as already reported unverified), including for the loaders nested in it
    that resolve one of its subfolders on its own."""

    done = guard.verified_keys()
    if done is None:
        return
    root = os.path.realpath(directory)
    keys = {(root, "?" if unknown else "*")}
    try:
        children = [entry.path for entry in os.scandir(root) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        children = []
    for child in children:
        real = os.path.realpath(child)
        keys.update({(real, "?")} if unknown else {(real, "*"), (real, "?")})
    guard.add_verified(keys)


@contextlib.contextmanager
def inspecting() -> Iterator[None]:
    """Within this block, reads are modelguard's own inspection of files it has already judged
    (describing what a file that failed verification holds): they are not checked again."""
    token = _inspecting.set(True)
    try:
        yield
    finally:
        _inspecting.reset(token)


def check_files(paths: Iterable[Any], *, loader: str) -> None:
    """Verify the files ``paths`` before ``loader`` reads them (see the module docstring).

    Raises :class:`~modelguard.errors.VerificationError` under the policy ``refuse``
    (after a repair attempt under ``repair``), warns under ``warn``;
    :class:`~modelguard.errors.ManifestNotFoundError` for an uncovered file when the
    unknown-model policy is ``refuse``.
    """

    if _inspecting.get():
        return
    _check_paths([file_path(value) for value in paths], loader)


def _check_paths(paths: list[str | None], loader: str) -> None:
    """:func:`check_files` for paths :func:`file_path` returned."""
    done = guard.verified_keys()
    wanted: list[str] = []
    for path in paths:
        if path is not None and path not in wanted and not _already_checked(path, done):
            wanted.append(path)
    if not wanted:
        return
    policy = guard.current_policy()
    trust = not policy.effective_rehash()
    groups: dict[tuple[str, int], tuple[Path, Any, str, list[Any]]] = {}
    reported: set[tuple[str, str]] = set()
    for path in wanted:
        found = covering(path)
        if found is None:
            # One report per folder and load (model.onnx and its model.onnx_data, say).
            key = (os.path.dirname(path), UNKNOWN_FOLDER_KEY)
            if os.path.lexists(path) and key not in reported and not (done and key in done):
                _unknown_file(path, policy.effective_unknown(), loader)
                reported.add(key)
            continue
        root, manifest, how, entry = found
        if trust and _still_verified(path, root, entry):
            continue
        group = groups.setdefault((str(root), id(manifest)), (root, manifest, how, []))
        if entry not in group[3]:
            group[3].append(entry)
    for root, manifest, how, entries in groups.values():
        report = verify_entries(root, manifest, how, entries, loader, policy)
        if trust and report is not None:
            _remember_verified(root, entries, report)
    if recording_path() is not None:
        _record_snapshot_files(wanted, loader)
    done = guard.verified_keys()
    if done is not None:
        guard.add_verified({(path, FILE_KEY) for path in wanted} | reported)


def _record_snapshot_files(paths: list[str], loader: str) -> None:
    """For ``modelguard lock record``: the files read from Hugging Face cache snapshots, by snapshot."""
    found: dict[Path, list[str]] = {}
    for path in paths:
        root = hfcache.snapshot_root(os.path.dirname(path))
        if root is not None and os.path.lexists(path):
            found.setdefault(root, []).append(os.path.relpath(path, root).replace(os.sep, "/"))
    for root, files in found.items():
        parsed = hfcache.parse_snapshot_path(root)
        if parsed is not None:
            record_load(parsed[0], parsed[1], root, files, how="hf-cache-snapshot", loader=loader)


def _unknown_file(path: str, unknown: str, loader: str) -> None:
    folder = Path(os.path.dirname(path))
    guard.unknown_model(path, Resolution(None, None, folder, None, "unknown"), unknown, loader)


def _entry_key(root: Path, entry: Any) -> tuple[Any, ...]:
    return (str(root), entry.path, entry.size, tuple(sorted(entry.digests.items())),
            entry.chunks.root if entry.chunks is not None else None)


def _still_verified(path: str, root: Path, entry: Any) -> bool:
    """Whether this process verified ``path`` against ``entry`` through the digest cache and the
    file is unchanged since (same device, inode, size, mtime and ctime), within the digest
    cache's own trust period: the answer the digest cache would give, without asking it."""
    known = _verified_memo.get(path)
    if known is None or known[2] < time.monotonic() or known[1] != _entry_key(root, entry):
        return False
    try:
        return stat_key(os.stat(path)) == known[0]
    except OSError:
        return False


def _remember_verified(root: Path, entries: list[Any], report: Any) -> None:
    """Remember the files the digest cache vouched for (a hit: past its racy window, within its age)."""
    by_path = {entry.path: entry for entry in entries}
    until = time.monotonic() + min(max_age_from_env(), MEMO_MAX_AGE_S)
    for result in report.files:
        entry = by_path.get(result.path)
        if entry is None or not result.ok or not result.cached:
            continue
        path = file_path(os.path.join(root, entry.path))
        try:
            key = stat_key(os.stat(path))
        except OSError:
            continue
        if len(_verified_memo) >= MEMO_LIMIT:
            _verified_memo.clear()
        _verified_memo[path] = (key, _entry_key(root, entry), until)


def verify_entries(root: Path, manifest: Any, how: str, entries: list[Any], loader: str, policy: Any) -> Any:
    """Verify ``entries`` of ``manifest`` under ``root`` by the policy; the report when it passed."""
    used = sorted({entry.component for entry in entries})
    # The loader is about to read these files: each is required for this load, even in a
    # component the manifest marks optional (an ONNX export, say).
    subset = dataclasses.replace(
        manifest, files=tuple(entries),
        components={name: dataclasses.replace(manifest.components[name], required=True) for name in used},
    )
    on_failure = policy.effective_on_failure()
    workers = 1 if len(entries) == 1 else None  # one file: no need to count CPUs for reader threads
    report = engine.verify_directory(subset, root, components=used, max_workers=workers,
                                     rehash=policy.effective_rehash())
    if not report.ok and on_failure == "repair" and not policy.effective_offline():
        guard.repair(subset, root, used, report)
        report = engine.verify_directory(subset, root, components=used, max_workers=workers,
                                     rehash=policy.effective_rehash())
    if report.ok:
        return report
    resolved = Resolution(manifest.model, manifest.revision, root, manifest, how)
    error = guard.verification_error(resolved, report, loader, on_failure, policy.effective_offline())
    if on_failure == "warn":
        warnings.warn(str(error), guard.GuardWarning, stacklevel=4)
        return None
    raise error


def check_folder(folder: str | os.PathLike[str], *, loader: str) -> None:
    """Verify the files directly in ``folder`` (a model's or adapter's own folder, possibly a
    subfolder of a larger model) against the nearest expectation that lists any of them;
    a folder no expectation covers follows the unknown-model policy."""

    path = file_path(folder)
    if path is None:
        return
    path = os.path.realpath(path)  # the folder itself may be a link
    if _already_checked(path, guard.verified_keys()):
        return
    key = (path, "?")
    for root, manifest, _how in expectations(path):
        relative = os.path.relpath(path, root).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        files = [os.path.join(root, entry.path) for entry in manifest.files
                 if entry.path.startswith(prefix) and "/" not in entry.path[len(prefix):]
                 and entry.path[len(prefix):] != LOCAL_MANIFEST_NAME]
        if files:
            check_files(files, loader=loader)
            key = (path, "*")
            break
    else:
        guard.unknown_model(path, Resolution(None, None, Path(path), None, "unknown"),
                             guard.current_policy().effective_unknown(), loader)
    done = guard.verified_keys()
    if done is not None:
        guard.add_verified({key})
