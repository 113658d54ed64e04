"""Chunk digests: the sha256 of each piece of a large file, so one file is verified on every core.

One sha256 of a whole file runs on one core. ``build`` also writes, for a file of
:data:`CHUNKED_MIN_SIZE` bytes or more, the sha256 of each :data:`CHUNK_BYTES` piece
(``chunks:`` in the manifest; OpenSSF model signing hashes shards of a file the same way). A
verify checks those: :func:`modelguard.hashing.hash_fd` hashes the pieces on one thread per core,
and the pieces' digests stand for the file as one digest, :func:`chunk_root` (the digest cache
keeps that under :data:`CHUNKED`). Any changed byte changes its piece's sha256, so the pieces
say as much about the file as its whole sha256.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

CHUNKED = "sha256_chunks"  # the digest name of a file's chunk digests (their root)
CHUNK_BYTES = 64 << 20  # the piece size build writes
CHUNKED_MIN_SIZE = 2 * CHUNK_BYTES  # build writes chunk digests for files of this size or more
MAX_PIECES = 4096  # chunk digests of one file, at most (a manifest's YAML node budget counts on it)
MAX_PIECE_BYTES = 1 << 30


def piece_size_for(size: int) -> int | None:
    """The piece size build uses for a file of ``size`` bytes: :data:`CHUNK_BYTES`, doubled
    until the file has at most :data:`MAX_PIECES` pieces; None past 1 GiB pieces."""
    piece = CHUNK_BYTES
    while -(-size // piece) > MAX_PIECES:
        piece *= 2
    return piece if piece <= MAX_PIECE_BYTES else None


def chunk_root(chunk_size: int, digests: Sequence[str]) -> str:
    """One digest for a file's chunk digests: the sha256 of the chunk size and the chunk
    digests, one per line. Two files have the same root only if every chunk is the same."""
    import hashlib

    return hashlib.sha256(("%d\n" % chunk_size + "\n".join(digests)).encode()).hexdigest()


class ChunkedSha256:
    """A hasher for :data:`CHUNKED`: the sha256 of each ``chunk_size`` piece of what it is
    fed (the last piece may be shorter); ``hexdigest()`` is their :func:`chunk_root`."""

    def __init__(self, chunk_size: int) -> None:
        import hashlib

        self.chunk_size = chunk_size
        self._new = hashlib.sha256
        self._hasher = hashlib.sha256()
        self._left = chunk_size
        self._done: list[str] = []

    def update(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while len(view) >= self._left:
            self._hasher.update(view[:self._left])
            view = view[self._left:]
            self._done.append(self._hasher.hexdigest())
            self._hasher, self._left = self._new(), self.chunk_size
        if len(view):
            self._hasher.update(view)
            self._left -= len(view)

    def chunk_digests(self) -> list[str]:
        return self._done + ([self._hasher.hexdigest()] if self._left < self.chunk_size else [])

    def hexdigest(self) -> str:
        return chunk_root(self.chunk_size, self.chunk_digests())


class ChunkDigests(NamedTuple):
    """The sha256 of each ``size``-byte piece of a file, in order (the last may be shorter);
    ``root`` is the one digest that stands for them (:func:`chunk_root`). A named tuple, not a
    dataclass: this module is imported at program start (``import modelguard.auto``), and
    ``dataclasses`` costs milliseconds to import."""

    size: int
    sha256: tuple[str, ...]

    @property
    def root(self) -> str:
        return chunk_root(self.size, self.sha256)

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": list(self.sha256)}

    def differences(self, found: Sequence[str], file_size: int) -> tuple[list[int], str]:
        """The pieces whose ``found`` digest differs, and a sentence that says so."""
        bad = [k for k, (got, want) in enumerate(zip(found, self.sha256)) if got != want]
        first = f"bytes {bad[0] * self.size}..{min(file_size, (bad[0] + 1) * self.size)}" if bad else "none"
        return bad, (f"{len(bad)} of {len(found)} pieces of {self.size >> 20} MiB differ from their "
                     f"sha256 (first: {first})")
