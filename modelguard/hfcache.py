"""The Hugging Face cache layout: where a model's snapshot lives, and what a snapshot path names.

Pure path logic; huggingface_hub is not imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UsageError
from .remedy import fetch_command

_COMMIT = re.compile(r"\A[0-9a-f]{40}\Z")


def hf_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The hub cache folder, resolved the way huggingface_hub resolves it."""
    if cache_dir:
        return Path(cache_dir)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "huggingface" / "hub"


def repo_folder_name(model: str, repo_type: str = "model") -> str:
    return f"{repo_type}s--" + model.replace("/", "--")


def repo_folder(model: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return hf_cache_dir(cache_dir) / repo_folder_name(model)


def resolve_ref(model: str, revision: str | None, cache_dir: str | os.PathLike[str] | None = None) -> str | None:
    """The commit a branch/tag points to in the cache (``refs/<name>``), or ``revision`` if it is a commit."""
    revision = revision or "main"
    if _COMMIT.match(revision):
        return revision
    ref = repo_folder(model, cache_dir) / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def snapshot_path(
    model: str, revision: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path | None:
    """The snapshot folder of ``model`` at ``revision`` (default: main) if it is in the cache.

    An empty snapshot folder (left by a download that died before its first file) counts as absent.
    """
    commit = resolve_ref(model, revision, cache_dir)
    if commit is None:
        return None
    path = repo_folder(model, cache_dir) / "snapshots" / commit
    try:
        with os.scandir(path) as entries:
            return path if next(entries, None) is not None else None
    except OSError:  # not there, or not a folder
        return None


def parse_snapshot_path(path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """``(model_id, commit)`` for a path inside ``.../models--ORG--NAME/snapshots/<commit>``, else None."""
    root = snapshot_root(path)
    if root is None:
        return None
    return root.parent.parent.name[len("models--"):].replace("--", "/", 1), root.name


def snapshot_root(path: str | os.PathLike[str]) -> Path | None:
    """The snapshot folder that contains ``path``, if ``path`` is inside one."""
    p = Path(os.path.abspath(path))
    for candidate in (p, *p.parents):
        if candidate.parent.name == "snapshots" and candidate.parent.parent.name.startswith("models--"):
            return candidate
    return None


def require_snapshot(
    model: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    how_to_pass: str = "pass the model directory",
) -> Path:
    """The snapshot of ``model`` at ``revision`` in the cache; a clear UsageError when it is not there."""
    snap = snapshot_path(model, revision, cache_dir)
    if snap is None:
        raise UsageError(
            f"{model}{' @ ' + revision[:12] if revision else ''} is not in the "
            f"Hugging Face cache ({hf_cache_dir(cache_dir)})",
            expected="a model directory, or the model's snapshot in the cache",
            remedy=f"{how_to_pass}, or download it: {fetch_command(model, revision)}",
        )
    return snap
