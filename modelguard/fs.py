"""Filesystem safety shared by every module that opens a model's files: which folders a
file may resolve into, whether a path lies inside them, a Hugging Face cache snapshot's link
followed to its blob without resolving its path part by part, what an open descriptor really
is, the files of a folder, and how to name a file type that is not a regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable


def containing_roots(directory: Path) -> list[Path]:
    """Directories a file may resolve into: the model dir, and for a HF cache
    snapshot, that repo's own blobs folder."""
    # the resolved folder tells whether it is a snapshot: a relative path ("." inside it) or
    # a link to it names no "snapshots" parent itself
    real = directory.resolve()
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append((real.parent.parent / "blobs").resolve())
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


_UNSEEN = object()


def linked_file(link: str, roots: Iterable[Path], folders: dict) -> tuple[str, os.stat_result] | None:
    """``(real path, lstat)`` of the regular file the symlink ``link`` resolves to, when it
    resolves inside ``roots`` through no other link: the layout of a Hugging Face cache
    snapshot, whose files link to ``../../blobs/<hash>``. ``link``'s folder must be a real
    folder (no link on its path); ``folders`` keeps, for one verify, the real folder each
    (folder, target's folder) pair names, so a file costs a ``readlink`` and an ``lstat``, where
    resolving its path costs an ``lstat`` per part. None for anything else (not a link, a
    folder on the way that is a link, a link to a link, outside ``roots``): the caller then
    resolves the path the general way, which says what it is."""
    try:
        target = os.readlink(link)
    except OSError:  # not a link, or gone
        return None
    head, slash, name = target.rpartition("/")
    if name in ("", ".", ".."):
        return None
    key = ("" if target.startswith("/") else link.rpartition(os.sep)[0], head if slash else "")
    folder = folders.get(key, _UNSEEN)
    if folder is _UNSEEN:
        folder = folders[key] = _real_folder(*key, roots)
    if folder is None:
        return None
    real = folder.rstrip(os.sep) + os.sep + name
    try:
        st = os.lstat(real)
    except OSError:
        return None
    return (real, st) if stat.S_ISREG(st.st_mode) else None


def _real_folder(start: str, head: str, roots: Iterable[Path]) -> str | None:
    """The folder ``head`` names from the real folder ``start`` ("": from ``/``), when each
    folder entered on the way is a real folder, not a link (the parent of a real folder is
    its real parent), and it lies within ``roots``; else None."""
    current = start
    for part in head.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            current = current.rpartition(os.sep)[0]
            continue
        current = current + os.sep + part
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return None
        except OSError:
            return None
    folder = current or os.sep
    return folder if within(folder, roots) else None


# Linux file system types (statfs f_type) that change a folder's mtime and ctime whenever an
# entry is created, removed or renamed in it, by whoever does it: local disks and memory (ext2-4,
# xfs, btrfs, tmpfs, ramfs, overlay, zfs, f2fs, bcachefs). Not network or FUSE file systems: an
# object store mounted through FUSE may keep a folder's times, and NFS caches them.
FOLDER_TIMES_KEPT = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x858458F6, 0x794C7630, 0x2FC12FC1,
                               0xF2F52010, 0xCA451A4E})


