"""File-level checks for loaders that read weight files directly (not a hook itself).

``check_files(paths, loader=...)`` verifies each file against the expectation that
covers it, before the caller lets the library read it:

- a manifest in the file's folder or a parent folder (``modelguard.yaml``, the nearest
  one that lists the file wins);
- a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/<commit>/...``) whose
  model has an entry in the project lock (a snapshot of another commit is refused) or a
  known manifest;
- a folder declared with :func:`modelguard.map_directory` (or the directory map file).

A file that no expectation covers follows the unknown-model policy (warn, refuse or
allow); one that does not exist and is covered by nothing is left to the library's
own "not found". Inside a guarded load (:func:`modelguard.guard.verified_scope`) a file
that the load already verified (its folder checked by ``from_pretrained``, or the file
itself by an outer call) is not checked again. Verification uses the digest cache, so
an unchanged file costs a stat and a cache lookup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import contextvars
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from .. import engine, guard, hfcache
from ..manifest import load_manifest
from ..policy import directory_map
from ..recording import record_load, recording_path
from ..registry import LOCAL_MANIFEST_NAME, find_manifest
from ..resolve import Resolution, locked_entry, mapped_model

# Parsed local manifests, by path, kept while the file's (inode, size, mtime) is unchanged.
_manifest_memo: dict[str, tuple[tuple[int, int, int], Any]] = {}

_inspecting: contextvars.ContextVar[bool] = contextvars.ContextVar("modelguard_inspecting", default=False)

FILE_KEY = "file"
UNKNOWN_FOLDER_KEY = "unknown-files"  # a folder whose uncovered files this load already reported


def file_path(value: Any) -> str | None:
    """The absolute path of ``value`` (a str or PathLike) with its folder's links resolved
    (the file name itself is kept: a Hugging Face snapshot file is a link to a blob); None
    for file objects and bytes, which cannot be matched to an expectation."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        return None
    text = os.fspath(value)
    if isinstance(text, bytes) or not text:
        return None
    absolute = os.path.abspath(os.path.expanduser(text))
    folder, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(folder), name)


def _local_manifest(folder: str) -> Any:
    path = os.path.join(folder, LOCAL_MANIFEST_NAME)
    try:
        st = os.stat(path)
    except OSError:
        return None
    stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _manifest_memo.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    manifest = load_manifest(path)  # a broken manifest next to the weights is the user's to fix: raise
    _manifest_memo[path] = (stamp, manifest)
    return manifest


def _expectations(folder: str) -> Iterable[tuple[Path, Any, str]]:
    """``(root, manifest, how)`` for each expectation that could cover files under ``folder``,
    nearest first."""

    extra = list(guard.current_policy().manifest_dirs)
    snapshot = hfcache.snapshot_root(folder)
    current = Path(folder)
    for candidate in (current, *current.parents):
        manifest = _local_manifest(str(candidate))
        if manifest is not None:
            yield candidate, manifest, "local-manifest"
        if snapshot is not None and candidate == snapshot:
            parsed = hfcache.parse_snapshot_path(candidate)
            if parsed is not None:
                locked = locked_entry(parsed[0], parsed[1])  # another commit than the locked one: refused
                manifest = locked.manifest if locked is not None else find_manifest(parsed[0], parsed[1],
                                                                                    extra_dirs=extra)
                if manifest is not None:
                    yield candidate, manifest, "lock" if locked is not None else "hf-cache-snapshot"
        mapped = mapped_model(candidate, directory_map)
        if mapped is not None:
            manifest = find_manifest(mapped[0], mapped[1], extra_dirs=extra)
            if manifest is not None:
                yield candidate, manifest, "user-mapping"


def covering(path: str) -> tuple[Path, Any, str, Any] | None:
    """``(root, manifest, how, entry)`` of the nearest expectation that lists ``path``."""
    for root, manifest, how in _expectations(os.path.dirname(path)):
        relative = os.path.relpath(path, root).replace(os.sep, "/")
        entry = manifest.file(relative)
        if entry is not None:
            return root, manifest, how, entry
    return None


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
    done = guard.verified_keys()
    wanted: list[str] = []
    for value in paths:
        path = file_path(value)
        if path is not None and path not in wanted and not _already_checked(path, done):
            wanted.append(path)
    if not wanted:
        return
    policy = guard.current_policy()
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
        group = groups.setdefault((str(root), id(manifest)), (root, manifest, how, []))
        if entry not in group[3]:
            group[3].append(entry)
    for root, manifest, how, entries in groups.values():
        verify_entries(root, manifest, how, entries, loader, policy)
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


def verify_entries(root: Path, manifest: Any, how: str, entries: list[Any], loader: str, policy: Any) -> None:
    used = sorted({entry.component for entry in entries})
    # The loader is about to read these files: each is required for this load, even in a
    # component the manifest marks optional (an ONNX export, say).
    subset = dataclasses.replace(
        manifest, files=tuple(entries),
        components={name: dataclasses.replace(manifest.components[name], required=True) for name in used},
    )
    on_failure = policy.effective_on_failure()
    workers = 1 if len(entries) == 1 else None  # one file: no need to count CPUs for reader threads
    report = engine.verify_directory(subset, root, components=used, max_workers=workers)
    if not report.ok and on_failure == "repair" and not policy.effective_offline():
        guard.repair(subset, root, used, report)
        report = engine.verify_directory(subset, root, components=used, max_workers=workers)
    if report.ok:
        return
    resolved = Resolution(manifest.model, manifest.revision, root, manifest, how)
    error = guard.verification_error(resolved, report, loader, on_failure, policy.effective_offline())
    if on_failure == "warn":
        warnings.warn(str(error), guard.GuardWarning, stacklevel=4)
        return
    raise error


def check_folder(folder: str | os.PathLike[str], *, loader: str) -> None:
    """Verify the files directly in ``folder`` (a model's or adapter's own folder, possibly a
    subfolder of a larger model) against the nearest expectation that lists any of them;
    a folder no expectation covers follows the unknown-model policy."""

    path = file_path(folder)
    if path is None or _already_checked(path, guard.verified_keys()):
        return
    key = (path, "?")
    for root, manifest, _how in _expectations(path):
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
