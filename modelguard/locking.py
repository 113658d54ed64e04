"""Lock entries (:mod:`modelguard.lockfile`) made from where a model's files are described:
the Hub's metadata (no weights downloaded), a Hugging Face cache snapshot (the Hub's listing
saved at download, else the files hashed and checked against their blob names), or a local
folder (hashed). Every path gives the same entry for the same files: components by
:mod:`modelguard.build`'s rule sets, LFS files by sha256 and small files by git blob sha1
where the Hub says which is which, sha256 where only the bytes are known.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from shlex import quote
from typing import Iterable

from . import hfcache, hflisting, registry
from .build import build_manifest, resolve_rules
from .env import is_offline
from .errors import DownloadError, UsageError
from .fs import walk_files
from .hashing import hash_file
from .hub.client import COMMIT
from .hub.metadata import build_from_hub
from .lockfile import LockEntry, make_entry
from .manifest import Component, FileEntry, Manifest, check_relative_path
from .statcache import open_cache

_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
_SHA1 = re.compile(r"\A[0-9a-f]{40}\Z")


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """``ORG/NAME[@REV]`` -> ``(model, revision or None)``; a clear UsageError for anything else."""
    model, at, revision = spec.partition("@")
    if at and not revision.strip():
        raise UsageError(f"'{spec}' names no revision after '@'", expected="ORG/NAME or ORG/NAME@REVISION",
                         actual=spec, remedy=f"write {quote(model)} or {quote(model + '@main')}")
    registry.validate_model_id(model)
    if not registry.looks_like_model_id(model):
        raise UsageError(f"'{model}' is not a model id", expected="ORG/NAME, e.g. BAAI/bge-m3", actual=model)
    return model, (revision.strip() or None) if at else None


def _entry(model_id: str, revision: str, digests: dict[str, dict[str, object]]) -> LockEntry:
    """An entry from ``{path: {"size": n, digest: hex}}``, components by the build rules."""
    paths = sorted(digests)
    rules = resolve_rules(None, model_id, paths)
    files = tuple(
        FileEntry(path=check_relative_path(p, source=model_id), size=int(digests[p]["size"]),  # type: ignore[call-overload]
                  component=rules.component_for(p),
                  digests={k: str(v) for k, v in digests[p].items() if k != "size"})
        for p in paths
    )
    used = {f.component for f in files}
    components: dict[str, Component] = {n: c for n, c in rules.components.items() if n in used}
    return make_entry(model_id, Manifest(model=model_id, revision=revision, components=components, files=files))


def _restrict(digests: dict[str, dict[str, object]], files: Iterable[str] | None, where: str
              ) -> dict[str, dict[str, object]]:
    if files is None:
        return digests
    wanted = sorted({check_relative_path(f, source=where) for f in files})
    unknown = [f for f in wanted if f not in digests]
    if unknown:
        raise UsageError(f"{where} has no file(s) {', '.join(unknown)}", path=where,
                         expected="files of the snapshot", actual=", ".join(unknown))
    return {f: digests[f] for f in wanted}


# --------------------------------------------------------------------------- from a cache snapshot


def entry_for_snapshot(model_id: str, snapshot_dir: str | os.PathLike[str],
                       files: Iterable[str] | None = None) -> LockEntry:
    """The entry for a Hugging Face cache snapshot, offline: the revision is the snapshot
    folder's name; sizes and digests from the Hub's listing saved at download, else each
    file hashed (through the verified-digest cache) and checked against the content address
    its blob is named by. ``files`` (relative paths) restricts the entry to those files."""
    snap = hfcache.snapshot_root(snapshot_dir)
    if snap is None:
        raise UsageError(f"{snapshot_dir} is not a Hugging Face cache snapshot", path=snapshot_dir,
                         expected=".../models--ORG--NAME/snapshots/COMMIT",
                         remedy="lock a plain folder with --from DIR and ORG/NAME@COMMIT")
    revision = snap.name
    listing = hflisting.listing_path(snap)
    if listing is not None:
        try:
            digests = hflisting.parse_listing(listing)
        except hflisting.ListingError:
            digests = None  # unusable: hash the files instead
        if digests is not None:
            return _entry(model_id, revision, _restrict(digests, files, str(snap)))
    paths = sorted(files) if files is not None else walk_files(snap, regular_only=False)
    if not paths:
        raise UsageError(f"the snapshot {snap} holds no files", path=snap,
                         remedy=f"download it again: modelguard lock add {quote(model_id + '@' + revision)} "
                                "while online")
    return _entry(model_id, revision, {p: _hash_snapshot_file(snap, p) for p in paths})


def _hash_snapshot_file(snap: Path, rel: str) -> dict[str, object]:
    """Size and digest of one snapshot file; a file whose bytes do not match its blob's name is refused."""
    full = snap / check_relative_path(rel, source=str(snap))
    blob = os.path.basename(os.readlink(full)) if os.path.islink(full) else ""
    algorithm = "git_sha1" if _SHA1.match(blob) else "sha256"
    try:
        st = os.stat(full)
        cache = open_cache(True)
        digests = cache.lookup(os.path.realpath(full), st, (algorithm,))
        if digests is None:
            digests = hash_file(full, (algorithm,))
            if not blob or digests[algorithm] == blob:
                cache.store(os.path.realpath(full), st, digests)
    except OSError as exc:
        raise UsageError(f"{full} cannot be read: {exc.strerror}", path=full,
                         remedy="download the model again, then lock it") from None
    if blob and (_SHA256.match(blob) or _SHA1.match(blob)) and digests[algorithm] != blob:
        raise UsageError(
            f"{full} does not match the content address its blob is named by: the cache copy is damaged, "
            "so it is not locked", path=full, expected=f"{algorithm} {blob}", actual=f"{algorithm} {digests[algorithm]}",
            remedy=f"download it again (hf download {quote(str(snap.parent.parent.name))} ... --force-download), "
                   "or lock from the Hub while online",
        )
    return {"size": st.st_size, algorithm: digests[algorithm]}


