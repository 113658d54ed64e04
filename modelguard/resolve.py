"""Which expectations apply to a target, and where its files are: the one resolver.

A target is a model id (``BAAI/bge-m3``), a model id with a revision, a manifest file, a
model directory, or a path inside a Hugging Face cache snapshot. Every entry point (the
CLI, :func:`modelguard.verify`, the loader guard and its hooks, ``audit``, ``probe``,
``fetch``) asks here and gets a frozen :class:`Resolution`: model id, revision, directory,
the manifest that applies (or None) and how it was found (:meth:`Resolution.describe`).

Sources, strongest first:

1. a manifest the caller names (a :class:`Manifest` or a file);
2. the project's lock (:mod:`modelguard.lockfile`: ``$MODELGUARD_LOCK``, else ``modelguard.lock``
   in the working directory or above) when it has an entry for the model id: the model id a
   loader is given, the model of a cache snapshot path, or the model a directory is mapped to.
   The entry pins the revision too: a snapshot of another commit, or a ``revision`` naming
   another commit (a branch or tag the cache resolves elsewhere, or cannot resolve), is refused
   with :class:`~modelguard.errors.VerificationError` naming the lock entry and the fix;
3. for a directory: its own ``modelguard.yaml``, the user's directory mapping, identification
   by file names and sizes; for a model id or cache snapshot: the manifest search path
   (:mod:`modelguard.registry`);
4. what the Hugging Face cache recorded (:mod:`modelguard.hflisting`);
5. nothing: ``how == "unknown"`` (the unknown-model policy applies).

A folder's own ``modelguard.yaml`` is what the folder says it is and is not checked against
the lock (the lock names model ids, not folders). Nothing here downloads or hashes; the lock
is parsed once per process (:func:`modelguard.lockfile.cached_lock`).
"""

from __future__ import annotations

import os
from pathlib import Path
from shlex import quote
from typing import Any, Mapping, NamedTuple

from . import hfcache, hflisting, lockfile, registry
from .errors import ManifestNotFoundError, UsageError, VerificationError
from .manifest import Manifest, load_manifest
from .remedy import fetch_command

LOCAL_MANIFEST_NAME = registry.LOCAL_MANIFEST_NAME
MANIFEST_FILE_SUFFIXES = registry.MANIFEST_SUFFIXES

# how -> the words describe() uses
HOW = {
    "hub-id": "Hub id",
    "hf-cache-snapshot": "Hugging Face cache snapshot",
    "local-manifest": f"{LOCAL_MANIFEST_NAME} in the model directory",
    "user-mapping": "user directory mapping",
    "identified": "identified by file names and sizes",
    "given": "manifest given by the caller",
    "manifest-file": "manifest file named by the caller",
    "search-path": "manifest search path",
    "directory": "model directory",
    "hf-listing": "what the Hugging Face cache recorded",
    "lock": "project lock entry",
    "unknown": "no manifest",
}


class Resolution(NamedTuple):
    """What a target resolved to (immutable).

    ``model_id`` (str or None), ``revision`` (str or None), ``directory`` (Path, or None: a
    Hub id not in the cache), ``manifest`` (Manifest or None), and ``how``: one of the keys
    of :data:`HOW` (``hub-id``, ``hf-cache-snapshot``, ``local-manifest``, ``user-mapping``,
    ``identified``, ``given``, ``manifest-file``, ``search-path``, ``directory``, ``hf-listing``,
    ``lock``, ``unknown``).
    """

    model_id: str | None
    revision: str | None
    directory: Path | None
    manifest: Manifest | None
    how: str

    @property
    def source(self) -> str:
        """Where the expectations come from, in words (``Hub id (manifests/BAAI/bge-m3.yaml)``)."""
        how = HOW.get(self.how, self.how)
        return how + (f" ({self.manifest.source})" if self.manifest is not None and self.manifest.source else "")

    def describe(self) -> str:
        if self.how in ("hf-listing", "lock") and self.manifest is not None:
            return f"expectations: {self.manifest.source}"
        return f"manifest: {self.source}"


# --------------------------------------------------------------------------- the project lock


def locked_entry(model: str | None, revision: str | None = None,
                 cache_dir: str | os.PathLike[str] | None = None) -> lockfile.LockEntry | None:
    """The lock entry for ``model``, or None (no lock, or the model is not in it). ``revision``
    (a commit, branch or tag being loaded) must name the locked commit, else
    :class:`VerificationError` names the entry and the fix."""
    if not model:
        return None
    path = lockfile.find_lock()
    if path is None:
        return None
    entry = lockfile.cached_lock(path).get(model)
    if entry is None or revision is None or registry.same_revision(revision, entry.revision):
        return entry
    commit = hfcache.resolve_ref(model, revision, cache_dir)
    if commit == entry.revision:
        return entry
    seen = f"revision {revision}" + (f" (commit {commit})" if commit and commit != revision else "")
    if commit is None:
        seen += " (a branch or tag the Hugging Face cache does not resolve, so its commit is unknown)"
    raise VerificationError(
        f"modelguard refused {model} at {seen}: the project lock pins {entry.revision}",
        path=path, expected=f"{model} at {entry.revision} ({lockfile.lock_source(path, entry)})", actual=seen,
        remedy=(f"load the locked revision (leave revision= out, or pass revision={quote(entry.revision)}); "
                f"or, to move the lock to this revision: modelguard lock add {quote(model + '@' + revision)}"
                f" --lock {quote(str(path))}"),
    )


