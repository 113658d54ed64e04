"""Where fetched files go and how they are put there: a Hugging Face cache snapshot (blobs and
links) or a plain folder; a verified temporary file replaces the old one atomically, and the
old bytes are kept aside first, never deleted."""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import DownloadError
from ..fs import within
from ..manifest import FileEntry

QUARANTINE_DIR = ".modelguard-quarantine"


@dataclass(frozen=True)
class Target:
    """Where files go: a Hugging Face cache snapshot (blobs + symlinks) or a plain folder."""

    directory: Path
    cache_repo: Path | None  # models--ORG--NAME when the directory is a cache snapshot
    lock_path: Path
    tmp_dir: Path
    quarantine_root: Path

    @property
    def is_cache(self) -> bool:
        return self.cache_repo is not None


def cache_target(repo_folder: Path, commit: str) -> Target:
    return Target(
        directory=repo_folder / "snapshots" / commit,
        cache_repo=repo_folder,
        lock_path=repo_folder.parent / ".locks" / repo_folder.name / "modelguard-fetch.lock",
        tmp_dir=repo_folder / "blobs",
        quarantine_root=repo_folder / QUARANTINE_DIR,
    )


def local_target(directory: Path) -> Target:
    work = directory / ".cache" / "modelguard"
    return Target(
        directory=directory, cache_repo=None, lock_path=work / "fetch.lock",
        tmp_dir=work / "tmp", quarantine_root=work / "quarantine",
    )


def make_dirs(*dirs: Path) -> list[Path]:
    """Create ``dirs`` (and parents); return the folders this call created, deepest first."""
    created: list[Path] = []
    for d in dirs:
        missing = []
        p = d
        while not p.exists():
            missing.append(p)
            p = p.parent
        d.mkdir(parents=True, exist_ok=True)
        created.extend(missing)
    return sorted(set(created), key=lambda p: -len(p.parts))


def remove_if_empty(created: list[Path], *, lock_file: Path) -> None:
    """Undo :func:`make_dirs` where nothing else was put in the folders (and drop our lock file)."""
    if lock_file.parent in created:
        lock_file.unlink(missing_ok=True)
    for d in created:
        try:
            d.rmdir()
        except OSError:
            pass



def remove_empty_target(created: list[Path], target: Target) -> None:
    """After a failed fetch in which nothing landed, remove the (empty) folders this call made for
    the files, or the next load would take an empty snapshot for one with every file missing and
    hide this failure's cause. The lock file stays: another process may be waiting on it."""
    remove_if_empty([d for d in created if not target.lock_path.is_relative_to(d)], lock_file=target.lock_path)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[-80:]


def keep_aside(target: Target, entry: FileEntry, source: Path) -> str:
    """Hard-link (or copy) the bytes at ``source`` into the quarantine folder; returns where."""
    import shutil

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    dest = target.quarantine_root / stamp / entry.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
    return str(dest)


def install_file(target: Target, entry: FileEntry, verified: Path, blob_name: str) -> str | None:
    """Put the verified temporary file in place atomically; old bytes are kept aside first."""
    dest = target.directory / entry.path
    refuse_escaping_folder(target, dest)  # before mkdir: it would follow the link too
    dest.parent.mkdir(parents=True, exist_ok=True)
    refuse_escaping_folder(target, dest)
    kept: str | None = None
    if dest.is_dir() and not dest.is_symlink():
        raise DownloadError(
            f"{dest} is a directory where the file {entry.path} belongs; not replaced", path=dest,
            remedy=f"move {dest} away, then fetch again",
        )
    if target.is_cache:
        assert target.cache_repo is not None
        blobs = target.cache_repo / "blobs"
        blob = blobs / blob_name
        if dest.is_symlink():
            # Re-pointing a link changes no bytes; only the blob about to be overwritten is kept aside.
            if dest.resolve() == blob.resolve() and blob.exists():
                kept = keep_aside(target, entry, blob)
        elif os.path.lexists(dest):
            kept = keep_aside(target, entry, dest)
        elif blob.exists():
            kept = keep_aside(target, entry, blob)
        chmod_like_umask(verified)
        os.replace(verified, blob)
        link_tmp = dest.with_name(f".{dest.name}.modelguard-{uuid.uuid4().hex[:8]}")
        try:
            os.symlink(os.path.relpath(blob, dest.parent), link_tmp)
        except OSError:
            os.link(blob, link_tmp)
        os.replace(link_tmp, dest)
        return kept
    if os.path.lexists(dest):
        kept = keep_aside(target, entry, dest)
    chmod_like_umask(verified)
    os.replace(verified, dest)
    return kept


def remove_stale_temp_files(target: Target) -> None:
    """Remove the temporary downloads of a fetch that was killed. Called holding the fetch
    lock, so no other fetch of this model is writing one; only modelguard's own temporary
    files are touched (the Hugging Face client's ``*.incomplete`` files are left alone)."""
    try:
        names = os.listdir(target.tmp_dir)
    except OSError:
        return
    for name in names:
        if ".modelguard-" in name and name.endswith(".incomplete"):
            try:
                os.unlink(target.tmp_dir / name)
            except OSError:
                pass


def refuse_escaping_folder(target: Target, dest: Path) -> None:
    """A folder on the way to ``dest`` that is a link out of the model directory is never written through."""
    root = Path(target.directory).resolve()
    parent = dest.parent.resolve()
    if not within(parent, [root]):
        raise DownloadError(
            f"{dest} is reached through a link out of {target.directory} (to {parent}); nothing was written",
            path=dest, expected=f"a folder inside {target.directory}", actual=str(parent),
            remedy="replace the linked folder with a real one (modelguard writes only inside the model "
                   "directory), then fetch again",
        )


def chmod_like_umask(path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
