"""Folders only this user can change: made 0700 whatever the umask, opened one by one
without following links, each checked (owned by this user, not group/other-writable).
The digest cache (statcache) trusts only entries kept in such folders."""

from __future__ import annotations

import os
import stat
from pathlib import Path

_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def owned_by_us(st: os.stat_result) -> bool:
    getuid = getattr(os, "getuid", None)
    return getuid is None or st.st_uid == getuid()


def private_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode) and owned_by_us(st) and not st.st_mode & 0o022


def make_dirs_0700(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask (``makedirs``
    would make the parents 0777 minus the umask: writable by all under umask 000)."""
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            continue
        chmod_0700(os.fspath(folder), None)


def chmod_0700(name: str, dir_fd: int | None) -> None:
    """Set a folder just made to 0700 (the umask may have taken bits away, or none),
    through a descriptor opened without following a link."""
    fd = os.open(name, _O_DIR | O_NOFOLLOW, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def open_private_chain(root: Path, below: tuple[str, ...], create: bool) -> int | None:
    """Open ``root`` then each folder of ``below`` inside it, relative to the one before
    and without following links; each must be a folder of this user's that group and
    others cannot write. Returns the descriptor of the last one, or None."""
    if create:
        try:
            make_dirs_0700(root)
        except OSError:
            return None
    try:
        fd = os.open(root, _O_DIR)
    except OSError:
        return None
    try:
        if not private_dir(os.fstat(fd)):
            os.close(fd)
            return None
        for name in below:
            if create:
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    chmod_0700(name, fd)
                except OSError:
                    pass  # already there, or not writable: the open and checks below decide
            child = os.open(name, _O_DIR | O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
            if not private_dir(os.fstat(fd)):
                os.close(fd)
                return None
        return fd
    except OSError:
        try:
            os.close(fd)
        except OSError:
            pass
        return None


def replace_private_file(dir_fd: int, name: str, data: bytes) -> None:
    """Write ``data`` as ``name`` in the folder ``dir_fd``, readable by this user only
    whatever the umask: into a new temporary file, then renamed over ``name`` (a reader
    sees the whole old file or the whole new one)."""
    import secrets

    tmp = f".tmp-{secrets.token_hex(8)}{os.path.splitext(name)[1]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                 0o600, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