# --------------------------------------------------------------------------- manifests the caller names


def looks_like_manifest_file(target: Any) -> bool:
    """A path object, a name ending in .yaml/.yml, or a path that exists: a manifest file, not a model id."""
    if isinstance(target, os.PathLike):
        return True
    text = os.fspath(target)
    return text.endswith(MANIFEST_FILE_SUFFIXES) or os.path.isfile(text)


def resolve_manifest(target: Manifest | str | os.PathLike[str], revision: str | None = None, *,
                     manifest_dirs: list[str] | None = None) -> Manifest:
    """The manifest a caller names: a :class:`Manifest`, a manifest file, or a model id with a
    known manifest (:class:`~modelguard.errors.ManifestNotFoundError` when none is known)."""
    if isinstance(target, Manifest):
        return target
    if looks_like_manifest_file(target):
        return load_manifest(target)
    entry = locked_entry(os.fspath(target))  # another revision than the locked one: the search path's
    if entry is not None and (revision is None or registry.same_revision(revision, entry.revision)):
        return entry.manifest
    return registry.require_manifest(os.fspath(target), revision, extra_dirs=manifest_dirs)


def resolve_verify_target(
    target: Manifest | str | os.PathLike[str],
    directory: str | os.PathLike[str] | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    how_to_pass: str = "pass the model directory",
    all_files: bool = False,
    cli: bool = False,
) -> Resolution:
    """What ``verify TARGET [DIR]`` checks: the named manifest (a Manifest, a manifest file, or
    a model id with a known manifest), and ``directory`` or, without one, the model's snapshot
    in the Hugging Face cache (a clear UsageError when it is not there). With no manifest, a
    cache snapshot or ``local_dir`` download (``target`` or ``directory``) is checked against
    what the cache recorded (:mod:`modelguard.hflisting`; ``all_files``: every listed file is
    required). ``cli``: the command line's wording for a folder with no source."""
    if isinstance(target, Manifest):
        manifest, how = target, "given"
    elif looks_like_manifest_file(target):
        manifest, how = load_manifest(target), "manifest-file"
    else:
        text = os.fspath(target)
        locked = _locked_verify_target(text, directory, revision, cache_dir, how_to_pass)
        if locked is not None:
            return locked
        if os.path.isdir(text) and (not cli or not _is_known_model(text, revision)):
            found = hflisting.cache_expectations(text, all_files=all_files)
            if found is None:
                raise _no_source(text, cli)
            return Resolution(found.model, found.revision, Path(directory if directory is not None else text), found,
                              "hf-listing")
        manifest = registry.find_manifest(text, revision)
        how = "search-path"
        if manifest is None:
            found = (hflisting.cache_expectations(directory, all_files=all_files, model=text)
                     if directory is not None else None)
            if found is not None:
                return Resolution(text, found.revision, Path(directory), found, "hf-listing")
            cached = hflisting.model_expectations(text, revision, cache_dir, all_files=all_files)
            if cached is not None and directory is None:
                return Resolution(text, cached[0].revision, cached[1], cached[0], "hf-listing")
            manifest = registry.require_manifest(text, revision)  # raises, saying how to get a source
    if directory is not None:
        return Resolution(manifest.model, manifest.revision or revision, Path(directory), manifest, how)
    snap = hfcache.require_snapshot(manifest.model, manifest.revision or revision, cache_dir,
                                    how_to_pass=how_to_pass)
    return Resolution(manifest.model, manifest.revision or revision, snap, manifest, how)


def _locked_verify_target(text: str, directory: Any, revision: str | None, cache_dir: Any,
                          how_to_pass: str) -> Resolution | None:
    """``verify`` of a locked model: a cache snapshot path of it, or its model id (its snapshot at
    the locked commit, or ``directory``)."""
    if os.path.isdir(text):
        parsed = hfcache.parse_snapshot_path(text)
        entry = locked_entry(parsed[0], parsed[1]) if parsed is not None else None
        if entry is None:
            return None
        root = Path(directory) if directory is not None else hfcache.snapshot_root(text)
        return Resolution(entry.model_id, entry.revision, root, entry.manifest, "lock")
    if not registry.looks_like_model_id(text):
        return None
    entry = locked_entry(text, revision, cache_dir)
    if entry is None:
        return None
    if directory is not None:
        return Resolution(text, entry.revision, Path(directory), entry.manifest, "lock")
    snap = hfcache.require_snapshot(text, entry.revision, cache_dir, how_to_pass=how_to_pass)
    return Resolution(text, entry.revision, snap, entry.manifest, "lock")


