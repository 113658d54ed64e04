"""Digests of files: every digest a file needs from one read of it."""

from __future__ import annotations

import hashlib
import os
from typing import Callable, Iterable

CHUNK_SIZE = 1 << 20


class FileChangedError(OSError):
    """The file changed (size, mtime, inode) while it was being read."""


def new_hasher(algorithm: str, size: int) -> "hashlib._Hash":
    """A fresh hasher. ``git_sha1`` is git's blob id: sha1 of ``blob <size>\\0`` + content."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "git_sha1":
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\x00" % size)
        return h
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def hash_fd(
    fd: int,
    algorithms: Iterable[str],
    *,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, str]:
    """Hash the open file ``fd`` (from its start) with every algorithm in one read.

    Raises :class:`FileChangedError` when the file's size, mtime or inode differ
    after the read from before it, so a file being written is never reported
    with digests that belong to no stable content.
    """
    algorithms = tuple(dict.fromkeys(algorithms))
    before = os.fstat(fd)
    hashers = [new_hasher(a, before.st_size) for a in algorithms]
    updates = [h.update for h in hashers]
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    total = 0
    os.lseek(fd, 0, os.SEEK_SET)
    while True:
        n = os.readv(fd, [buf])
        if not n:
            break
        chunk = view[:n]
        for update in updates:
            update(chunk)
        total += n
        if progress is not None:
            progress(n)
    after = os.fstat(fd)
    if _stat_key(before) != _stat_key(after) or total != after.st_size:
        raise FileChangedError(f"file changed while it was read ({total} bytes read, size now {after.st_size})")
    return {a: h.hexdigest() for a, h in zip(algorithms, hashers)}


def hash_file(
    path: str | os.PathLike[str],
    algorithms: Iterable[str] = ("sha256",),
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, str]:
    """Digests of the file at ``path``: ``{"sha256": "...", ...}``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_fd(fd, algorithms, progress=progress)
    finally:
        os.close(fd)


def hash_bytes(data: bytes, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Digests of in-memory ``data`` (same algorithms as :func:`hash_file`)."""
    out = {}
    for algorithm in dict.fromkeys(algorithms):
        h = new_hasher(algorithm, len(data))
        h.update(data)
        out[algorithm] = h.hexdigest()
    return out