def file_system_type(path: str | os.PathLike[str]) -> int | None:
    """The type of the file system ``path`` is on, as Linux ``statfs`` gives it (``f_type``,
    the first field of ``struct statfs``); None on other systems or when it cannot be told."""
    import sys

    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    buf = ctypes.create_string_buffer(512)  # struct statfs: 120 bytes on 64-bit Linux
    try:
        if ctypes.CDLL(None, use_errno=True).statfs(os.fsencode(path), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


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


def walk_files(directory: str | os.PathLike[str], *, regular_only: bool = False,
               known: frozenset[str] | set[str] = frozenset(), top: Iterable[os.DirEntry] | None = None,
               top_stat: os.stat_result | None = None, folders: list | None = None,
               links: list | None = None) -> list[str]:
    """Relative POSIX paths of the files under ``directory``, sorted; tool folders, lock files
    and partial downloads skipped, linked folders not followed. ``regular_only`` also skips
    what is not (a link to) a regular file: dangling links, FIFOs, devices. Paths in ``known``
    are left out (a folder among them is still entered), before any other work on them.
    ``top``: the entries of ``directory`` itself, when the caller listed it already (and
    ``top_stat``, its stat taken before). ``folders``: a list to append, per folder listed,
    ``(its relative path with a trailing slash, '' for directory, its stat taken before it was
    listed)``; the stat is None for a folder that could not be listed. ``links``: a list to
    append, per link met that is not skipped by its name, ``(its relative path, whether it
    leads to a folder)``: what the search makes of it depends on its target, not its folder."""
    # os.walk(followlinks=False) by hand, one scandir per folder: a warm verify lists the folder
    # each time, and os.walk's per-entry generator steps cost more than the listing.
    out: list[str] = []
    pending = [(os.fspath(directory), "")]
    while pending:
        current, prefix = pending.pop()
        st = None
        try:
            if top is not None and not prefix:
                st = top_stat
                entries = list(top)
            else:
                if folders is not None:  # directory itself may be reached through a link
                    st = os.lstat(current) if prefix else os.stat(current)
                with os.scandir(current) as listing:
                    entries = list(listing)
            # a listed name is entered only when it is a real folder (a link is never entered):
            # no stat of a link's target per listed file
            found = [e for e in entries if prefix + e.name not in known or e.is_dir(follow_symlinks=False)] \
                if known else entries
        except OSError:
            st = None
            continue
        finally:
            if folders is not None:
                folders.append((prefix, st))
        for entry in found:
            name = entry.name
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if links is not None and name not in IGNORED_NAMES and not name.endswith(IGNORED_SUFFIXES):
                try:
                    linked = entry.is_symlink()
                except OSError:
                    linked = True  # its type checked again, as a link's
                if linked:
                    links.append((prefix + name, is_dir))
            if is_dir:  # a linked folder is not entered
                if name not in IGNORED_NAMES and not entry.is_symlink():
                    pending.append((current + os.sep + name, f"{prefix}{name}/"))
                continue
            if name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES):
                continue
            if regular_only:
                try:
                    if not entry.is_file():
                        continue
                except OSError:
                    continue
            out.append(prefix + name)
    out.sort()
    return out


def zero_region(fd: int, size: int) -> int | None:
    """Offset where a trailing all-zero region starts, or None if the last byte is not zero.

    At memory speed, not byte by byte: a trailing hole (sparse or preallocated file) is found
    with ``SEEK_HOLE``/``SEEK_DATA`` and never read; the bytes before it are read backwards
    in large blocks, each compared with a block of zeros (a memcmp), and only the one block
    where the zeros end is searched for the last non-zero byte.
    """
    end = trailing_hole(fd, size)
    end = size if end is None else end
    block = 8 << 20
    zeros = bytes(min(block, size))
    while end > 0:
        start = max(0, end - block)
        data = os.pread(fd, end - start, start)
        if len(data) != end - start:  # shrank while it was read: no diagnosis
            return None
        if data == (zeros if len(data) == len(zeros) else bytes(len(data))):
            end = start
            continue
        step = 64 << 10  # the last non-zero byte: 64 KB pieces from the end, then one rstrip
        piece_end = len(data)
        while piece_end > 0:
            piece_start = max(0, piece_end - step)
            piece = data[piece_start:piece_end]
            if piece.count(0) != len(piece):
                end = start + piece_start + len(piece.rstrip(b"\x00"))
                break
            piece_end = piece_start
        break
    return None if end == size else end


def trailing_hole(fd: int, size: int) -> int | None:
    """Where the file's last hole (read as zeros, never written) starts when it runs to the
    end; None when the end is data, or the file system cannot tell."""
    seek_hole, seek_data = getattr(os, "SEEK_HOLE", None), getattr(os, "SEEK_DATA", None)
    if seek_hole is None or seek_data is None:
        return None
    try:
        hole = os.lseek(fd, 0, seek_hole)
        for _ in range(10_000):
            if hole >= size:
                return None
            try:
                data = os.lseek(fd, hole, seek_data)
            except OSError:  # ENXIO: no data after this hole
                return hole
            hole = os.lseek(fd, data, seek_hole)
    except OSError:
        return None
    return None
