"""Which expectation covers a file a loader reads directly, found with a few stats when warm.

The expectations, nearest first from the file's folder up: a ``modelguard.yaml`` in the
folder or a parent, a Hugging Face cache snapshot whose model has a lock entry (a snapshot of
another commit than the locked one is refused) or a known manifest, a folder
declared with :func:`modelguard.map_directory` or in the user's directory map file. Per
process, each manifest file is parsed once while its (inode, size, mtime) is unchanged, a
folder's realpath is kept while the folder leads to the same directory, the folders above a
folder (pure path logic) once, and the mapping file's answer per folder while the file is
unchanged (every memo bounded by :data:`MEMO_LIMIT`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterable

from .. import guard, hfcache
from ..manifest import load_manifest
from ..policy import directory_map
from ..registry import LOCAL_MANIFEST_NAME, directory_map_file, find_manifest
from ..resolve import locked_entry, mapped_model

# Parsed manifests (a folder's own, or one on the search path), by path, kept while the
# file's (inode, size, mtime) is unchanged.
_manifest_memo: dict[str, tuple[tuple[int, int, int], Any]] = {}
# folder -> ((dev, ino), its realpath); folder -> the expectation levels above it (pure path
# logic); (folder, directory map file stamp) -> the mapped model.
MEMO_LIMIT = 4096
_folder_memo: dict[str, tuple[tuple[int, int], str]] = {}
_levels_memo: dict[str, tuple[tuple[str, Any], ...]] = {}
_mapped_memo: dict[tuple[str, Any], Any] = {}


def file_path(value: Any) -> str | None:
    """The absolute path of ``value`` (a str or PathLike) with its folder's links resolved
    (the file name itself is kept: a Hugging Face snapshot file is a link to a blob); None
    for file objects and bytes (see :func:`modelguard.hooks.files.check_source` for those)."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        return None
    text = os.fspath(value)
    if isinstance(text, bytes) or not text:
        return None
    absolute = os.path.abspath(os.path.expanduser(text))
    folder, name = os.path.split(absolute)
    return os.path.join(real_folder(folder), name)


def real_folder(folder: str) -> str:
    """``os.path.realpath(folder)``, remembered while ``folder`` still leads to the same directory
    (one stat instead of one per path component)."""
    try:
        st = os.stat(folder)
    except OSError:
        return os.path.realpath(folder)
    known = _folder_memo.get(folder)
    if known is not None and known[0] == (st.st_dev, st.st_ino):
        return known[1]
    real = os.path.realpath(folder)
    if len(_folder_memo) >= MEMO_LIMIT:
        _folder_memo.clear()
    _folder_memo[folder] = ((st.st_dev, st.st_ino), real)
    return real


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def _parsed(path: str, stamp: tuple[int, int, int]) -> Any:
    cached = _manifest_memo.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    manifest = load_manifest(path)  # a broken manifest is the user's to fix: raise
    if len(_manifest_memo) >= MEMO_LIMIT:
        _manifest_memo.clear()
    _manifest_memo[path] = (stamp, manifest)
    return manifest


def _memo_manifest(path: str | os.PathLike[str]) -> Any:
    """The manifest file at ``path`` (None: not there), parsed once while it is unchanged."""
    path = os.fspath(path)
    stamp = _stamp(path)
    return None if stamp is None else _parsed(path, stamp)


def _local_manifest(folder: str) -> Any:
    return _memo_manifest(os.path.join(folder, LOCAL_MANIFEST_NAME))


def _registry_manifest(model: str, revision: str | None, extra: list[Any]) -> Any:
    """:func:`modelguard.registry.find_manifest`, with each manifest file parsed once while unchanged."""
    return find_manifest(model, revision, extra_dirs=extra, load=_memo_manifest)


def _levels(folder: str) -> tuple[tuple[str, Any], ...]:
    """``(candidate folder, (model, commit) when it is a cache snapshot's root)`` for ``folder``
    and each folder above it, nearest first."""
    known = _levels_memo.get(folder)
    if known is not None:
        return known
    snapshot = hfcache.snapshot_root(folder)
    snapshot_text = str(snapshot) if snapshot is not None else None
    levels = []
    current = folder
    while True:
        parsed = hfcache.parse_snapshot_path(current) if current == snapshot_text else None
        levels.append((current, parsed))
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    if len(_levels_memo) >= MEMO_LIMIT:
        _levels_memo.clear()
    _levels_memo[folder] = tuple(levels)
    return _levels_memo[folder]


def _mapped(candidate: str, declared: dict[str, Any], map_stamp: Any) -> Any:
    """The (model, revision) the program or the user's mapping file says ``candidate`` (a real path) holds."""
    if candidate in declared:
        return declared[candidate]
    if map_stamp is None:
        return None
    key = (candidate, map_stamp)
    if key not in _mapped_memo:
        if len(_mapped_memo) >= MEMO_LIMIT:
            _mapped_memo.clear()
        _mapped_memo[key] = mapped_model(Path(candidate), {})
    return _mapped_memo[key]


def expectations(folder: str, *, real: bool = False) -> Iterable[tuple[Path, Any, str]]:
    """``(root, manifest, how)`` for each expectation that could cover files under ``folder``,
    nearest first (``real``: its links are resolved already)."""

    extra = list(guard.current_policy().manifest_dirs)
    declared = dict(directory_map)
    map_stamp: Any = ()  # the user's mapping file, stat'ed when first needed (a nearer manifest usually answers)
    for candidate, snapshot in _levels(folder if real else real_folder(folder)):
        manifest = _local_manifest(candidate)
        if manifest is not None:
            yield Path(candidate), manifest, "local-manifest"
        if snapshot is not None:
            locked = locked_entry(snapshot[0], snapshot[1])  # another commit than the locked one: refused
            manifest = locked.manifest if locked is not None else _registry_manifest(snapshot[0], snapshot[1], extra)
            if manifest is not None:
                yield Path(candidate), manifest, "lock" if locked is not None else "hf-cache-snapshot"
        if map_stamp == ():
            map_file = str(directory_map_file())
            map_stamp = _stamp(map_file)
            map_stamp = None if map_stamp is None else (map_file, map_stamp)
        mapped = _mapped(candidate, declared, map_stamp)
        if mapped is not None:
            manifest = _registry_manifest(mapped[0], mapped[1], extra)
            if manifest is not None:
                yield Path(candidate), manifest, "user-mapping"


def covering(path: str) -> tuple[Path, Any, str, Any] | None:
    """``(root, manifest, how, entry)`` of the nearest expectation that lists ``path``."""
    for root, manifest, how in expectations(os.path.dirname(path), real=True):
        relative = os.path.relpath(path, root).replace(os.sep, "/")
        entry = manifest.file(relative)
        if entry is not None:
            return root, manifest, how, entry
    return None


