"""Filesystem safety shared by every module that opens a model's files: which folders a
file may resolve into, whether a path lies inside them, what an open descriptor really
is, and how to name a file type that is not a regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable


def containing_roots(directory: Path) -> list[Path]:
    """Directories a file may resolve into: the model dir, and for a HF cache
    snapshot, that repo's own blobs folder."""
    roots = [directory.resolve()]
    if directory.parent.name == "snapshots":
        roots.append((directory.parent.parent / "blobs").resolve())
    return roots


def within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether ``path`` is one of ``roots`` or lies below one (string comparison, no syscalls)."""
    # On strings: ``root in path.parents`` builds a Path per level, and this runs twice per file.
    text = os.fspath(path)
    for root in roots:
        prefix = os.fspath(root)
        if text == prefix or text.startswith(prefix.rstrip(os.sep) + os.sep):
            return True
    return False


def opened_path(fd: int) -> Path | None:
    """The real path of the open file ``fd`` (Linux /proc), or None where it cannot be told."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return Path(target) if target.startswith("/") and not target.endswith(" (deleted)") else None


def file_type_name(mode: int) -> str:
    """``directory``, ``FIFO (named pipe)``, ``device file``, ``socket`` or ``special file``."""
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def access_detail(path: Path) -> str:
    """`` (mode -rw-------, owner uid 1000; this process runs as uid 1001)``, or '' if unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f" (mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}; this process runs as uid {os.geteuid()})"


def human_size(n: int) -> str:
    """``3516 B``, ``2.27 GB``: decimal units, two decimals."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{n} B"


# Directories and files that belong to tools, not to the model.
IGNORED_NAMES = frozenset({".git", ".cache", "__pycache__", ".DS_Store", ".huggingface", ".locks"})
# Lock files and partial downloads left by download tools.
IGNORED_SUFFIXES = (".lock", ".incomplete")


def walk_files(directory: str | os.PathLike[str], *, regular_only: bool = False) -> list[str]:
    """Relative POSIX paths of the files under ``directory``, sorted; tool folders, lock files
    and partial downloads skipped, linked folders not followed. ``regular_only`` also skips
    what is not (a link to) a regular file: dangling links, FIFOs, devices."""
    root = Path(directory)
    out = []
    for current, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES)
        rel_dir = os.path.relpath(current, root)
        for name in files:
            if name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES):
                continue
            if regular_only and not (Path(current) / name).is_file():
                continue
            out.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    return sorted(out)
