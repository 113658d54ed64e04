"""Digests of files: every digest a file needs from one read of it, at the speed of the hardware.

A file is read once, whatever the number of digests. Small files are hashed in the calling
thread. Large ones go through a pipeline: the calling thread reads chunks into a small ring of
buffers and one thread per digest hashes them. Reading overlaps hashing, and two digests
(md5 + sha256) cost the wall time of the slower one, not the sum: hashlib releases the GIL
while it hashes. The verify engine asks for the pipeline (and for a file's pieces on every
core, below) only while a core would otherwise sit idle (:func:`worth_a_pipeline`). Several
files are hashed in parallel by :func:`run_parallel`, the one thread pool that
:func:`hash_files`, the verify engine, ``build`` and the Hub cache scan share.

One large file on every core: verifying a file's chunk digests (:mod:`modelguard.pieces`),
:func:`hash_fd` hands its pieces to one thread per core, each piece read in order by one thread.

``hashlib``, ``threading`` and ``queue`` are imported on first use, so importing this module
(and ``modelguard``) stays cheap.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Sequence, TypeVar

from .pieces import CHUNK_BYTES, CHUNKED, ChunkedSha256, chunk_root

T = TypeVar("T")
R = TypeVar("R")

CHUNK_SIZE = 1 << 20
# Below this size a file is hashed in the calling thread: starting threads costs more than
# the overlap saves.
PIPELINE_MIN_SIZE = 8 << 20


def big_files(sizes: Iterable[int | None]) -> tuple[int, ...]:
    """The sizes of :data:`PIPELINE_MIN_SIZE` or more at the start of ``sizes`` (largest first;
    None: unknown); the rest is not looked at."""
    big = []
    for size in sizes:
        if not size or size < PIPELINE_MIN_SIZE:
            break
        big.append(size)
    return tuple(big)


def worth_a_pipeline(size: int, big: Sequence[int], readers: int, cores: int = 0) -> bool:
    """Whether a file of ``size`` bytes, one of ``big`` (:func:`big_files`) read by ``readers``
    reader threads on ``cores`` cores (taken to be ``readers`` when fewer), is hashed in a
    thread of its own beside its read (:func:`hash_fd`'s ``threads``). The pipeline only pays
    while a core would otherwise sit idle. Each other big file keeps a reader busy for at most
    this file's read (a fraction of it when smaller), and at most the other readers are busy;
    when those keep at least half of the other cores busy, every core is already reading and
    hashing, and a hashing thread per file only adds switches and moves each chunk to another
    core's cache (two 1 GiB shards on two cores: 0.91 of two cores' speed with the pipeline,
    0.96 without)."""
    if size < PIPELINE_MIN_SIZE:
        return False
    if readers <= 1:
        return True
    busy = min(readers - 1, sum(min(1.0, other / size) for other in big) - (1 if size in big else 0))
    return 2 * busy < max(readers, cores) - 1


# Chunks in flight per file in the pipeline (memory: RING_BUFFERS * CHUNK_SIZE per file).
RING_BUFFERS = 4


# Read buffers kept for reuse: a fresh 1 MiB bytearray costs a zero fill and page faults
# that, for a 1 MiB file, take longer than reading it. list.pop/append are atomic.
_SPARE_BUFFERS: list[bytearray] = []


def spare_buffer() -> bytearray:
    """A read buffer of :data:`CHUNK_SIZE` bytes, reused when one is kept (see :func:`keep_buffer`)."""
    try:
        buf = _SPARE_BUFFERS.pop()
    except IndexError:
        return bytearray(CHUNK_SIZE)
    # the readers of small files rely on its length: a file is read with one byte to spare
    return buf if len(buf) == CHUNK_SIZE else bytearray(CHUNK_SIZE)


def keep_buffer(buf: bytearray) -> None:
    """Keep ``buf`` (from :func:`spare_buffer`) for the next read."""
    if len(buf) == CHUNK_SIZE and len(_SPARE_BUFFERS) < 16:
        _SPARE_BUFFERS.append(buf)


class FileChangedError(OSError):
    """The file changed (size, mtime, inode) while it was being read."""


def new_hasher(algorithm: str, size: int, chunk_size: int = CHUNK_BYTES) -> Any:
    """A fresh hasher. ``git_sha1`` is git's blob id: sha1 of ``blob <size>\\0`` + content;
    :data:`CHUNKED` hashes each ``chunk_size`` piece (:class:`ChunkedSha256`)."""
    import hashlib

    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "git_sha1":
        h = hashlib.sha1(usedforsecurity=False)
        h.update(b"blob %d\x00" % size)
        return h
    if algorithm == CHUNKED:
        return ChunkedSha256(chunk_size)
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


def stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What identifies one version of a file's content: device, inode, size, mtime, ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 2


def hash_fd(
    fd: int,
    algorithms: Iterable[str],
    *,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
    threads: bool | None = None,
    stat_before: os.stat_result | None = None,
    piece_size: int = CHUNK_BYTES,
    pieces: list[str] | None = None,
) -> dict[str, str]:
    """Hash the open file ``fd`` (from its start) with every algorithm in one read.

    ``threads`` forces the pipeline on (True) or off (False); by default it is used for
    files of :data:`PIPELINE_MIN_SIZE` bytes or more. ``stat_before``: ``os.fstat(fd)``
    if the caller has just taken it (saves a system call). :data:`CHUNKED` hashes each
    ``piece_size`` piece; its digests are appended to ``pieces`` when given. Asked for alone
    on a file of several pieces, the pieces are hashed on one thread per core (at most 8),
    unless ``threads`` is False (then in this thread, in order).

    Raises :class:`FileChangedError` when the file's size, mtime or inode differ
    after the read from before it, so a file being written is never reported
    with digests that belong to no stable content.
    """
    algorithms = tuple(dict.fromkeys(algorithms))
    before = os.fstat(fd) if stat_before is None else stat_before
    size = before.st_size
    if threads is None:
        threads = size >= PIPELINE_MIN_SIZE
    cpus = usable_cpus() if algorithms == (CHUNKED,) and threads and size > piece_size else 1
    if cpus > 1:
        done = _hash_pieces(fd, size, piece_size, min(cpus, -(-size // piece_size), 8), progress)
        _check_unchanged(fd, before, size)
        if pieces is not None:
            pieces.extend(done)
        return {CHUNKED: chunk_root(piece_size, done)}
    hashers = [new_hasher(a, size, piece_size) if a == CHUNKED else new_hasher(a, size) for a in algorithms]
    updates = [h.update for h in hashers]
    # Reads stop at the size seen before (no extra read to meet EOF): a file that grew or
    # shrank meanwhile has another size after, checked below.
    if threads:
        total = _read_pipelined(fd, size, updates, progress, chunk_size)
    else:
        total = _read_serial(fd, size, updates, progress, chunk_size)
    _check_unchanged(fd, before, total)
    if pieces is not None:
        for h in hashers:
            if isinstance(h, ChunkedSha256):
                pieces.extend(h.chunk_digests())
    return {a: h.hexdigest() for a, h in zip(algorithms, hashers)}


def _check_unchanged(fd: int, before: os.stat_result, total: int) -> None:
    after = os.fstat(fd)
    if stat_key(before) != stat_key(after) or total != after.st_size:
        raise FileChangedError(f"file changed while it was read ({total} bytes read, size now {after.st_size})")


def _hash_pieces(fd: int, size: int, piece_size: int, workers: int,
                 progress: Callable[[int], None] | None) -> list[str]:
    """The sha256 of each ``piece_size`` piece of ``fd``, on ``workers`` threads (this one
    among them). A thread takes the next piece and reads it in order, so each stretch of
    ``piece_size`` bytes is read sequentially. A piece shorter than the size said raises
    :class:`FileChangedError`."""
    import hashlib
    import itertools
    import threading

    count = -(-size // piece_size)
    done: list[str] = [""] * count
    next_piece = itertools.count()  # next() on it is atomic under the GIL
    errors: list[BaseException] = []

    def work() -> None:
        buf = spare_buffer()
        view = memoryview(buf)
        try:
            while not errors:
                k = next(next_piece)
                if k >= count:
                    return
                hasher = hashlib.sha256()
                pos, end = k * piece_size, min(size, (k + 1) * piece_size)
                while pos < end:
                    n = os.preadv(fd, [view[:min(len(buf), end - pos)]], pos)
                    if not n:
                        raise FileChangedError(f"file changed while it was read (ends at {pos} bytes, not {size})")
                    hasher.update(view[:n])
                    pos += n
                    if progress is not None:
                        progress(n)
                done[k] = hasher.hexdigest()
        except BaseException as exc:  # raised in the caller's thread below
            errors.append(exc)
        finally:
            keep_buffer(buf)

    helpers: list[threading.Thread] = []
    try:
        for _ in range(workers - 1):
            helper = threading.Thread(target=work, name="modelguard-hash", daemon=True)
            helper.start()
            helpers.append(helper)
    except RuntimeError:  # no thread to be had: the ones started and this one do the work
        pass
    try:
        work()
    finally:
        for helper in helpers:
            helper.join()
    if errors:  # an interrupt first, else the first error
        raise next((e for e in errors if not isinstance(e, Exception)), errors[0])
    return done


def _read_serial(fd: int, size: int, updates: Sequence[Callable[[Any], None]],
                 progress: Callable[[int], None] | None, chunk_size: int) -> int:
    try:
        buf = _SPARE_BUFFERS.pop()
        if len(buf) != chunk_size:
            buf = bytearray(chunk_size)
    except IndexError:
        buf = bytearray(chunk_size)
    view = memoryview(buf)
    total = 0
    try:
        while total < size:
            # ask for no more than is left: a read into a buffer much larger than the file
            # costs more on some kernels (gVisor maps the whole buffer)
            n = os.preadv(fd, [view[:size - total]] if size - total < chunk_size else [buf], total)
            if not n:
                break
            chunk = view[:n]
            for update in updates:
                update(chunk)
            total += n
            if progress is not None:
                progress(n)
        return total
    finally:
        keep_buffer(buf)


def _read_pipelined(fd: int, size: int, updates: Sequence[Callable[[Any], None]],
                    progress: Callable[[int], None] | None, chunk_size: int) -> int:
    """Read in this thread into a ring of buffers; hash in one thread per digest.

    Chunk ``i`` goes into buffer ``i % RING_BUFFERS``. Each digest thread owns a semaphore
    of RING_BUFFERS slots: the reader takes a slot of every digest thread before filling a
    buffer, a digest thread gives one back after hashing a chunk, so a buffer is refilled
    only once every digest thread is done with it.
    """
    import queue
    import threading

    bufs = [bytearray(chunk_size) for _ in range(RING_BUFFERS)]
    views = [memoryview(b) for b in bufs]
    slots = [threading.Semaphore(RING_BUFFERS) for _ in updates]
    queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in updates]
    errors: list[BaseException] = []

    def hash_chunks(update: Callable[[Any], None], chunks: queue.SimpleQueue, slot: threading.Semaphore) -> None:
        failed = False
        while True:
            chunk = chunks.get()
            if chunk is None:
                return
            if not failed:
                try:
                    update(chunk)
                except BaseException as exc:  # reported by the reader; keep draining
                    errors.append(exc)
                    failed = True
            slot.release()

    workers = [
        threading.Thread(target=hash_chunks, args=(u, q, s), name="modelguard-hash", daemon=True)
        for u, q, s in zip(updates, queues, slots)
    ]
    for w in workers:
        w.start()
    total = 0
    i = 0
    try:
        while not errors and total < size:
            for slot in slots:
                slot.acquire()
            k = i % RING_BUFFERS
            n = os.preadv(fd, [bufs[k]], total)
            if not n:
                break
            chunk = views[k][:n]
            for q in queues:
                q.put(chunk)
            total += n
            i += 1
            if progress is not None:
                progress(n)
    finally:
        for q in queues:
            q.put(None)
        for w in workers:
            w.join()
    if errors:
        raise errors[0]
    return total


def hash_file(
    path: str | os.PathLike[str],
    algorithms: Iterable[str] = ("sha256",),
    *,
    progress: Callable[[int], None] | None = None,
    threads: bool | None = None,
    pieces: list[str] | None = None,
    piece_size: int = CHUNK_BYTES,
) -> dict[str, str]:
    """Digests of the file at ``path``: ``{"sha256": "...", ...}`` (``pieces``, ``piece_size``: see :func:`hash_fd`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_fd(fd, algorithms, progress=progress, threads=threads, pieces=pieces, piece_size=piece_size)
    finally:
        os.close(fd)


def run_parallel(
    items: Iterable[T],
    work: Callable[[T], R],
    *,
    workers: int,
    thread_name: str = "modelguard-hash",
    meanwhile: Callable[[], Any] | None = None,
) -> list[R]:
    """``[work(item) for item in items]`` on ``workers`` threads; the one thread pool of modelguard.

    ``items`` is consumed in the calling thread as the workers run, so producing the next item
    (a stat, a cache lookup) overlaps the hashing of earlier ones; no thread starts until the
    first item arrives. ``meanwhile()``, when given, runs in the calling thread once ``items``
    is used up, while the workers still run. Plain threads and a queue, not an executor: a
    future per file costs GIL time. The first exception ``work`` raised is raised here once
    every thread has stopped.
    """
    if workers <= 1:
        done = [work(item) for item in items]
        if meanwhile is not None:
            meanwhile()
        return done
    import queue
    import threading

    results: dict[int, R] = {}
    errors: list[BaseException] = []
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    threads: list[threading.Thread] = []

    def drain() -> None:
        while True:
            job = tasks.get()
            if job is None:
                return
            try:
                results[job[0]] = work(job[1])
            except BaseException as exc:  # raised in the caller's thread below
                errors.append(exc)

    count = 0
    try:
        for item in items:
            if not threads:
                threads = [threading.Thread(target=drain, name=thread_name, daemon=True) for _ in range(workers)]
                for t in threads:
                    t.start()
            tasks.put((count, item))
            count += 1
        if meanwhile is not None:
            meanwhile()
    finally:
        for _ in threads:
            tasks.put(None)
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    return [results[i] for i in range(count)]


def hash_files(
    paths: Iterable[str | os.PathLike[str]],
    algorithms: Iterable[str] = ("sha256",),
    *,
    max_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict[str, str]]:
    """Digests of several files, hashed in parallel threads: ``{path: {algorithm: hex}}``.

    Largest files start first so the pool does not end waiting on one big file.
    An unreadable file raises its ``OSError``.
    """
    algorithms = tuple(dict.fromkeys(algorithms))
    sized = sorted(((os.fspath(p), os.stat(p).st_size) for p in paths), key=lambda ps: -ps[1])
    workers = max_workers or min(len(sized), usable_cpus(), 8) or 1
    ordered = [p for p, _ in sized]
    digests = run_parallel(ordered, lambda p: hash_file(p, algorithms, progress=progress), workers=workers)
    return dict(zip(ordered, digests))


def hash_bytes(data: bytes, algorithms: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Digests of in-memory ``data`` (same algorithms as :func:`hash_file`)."""
    out = {}
    for algorithm in dict.fromkeys(algorithms):
        h = new_hasher(algorithm, len(data))
        h.update(data)
        out[algorithm] = h.hexdigest()
    return out