# --------------------------------------------------------------------------- from the Hub, a folder, or the cache


def entry_from_hub(model_id: str, revision: str | None = None) -> LockEntry:
    """The entry from the Hub's metadata of ``model_id`` at ``revision`` (default main; a branch
    or tag is resolved to its commit). No weights are downloaded."""
    try:
        manifest = build_from_hub(model_id, revision)
    except DownloadError as exc:
        if exc.actual == "repository not found" or exc.expected == "a branch, tag or commit":
            raise UsageError(exc.message, expected=exc.expected, actual=exc.actual, remedy=exc.remedy) from None
        raise
    return _entry(model_id, manifest.revision or "", {
        f.path: {"size": f.size, **f.digests} for f in manifest.files
    })


def entry_for_directory(model_id: str, directory: str | os.PathLike[str], revision: str | None = None) -> LockEntry:
    """The entry for a local folder, hashing its files (sha256). The commit comes from
    ``revision`` (40 hex digits), or from the folder when it is a cache snapshot or a
    ``local_dir`` download that recorded one."""
    root = Path(directory)
    snap = hfcache.snapshot_root(root) if root.is_dir() else None
    if snap is not None and (revision is None or registry.same_revision(revision, snap.name)):
        return entry_for_snapshot(model_id, snap)
    commit = revision if revision and COMMIT.match(revision) else _recorded_commit(root)
    if commit is None or (revision and not registry.same_revision(revision, commit)):
        raise UsageError(
            f"which commit of {model_id} {root} holds is not known" if revision is None
            else f"'{revision}' is not a commit: a lock pins a commit, and {root} does not say which one it holds",
            path=root, expected="ORG/NAME@COMMIT (40 hexadecimal digits)", actual=revision,
            remedy=f"name the commit: modelguard lock add {quote(model_id)}@COMMIT --from {quote(str(root))}",
        )
    # no chunk digests: a lock entry is the same whether it came from the Hub or from the files
    manifest = build_manifest(root, model_id, commit, algorithms=("sha256",), chunks=False)
    return _entry(model_id, commit, {f.path: {"size": f.size, **f.digests} for f in manifest.files})


def _recorded_commit(directory: Path) -> str | None:
    """The one commit a ``local_dir`` download recorded (its saved listing's name), if any."""
    listing = hflisting.listing_path(directory)
    return listing.stem if listing is not None and COMMIT.match(listing.stem) else None


def entry_for_model(spec: str, *, source_dir: str | os.PathLike[str] | None = None,
                    cache_dir: str | os.PathLike[str] | None = None) -> LockEntry:
    """``lock add ORG/NAME[@REV]``: from ``source_dir`` (hashed) when given; online, from the Hub's
    metadata; offline, from the model's snapshot in the cache (its saved listing)."""
    model, revision = parse_model_spec(spec)
    if source_dir is not None:
        return entry_for_directory(model, source_dir, revision)
    if not is_offline():
        return entry_from_hub(model, revision)
    snap = hfcache.snapshot_path(model, revision, cache_dir)
    if snap is None:
        raise UsageError(
            f"HF_HUB_OFFLINE is set and {model}{' @ ' + revision if revision else ''} is not in the Hugging Face "
            f"cache ({hfcache.hf_cache_dir(cache_dir)}), so there is nothing to lock it from",
            expected="the Hub reachable, or a snapshot of the model in the cache", actual="no snapshot",
            remedy=f"unset HF_HUB_OFFLINE to lock from the Hub's metadata (no weights are downloaded); "
                   f"or lock a local copy: modelguard lock add {quote(spec)} --from DIR",
        )
    return entry_for_snapshot(model, snap)


def record_default_branch(model_id: str, commit: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Record ``commit`` as the cache's ``refs/main`` of ``model_id`` when the cache has none, so an
    offline load that names no revision finds the locked snapshot (huggingface_hub resolves the
    default branch through ``refs/main``). An existing ``refs/main`` is left alone. True when written."""
    refs = hfcache.repo_folder(model_id, cache_dir) / "refs" / "main"
    if refs.exists() or not (refs.parent.parent / "snapshots" / commit).is_dir():
        return False
    refs.parent.mkdir(parents=True, exist_ok=True)
    tmp = refs.with_name(f".main.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, refs)
    return True