def _no_source(text: str, cli: bool) -> Exception:
    if cli:
        return UsageError(
            f"{text} is a directory with no source of expectations: no manifest names it, and it is not a "
            "Hugging Face cache snapshot or download folder with a saved listing",
            expected="modelguard verify TARGET [DIR], e.g. modelguard verify BAAI/bge-m3 " + quote(text),
            actual=text,
            remedy=f"name the manifest first: modelguard verify MANIFEST.yaml {quote(text)}, "
                   f"or write one: modelguard build {quote(text)} --model ORG/NAME -o MANIFEST.yaml; "
                   "or download the model with snapshot_download (or `hf download`) so the Hub's listing is saved",
        )
    return ManifestNotFoundError(
        f"{text} is a folder with no source of expectations: not a Hugging Face cache snapshot "
        "or download folder with a saved listing",
        path=text, expected="a manifest file, a model id, or a folder downloaded by huggingface_hub",
        remedy=hflisting.describe_missing_source("ORG/NAME") + f", then pass the manifest: verify(MANIFEST, {text!r})",
    )


def _is_known_model(target: str, revision: str | None) -> bool:
    try:
        return registry.find_manifest(target, revision) is not None
    except UsageError:  # not a model id at all
        return False


# --------------------------------------------------------------------------- a model directory or a cached id


def locate(
    target: str | os.PathLike[str], *, revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None, manifest: Any = None, find: bool = True,
) -> Resolution:
    """A local directory (a cache snapshot path names its model and revision), or a model id
    whose snapshot is in the Hugging Face cache; never downloads. ``manifest`` (a Manifest or
    a file) is the one that applies; otherwise, with ``find``, the one known for the model id."""
    path = Path(target)
    if path.is_dir():
        parsed = hfcache.parse_snapshot_path(path)
        model, commit, how = (parsed[0], parsed[1], "hf-cache-snapshot") if parsed else (None, None, "directory")
        directory = path
    elif path.exists():
        raise UsageError(f"{path} is not a directory", path=path, expected="a model directory or a model id",
                         remedy="pass the folder that holds config.json, not a file in it")
    else:
        text = str(target)
        if not registry.looks_like_model_id(text, namespaced=True):
            raise UsageError(f"model directory {text} does not exist", path=text,
                             expected="a model directory, or a model id such as BAAI/bge-m3",
                             remedy="check the path")
        directory = hfcache.snapshot_path(text, revision, cache_dir)
        if directory is None:
            raise UsageError(
                f"{text}{' @ ' + revision if revision else ''} is not in the Hugging Face cache "
                f"({hfcache.hf_cache_dir(cache_dir)}) and is not a local directory",
                expected="a model directory, or a model id whose snapshot is in the cache",
                remedy=f"download it first: {fetch_command(text, revision)}, or pass the model directory",
            )
        parsed = hfcache.parse_snapshot_path(directory)
        model, commit, how = text, parsed[1] if parsed else revision, "hub-id"
    chosen = None
    if manifest is not None:
        chosen = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        how = "given" if isinstance(manifest, Manifest) else "manifest-file"
    elif find and model is not None:
        entry = locked_entry(model, commit, cache_dir)
        chosen = entry.manifest if entry is not None else registry.find_manifest(model, commit)
        how = "lock" if entry is not None else how
    return Resolution(model, commit, directory, chosen, how)


# --------------------------------------------------------------------------- what the guard asks


