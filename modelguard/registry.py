"""Where manifests are found: user directories, $MODELGUARD_MANIFEST_PATH, shipped ones."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from shlex import quote
from typing import Callable, Iterator

from .errors import ManifestError, ManifestNotFoundError, UsageError
from .manifest import Manifest, load_manifest

ENV_PATH = "MODELGUARD_MANIFEST_PATH"
MANIFEST_SUFFIXES = (".yaml", ".yml")
# A model directory's own manifest, and the user's file naming the model of local directories.
LOCAL_MANIFEST_NAME = "modelguard.yaml"
DIRECTORY_MAP_NAME = "directories.yaml"


def shipped_manifest_dir() -> Path:
    """The manifests that ship with modelguard (inside the wheel, or the source tree)."""
    packaged = Path(__file__).resolve().parent / "_manifests"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "manifests"


def user_manifest_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "modelguard" / "manifests"


def directory_map_file() -> Path:
    """``$XDG_CONFIG_HOME/modelguard/directories.yaml``: ``/abs/dir: ORG/NAME[@REVISION]`` lines."""
    return user_manifest_dir().parent / DIRECTORY_MAP_NAME


def search_path(extra: list[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Directories searched, first match wins: ``extra``, $MODELGUARD_MANIFEST_PATH, user dir, shipped."""
    dirs: list[Path] = [Path(p) for p in extra or ()]
    env = os.environ.get(ENV_PATH)
    if env:
        dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    dirs.append(user_manifest_dir())
    dirs.append(shipped_manifest_dir())
    return dirs


def validate_model_id(model: str) -> str:
    parts = model.split("/")
    if not model or len(parts) > 2 or any(p in ("", ".", "..") for p in parts) or "\\" in model or "\x00" in model:
        raise UsageError(
            f"'{model}' is not a model id", expected="ORG/NAME, e.g. BAAI/bge-m3", actual=model,
        )
    return model


def looks_like_model_id(text: str, *, namespaced: bool = False) -> bool:
    """Whether ``text`` can name a Hub model (``gpt2``, ``BAAI/bge-m3``) rather than a path;
    ``namespaced``: only ``ORG/NAME`` counts. The one answer to "is this a model id?"."""
    if text.startswith((".", "~", "/")) or (namespaced and text.count("/") != 1):
        return False
    try:
        validate_model_id(text)
    except UsageError:
        return False
    return True


def candidate_files(model: str, revision: str | None, dirs: list[Path]) -> list[Path]:
    validate_model_id(model)
    out = []
    for d in dirs:
        for suffix in MANIFEST_SUFFIXES:
            if revision:
                out.append(d / f"{model}@{revision}{suffix}")
            out.append(d / f"{model}{suffix}")
    return out


def find_manifest(
    model: str, revision: str | None = None, *, extra_dirs: list[str | os.PathLike[str]] | None = None,
    load: Callable[[Path], Manifest | None] | None = None,
) -> Manifest | None:
    """The manifest for ``model`` (at ``revision`` if given), or None when none is known.

    A manifest pinned to another revision than the one asked for does not apply. ``load``
    reads a candidate file (None: it is not there); by default :func:`load_manifest` of each
    file that exists.
    """
    for path in candidate_files(model, revision, search_path(extra_dirs)):
        manifest = (load_manifest(path) if path.is_file() else None) if load is None else load(path)
        if manifest is None or manifest.model != model:
            continue
        if revision and manifest.revision and not same_revision(manifest.revision, revision):
            continue
        return manifest
    return None


def require_manifest(
    model: str, revision: str | None = None, *, extra_dirs: list[str | os.PathLike[str]] | None = None
) -> Manifest:
    manifest = find_manifest(model, revision, extra_dirs=extra_dirs)
    if manifest is None:
        known = ", ".join(known_models()) or "none"
        raise ManifestNotFoundError(
            f"no manifest known for {model}" + (f" at revision {revision}" if revision else ""),
            expected=f"a manifest file {model}.yaml in one of: " + ", ".join(str(d) for d in search_path(extra_dirs)),
            actual=f"known models: {known}",
            remedy=f"write one with `modelguard build DIR --model {quote(model)} -o {quote(f'manifests/{model}.yaml')}` "
                   f"and add its folder to ${ENV_PATH}, or pass the manifest file itself; or download the model "
                   "with huggingface_hub's snapshot_download (or `hf download`): its snapshot is then checked "
                   "against the Hub's listing saved with it",
        )
    return manifest


def same_revision(a: str, b: str) -> bool:
    """Whether two revisions name the same commit (a short hash matches its full form)."""
    a, b = a.lower(), b.lower()
    if len(a) >= 7 and len(b) >= 7 and all(c in "0123456789abcdef" for c in a + b):
        return a.startswith(b) or b.startswith(a)
    return a == b


def known_models(extra_dirs: list[str | os.PathLike[str]] | None = None) -> list[str]:
    """Model ids that have a manifest on the search path."""
    models = set()
    for d in search_path(extra_dirs):
        if not d.is_dir():
            continue
        for path in d.rglob("*"):
            if path.suffix in MANIFEST_SUFFIXES and path.is_file():
                rel = path.relative_to(d).with_suffix("").as_posix()
                models.add(rel.split("@", 1)[0])
    return sorted(models)


# path -> ((inode, size, mtime_ns), the manifest or None when unreadable): each file parsed once per version.
_parsed: dict[str, tuple[tuple[int, int, int], Manifest | None]] = {}
_parsed_lock = threading.Lock()


def iter_manifests(extra_dirs: list[str | os.PathLike[str]] | None = None) -> Iterator[Manifest]:
    """Every readable manifest on the search path (first of each model and revision; unreadable
    ones skipped), each file parsed once per version of it."""
    seen: set[tuple[str, str | None]] = set()
    for folder in search_path(extra_dirs):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix not in MANIFEST_SUFFIXES:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            with _parsed_lock:
                cached = _parsed.get(str(path))
            if cached is not None and cached[0] == stamp:
                manifest = cached[1]
            else:
                try:
                    manifest = load_manifest(path) if path.is_file() else None
                except ManifestError:
                    manifest = None
                with _parsed_lock:
                    _parsed[str(path)] = (stamp, manifest)
            if manifest is not None and (manifest.model, manifest.revision) not in seen:
                seen.add((manifest.model, manifest.revision))
                yield manifest
