"""Expectations for a model in the Hugging Face cache that no manifest describes.

Two sources, strongest first (see DESIGN.md, "where expectations come from"):

1. the Hub's listing of the commit that ``snapshot_download`` saves at
   ``<repo folder>/trees/<commit>.json`` (``<local_dir>/.cache/huggingface/trees/<commit>.json``
   for a ``local_dir`` download): every file of the commit with its size, its git blob id,
   and for LFS files its sha256;
2. for a cache snapshot with no (readable) listing: the names of the blobs its links point
   to, which are content addresses (64 hex digits: sha256 of an LFS file; 40: git blob
   sha1 of a small file). Files absent from the snapshot cannot be known then.

Both come from the same cache as the files: they catch corruption, truncation and partial
downloads, not a deliberate substitution by someone who can write the cache.

The result is a :class:`~modelguard.manifest.Manifest` whose files fall into components:
``files`` (required: what loaders read), ``alternative-weights`` (optional: ``pytorch_model*.bin``
next to safetensors weights, which loaders prefer) and ``other`` (optional: docs and formats the
Python loaders never read). With ``all_files`` every listed file is required (one component).
Pure file reading; huggingface_hub is not imported.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from pathlib import Path
from shlex import quote

from .errors import UnsafePathError
from .hfcache import hf_cache_dir, parse_snapshot_path, snapshot_path, snapshot_root
from .manifest import Component, FileEntry, Manifest, check_relative_path

LISTING = "hub-listing"
BLOBS = "blob-addresses"
FETCHED = "hub-api"  # the Hub's listing fetched at check time (no saved one), kept in memory
ORIGINS = (LISTING, BLOBS, FETCHED)

LOADER_COMPONENT = "files"
ALTERNATIVE_COMPONENT = "alternative-weights"
OTHER_COMPONENT = "other"
# Docs and formats the Python loaders (transformers, sentence-transformers, FlagEmbedding) never read.
OTHER_PATTERNS = (
    "README*", "*.md", "LICENSE*", ".gitattributes", "onnx/*", "openvino/*", "coreml/*", "*.h5", "*.msgpack",
    "*.ot", "*.tflite", "flax_model*", "tf_model*", "rust_model*",
)
ALTERNATIVE_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
ENV_ALL_FILES = "MODELGUARD_ALL_FILES"

MAX_LISTING_BYTES = 64 * 1024 * 1024
FORMAT_VERSION = 1
_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
_SHA1 = re.compile(r"\A[0-9a-f]{40}\Z")


class ListingError(ValueError):
    """A saved listing that cannot be used (the reason is the message)."""


def all_files_requested() -> bool:
    """``$MODELGUARD_ALL_FILES`` asks the guard to check every listed file, not only what loaders read."""
    return os.environ.get(ENV_ALL_FILES, "").strip().lower() in ("1", "true", "yes", "on")


def listing_path(directory: str | os.PathLike[str]) -> Path | None:
    """Where the saved listing of ``directory`` (a cache snapshot or a ``local_dir``) is, if it exists."""
    path = Path(directory)
    snap = snapshot_root(path)
    if snap is not None:
        candidate = snap.parent.parent / "trees" / f"{snap.name}.json"
        return candidate if candidate.is_file() else None
    trees = path / ".cache" / "huggingface" / "trees"
    if not trees.is_dir():
        return None
    found = sorted(p for p in trees.glob("*.json") if _SHA1.match(p.stem))
    commits = _local_dir_commits(path)
    if len(commits) == 1:
        wanted = trees / f"{commits.pop()}.json"
        return wanted if wanted.is_file() else None
    return found[0] if len(found) == 1 else None


def _local_dir_commits(directory: Path) -> set[str]:
    """The commits recorded for the files of a ``local_dir`` download (first line of each .metadata)."""
    commits: set[str] = set()
    meta = directory / ".cache" / "huggingface" / "download"
    if not meta.is_dir():
        return commits
    for path in meta.rglob("*.metadata"):
        try:
            with open(path, encoding="utf-8") as fh:
                first = fh.readline().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if _SHA1.match(first):
            commits.add(first)
    return commits


def parse_listing(path: str | os.PathLike[str]) -> dict[str, dict[str, object]]:
    """Read a saved listing strictly: ``{path: {"size": int, "sha256"|"git_sha1": hex}}``.

    Raises :class:`ListingError` for anything but format_version 1 with well-formed entries.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_LISTING_BYTES + 1)
    except OSError as exc:
        raise ListingError(f"cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_LISTING_BYTES:
        raise ListingError(f"larger than {MAX_LISTING_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ListingError(f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ListingError("not a JSON object")
    version = data.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ListingError(f"format_version {version!r} is not {FORMAT_VERSION}")
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise ListingError("'files' is missing, empty or not an object")
    out: dict[str, dict[str, object]] = {}
    for name, info in files.items():
        try:
            rel = check_relative_path(name, where="files", source=str(p))
        except UnsafePathError:
            raise ListingError(f"unsafe path {name!r}") from None
        if not isinstance(info, dict):
            raise ListingError(f"entry {name!r} is not an object")
        size = info.get("size")
        if type(size) is not int or size < 0:
            raise ListingError(f"entry {name!r}: size {size!r} is not a non-negative integer")
        sha256 = info.get("lfs_sha256")
        if sha256 is not None:
            lfs_size = info.get("lfs_size")
            if not isinstance(sha256, str) or not _SHA256.match(sha256):
                raise ListingError(f"entry {name!r}: lfs_sha256 {sha256!r} is not 64 hex digits")
            if lfs_size is not None and lfs_size != size:
                raise ListingError(f"entry {name!r}: lfs_size {lfs_size!r} differs from size {size}")
            out[rel] = {"size": size, "sha256": sha256}
            continue
        blob_id = info.get("blob_id")
        if not isinstance(blob_id, str) or not _SHA1.match(blob_id):
            raise ListingError(f"entry {name!r}: blob_id {blob_id!r} is not 40 hex digits")
        out[rel] = {"size": size, "git_sha1": blob_id}
    return out


def classify(paths: list[str]) -> dict[str, str]:
    """The component of each path: loader files, alternative weights, or docs/other formats."""
    out: dict[str, str] = {}
    has_safetensors = {p.rpartition("/")[0] for p in paths if p.endswith(".safetensors")}
    for path in paths:
        folder, _, name = path.rpartition("/")
        if any(fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(name, pat) for pat in OTHER_PATTERNS):
            out[path] = OTHER_COMPONENT
        elif folder in has_safetensors and any(fnmatch.fnmatchcase(name, pat) for pat in ALTERNATIVE_PATTERNS):
            out[path] = ALTERNATIVE_COMPONENT
        else:
            out[path] = LOADER_COMPONENT
    return out


def _components(used: set[str], all_files: bool) -> dict[str, Component]:
    spec = {
        LOADER_COMPONENT: Component(LOADER_COMPONENT, True, "the files loaders read"),
        ALTERNATIVE_COMPONENT: Component(ALTERNATIVE_COMPONENT, False,
                                         "pytorch_model*.bin next to safetensors weights (loaders prefer safetensors)"),
        OTHER_COMPONENT: Component(OTHER_COMPONENT, False, "docs and formats the Python loaders do not read"),
    }
    if all_files:
        return {LOADER_COMPONENT: Component(LOADER_COMPONENT, True, "every file of the commit")}
    return {name: comp for name, comp in spec.items() if name in used or name == LOADER_COMPONENT}


def _entries(digests: dict[str, dict[str, object]], all_files: bool) -> tuple[tuple[FileEntry, ...], dict[str, Component]]:
    kinds = {p: LOADER_COMPONENT for p in digests} if all_files else classify(sorted(digests))
    files = tuple(
        FileEntry(path=p, size=info.get("size"),  # type: ignore[arg-type]
                  component=kinds[p], digests={k: v for k, v in info.items() if k != "size"})  # type: ignore[misc]
        for p, info in sorted(digests.items())
    )
    return files, _components(set(kinds.values()), all_files)


def _blob_addresses(snapshot: Path) -> dict[str, dict[str, object]]:
    """``{path: {digest: hex}}`` for every link in ``snapshot`` whose target is named by a content address."""
    out: dict[str, dict[str, object]] = {}
    for root, dirs, names in os.walk(snapshot):
        dirs.sort()
        for name in names:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                continue  # a plain file carries no address; listed as not checked
            target = os.path.basename(os.readlink(full))
            rel = os.path.relpath(full, snapshot).replace(os.sep, "/")
            if _SHA256.match(target):
                out[rel] = {"size": None, "sha256": target}
            elif _SHA1.match(target):
                out[rel] = {"size": None, "git_sha1": target}
    return out


def cache_expectations(
    directory: str | os.PathLike[str], *, all_files: bool = False, model: str | None = None
) -> Manifest | None:
    """Expectations for ``directory`` (a cache snapshot, or a ``local_dir`` download) from the cache itself.

    The saved listing when there is a usable one; else, for a cache snapshot, its blobs'
    content addresses (``lists_every_file`` False); None when neither exists.
    """
    path = Path(directory)
    snap = snapshot_root(path)
    root = snap if snap is not None else path
    parsed = parse_snapshot_path(root) if snap is not None else None
    name = model or (parsed[0] if parsed else root.name)
    listing = listing_path(root)
    note = ""
    if listing is not None:
        try:
            digests = parse_listing(listing)
        except ListingError as exc:
            note = f"; the saved listing {listing} was not used: {exc}"
        else:
            commit = listing.stem
            return listing_manifest(digests, model=name, commit=commit, all_files=all_files, origin=LISTING,
                                    source=f"the Hub's listing of commit {commit} saved at download ({listing})")
    if snap is None:
        return None
    digests = _blob_addresses(snap)
    if not digests:
        return None
    files, components = _entries(digests, all_files)
    expected_at = snap.parent.parent / "trees" / f"{snap.name}.json"
    return Manifest(
        model=name, revision=parsed[1] if parsed else None, components=components, files=files,
        source=("the content addresses of the cache's blobs; completeness not checked "
                f"(no saved listing at {expected_at}, so files missing from the snapshot cannot be known){note}"),
        origin=BLOBS,
    )


def listing_manifest(
    digests: dict[str, dict[str, object]], *, model: str, commit: str, source: str, origin: str = LISTING,
    all_files: bool = False,
) -> Manifest:
    """Expectations from a listing of ``commit`` (``{path: {"size": int, "sha256"|"git_sha1": hex}}``,
    as :func:`parse_listing` reads a saved one), in the loader/alternative/other components."""
    files, components = _entries(digests, all_files)
    return Manifest(model=model, revision=commit, components=components, files=files, source=source, origin=origin)


def model_expectations(
    model: str, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
    *, all_files: bool = False,
) -> tuple[Manifest, Path] | None:
    """The cache's expectations for ``model`` at ``revision`` (default main) and its snapshot, or None."""
    snap = snapshot_path(model, revision, cache_dir)
    if snap is None:
        return None
    manifest = cache_expectations(snap, all_files=all_files, model=model)
    return None if manifest is None else (manifest, snap)


def checked_components(manifest: Manifest, all_files: bool) -> list[str] | None:
    """What the guard checks of cache-derived expectations: the loader files (and alternative
    weights where present), or everything with ``all_files``."""
    if all_files:
        return None
    return [c for c in (LOADER_COMPONENT, ALTERNATIVE_COMPONENT) if c in manifest.components]


def remedy(manifest: Manifest, directory: Path) -> str:
    """The command that downloads a cache-described model's files again."""
    rev = f" --revision {quote(manifest.revision)}" if manifest.revision else ""
    snap = snapshot_root(directory)
    if snap is not None:
        cache = snap.parent.parent.parent
        where = "" if os.path.abspath(cache) == os.path.abspath(hf_cache_dir()) else f" --cache-dir {quote(str(cache))}"
        return f"download it again: hf download {quote(manifest.model)}{rev}{where} --force-download"
    return f"download it again: hf download ORG/NAME{rev} --local-dir {quote(str(directory))} --force-download"


def describe_missing_source(target: str) -> str:
    """How to get a source of expectations for a model that has none."""
    return (f"write a manifest (`modelguard build DIR --model {quote(target)}`), or download the model with "
            "huggingface_hub's snapshot_download (or `hf download`) so the Hub's listing is saved with it")