def resolve(
    target: str | os.PathLike[str],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    manifest_dirs: tuple[str, ...] | list[str] = (),
    directory_map: Mapping[str, tuple[str, str | None]] | None = None,
    all_files: bool = False,
) -> Resolution:
    """Which manifest applies to the model a loader is given, and where its files are.

    Never raises for an unknown model (``how == "unknown"``, ``manifest`` None); a Hub id
    with a manifest or lock entry but not in the cache has ``directory`` None. A locked model
    at another revision raises :class:`VerificationError` (:func:`locked_entry`). ``directory_map``: folders
    the program declared (:func:`modelguard.guard.map_directory`), realpath -> (model, revision).
    """
    extra = list(manifest_dirs)
    text = os.fspath(target)
    path = Path(text).expanduser()
    if path.is_dir():
        parsed = hfcache.parse_snapshot_path(path)
        if parsed is not None:
            model, commit = parsed
            root = hfcache.snapshot_root(path)
            entry = locked_entry(model, commit, cache_dir)
            if entry is not None:
                return Resolution(model, commit, root, entry.manifest, "lock")
            manifest = registry.find_manifest(model, commit, extra_dirs=extra)
            if manifest is None:
                listed = hflisting.cache_expectations(root, all_files=all_files)
                if listed is not None:
                    return Resolution(model, commit, root, listed, "hf-listing")
            return Resolution(model, commit, root, manifest, "hf-cache-snapshot")
        local = path / LOCAL_MANIFEST_NAME
        if local.is_file():
            manifest = load_manifest(local)
            return Resolution(manifest.model, manifest.revision, path, manifest, "local-manifest")
        mapped = mapped_model(path, directory_map or {})
        if mapped is not None:
            model, rev = mapped
            entry = locked_entry(model, rev, cache_dir)
            if entry is not None:
                return Resolution(model, entry.revision, path, entry.manifest, "lock")
            manifest = registry.require_manifest(model, rev, extra_dirs=extra)  # raises with the search path
            return Resolution(model, rev or manifest.revision, path, manifest, "user-mapping")
        manifest = identify(path, extra)
        if manifest is not None:
            return Resolution(manifest.model, manifest.revision, path, manifest, "identified")
        listed = hflisting.cache_expectations(path, all_files=all_files)  # a local_dir download with its listing
        if listed is not None:
            return Resolution(None, listed.revision, path, listed, "hf-listing")
        return Resolution(None, None, path, None, "unknown")
    if path.exists() or not registry.looks_like_model_id(text):
        return Resolution(None, revision, path if path.exists() else None, None, "unknown")
    entry = locked_entry(text, revision, cache_dir)
    if entry is not None:  # loaders are given the locked commit
        return Resolution(text, entry.revision, hfcache.snapshot_path(text, entry.revision, cache_dir),
                          entry.manifest, "lock")
    # A branch or tag names whatever commit the cache's refs/ say it is now.
    commit = hfcache.resolve_ref(text, revision, cache_dir) if revision else None
    manifest = registry.find_manifest(text, commit or revision, extra_dirs=extra)
    if manifest is None:
        snap = hfcache.snapshot_path(text, revision, cache_dir)
        listed = hflisting.cache_expectations(snap, all_files=all_files, model=text) if snap is not None else None
        if listed is not None:
            return Resolution(text, listed.revision, snap, listed, "hf-listing")
        return Resolution(text, revision, snap, None, "unknown")
    # No revision asked: the manifest's pinned one (loaders are then given that revision).
    wanted = commit or revision or manifest.revision
    return Resolution(text, wanted, hfcache.snapshot_path(text, wanted, cache_dir), manifest, "hub-id")


def mapped_model(directory: Path, declared: Mapping[str, tuple[str, str | None]]) -> tuple[str, str | None] | None:
    """The (model, revision) the program (``declared``) or the user's mapping file says ``directory`` holds."""
    real = os.path.realpath(directory)
    if real in declared:
        return declared[real]
    path = registry.directory_map_file()
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(
            f"directory mapping {path} cannot be read: {exc}", path=path,
            expected="a YAML mapping of directory to model id, e.g. '/models/minilm: sentence-transformers/all-MiniLM-L6-v2'",
            remedy="fix or remove the file",
        ) from None
    if not isinstance(data, dict):
        raise UsageError(
            f"directory mapping {path} is not a mapping", path=path,
            expected="directory: ORG/NAME[@REVISION] lines", actual=type(data).__name__,
        )
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError(
                f"directory mapping {path}: entry {key!r}: {value!r} is not 'directory: ORG/NAME[@REVISION]'",
                path=path, expected="strings on both sides", actual=f"{key!r}: {value!r}",
            )
        if os.path.realpath(os.path.expanduser(key)) == real:
            model, _, rev = value.partition("@")
            return model.strip(), rev.strip() or None
    return None


# --------------------------------------------------------------------------- identification by file names and sizes

def identify(directory: Path, extra_dirs: list[str]) -> Manifest | None:
    """The known manifest whose files this directory holds (names present, sizes mostly equal)."""
    best: tuple[int, int, Manifest] | None = None
    for manifest in registry.iter_manifests(extra_dirs):
        required = [e for e in manifest.files if manifest.components[e.component].required]
        if not required:
            continue
        sizes_equal = 0
        complete = True
        for entry in required:
            try:
                st = os.stat(directory / entry.path)
            except OSError:
                complete = False
                break
            sizes_equal += st.st_size == entry.size
        # Every required name present, and at least half the sizes exact: a copy of
        # this model (possibly damaged), not merely a model with the same layout.
        if not complete or 2 * sizes_equal < len(required):
            continue
        score = (sizes_equal, len(required))
        if best is None or score > best[:2]:
            best = (*score, manifest)
    return None if best is None else best[2]
