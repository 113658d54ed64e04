"""The engine's cold loop, for the common case: files reached through no link (or through a
Hugging Face cache snapshot's one link to its blob). What the folder's digest index answers
never gets here: :func:`~modelguard.indexhits.cached_hits` answers it first, in the verify's
thread.

:func:`batches` hands the readers the files whose bytes must be read, in batches. With no
digest cache or the cache's folder index, a batch of the tight loop holds only files straight in
the model folder that the folder's listing says are regular files, smaller than one read buffer
and not empty (an empty entry, which a device could match, goes the general way); :func:`read_batch`
reads those in a tight loop: opened relative to the folder without following links or
blocking, read with one call that asks for one byte more than the manifest's size into a
reused buffer, and hashed from it (hashlib releases the GIL, so reader threads overlap). With
no cache, no ``fstat``: the listing told the type, the read tells the size (a longer file
returns the extra byte, a shorter one less), and a folder or FIFO put there since fails the
read (a device node would need its own privilege to be put there). A read is taken to be
short only at the end of the file. Every system call releases the GIL, and with two readers
whatever Python work a file costs between the calls holds the other reader back, so the loop
does nothing else: the digests to compare and the result are worked out once per manifest
file, and the results go straight into the verify's mapping. Anything unusual (open or read
fails, other size, a digest that differs) is handed to the engine's general checks, which
diagnose it from the file itself. With the folder index, an ``fstat`` of the opened file gives
its stat key (a regular file of the manifest's size, else the general checks), the cache's
entries are looked up under it, and a read that verified is stored as the record of that key;
with a caller's own cache object every file goes to the general read. With no cache or the
folder index, a snapshot's small files straight in its folder (links to ``../../blobs/<sha256>``)
go in batches of their own (:class:`Linked`) once :func:`~modelguard.fs.linked_file` followed
each to a regular file of the manifest's size: the blob folder is opened once per verify
without following a link and found through ``/proc`` to be the folder checked (at most eight
held open: a link into a ninth goes the general way), and each blob is read by the same kind of
loop relative to it if ``/proc``, asked once per batch, still names the folder by its path; its
record is looked up and stored under the blob's path as the general read does.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any, Iterable, Iterator

from .fs import linked_file, opened_path
from .hashing import big_files, keep_buffer, new_hasher, spare_buffer
from .indexhits import cached_hits, template_of, templates
from .readplan import BATCH_BYTES, BATCH_FILES, ManifestOrder, Planned, per_manifest, small_and_straight_in
from .report import FileResult
from .statcache import NoCache
from .statindex import FolderView

_O_READ = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
           | getattr(os, "O_NOFOLLOW", 0))
_HASHERS = {"sha256": hashlib.sha256}
_FOLDERS = 8  # blob folders a verify keeps open for Linked batches (a snapshot's links: one)


def batches(checker: Any, order: ManifestOrder, results: dict[str, FileResult]) -> Iterator[list[Any]]:
    """``order``'s files (largest first) whose bytes must be read, in batches for the readers
    (up to :data:`BATCH_BYTES` or :data:`BATCH_FILES`); every other result goes in ``results``
    here, in the caller's thread. A batch holds either entries that the folder's listing
    (:meth:`~modelguard.engine._Checker.regular_names`, taken when the first such file is
    met) names as regular files straight in the folder, small and not empty, read by
    :func:`read_batch` with no other check first; a :class:`Linked` batch of small files that
    are a snapshot's links to their blobs (:func:`_blob`); or the ``(entry, path, resolved)``
    that ``locate`` found to be read. The first two only with no cache or the folder index
    (:class:`~modelguard.statindex.FolderView`), where such a file's read stores its record:
    whatever the index does not hold is read, not looked up again. When the index held no
    record to look at (cold), the first kind are the batches worked out once for the manifest
    (:attr:`ManifestOrder.small`), handed on whole when the listing names each of their files
    a regular file: no work per file here while the readers read. Otherwise the big files the
    index answered leave the checker's ``big`` before any is read: they keep no reader busy."""
    listed = type(checker.cache) in (NoCache, FolderView) and checker.root_fd is not None
    todo = cached_hits(checker, order.by_size, results)
    if todo is not order.by_size:  # a big file the index answered is not read: it keeps no reader busy
        checker.big = big_files(e.size for e in todo)
    if not listed or todo is not order.by_size:
        yield from _batched(checker, todo, listed, results)
        return
    # largest first, the folder listed where the first small file comes (as the loop below does)
    yield from _batched(checker, order.large, False, results)
    regular = checker.regular_names() if order.small else frozenset()
    yield from _batched(checker, order.rest, False, results)
    if order.small:
        for names, batch in order.small:
            if regular.issuperset(names):
                yield batch  # read, not changed, by read_batch: the same list serves every verify
            else:
                yield from _batched(checker, batch, True, results, regular)


def _batched(checker: Any, entries: Iterable[Any], listed: bool, results: dict[str, FileResult],
             regular: frozenset[str] | None = None) -> Iterator[list[Any]]:
    """:func:`batches` of ``entries``, one by one (``listed``: small files straight in the
    folder may take the tight loop)."""
    direct: list[Any] = []
    other: list[tuple[Any, Any, Any]] = []
    linked = Linked()
    direct_bytes = other_bytes = linked_bytes = 0
    for e in entries:
        if listed and small_and_straight_in(e):
            if regular is None:
                regular = checker.regular_names()
            if e.path in regular:
                direct.append(e)
                direct_bytes += e.size
                if direct_bytes >= BATCH_BYTES or len(direct) >= BATCH_FILES:
                    yield direct
                    direct, direct_bytes = [], 0
                continue
            blob = _blob(checker, e)
            if blob is not None:  # a snapshot's link to its blob
                linked.append(blob)
                linked_bytes += e.size
                if linked_bytes >= BATCH_BYTES or len(linked) >= BATCH_FILES:
                    yield linked
                    linked, linked_bytes = Linked(), 0
                continue
        located = checker.locate(e)
        if isinstance(located, FileResult):
            results[e.path] = located
            continue
        other.append((e, *located))
        other_bytes += e.size or BATCH_BYTES
        if other_bytes >= BATCH_BYTES or len(other) >= BATCH_FILES:
            yield other
            other, other_bytes = [], 0
    for batch in (direct, linked, other):
        if batch:
            yield batch


class Linked(list):
    """A batch of small files that are a snapshot's links: ``(entry, folder descriptor, blob's
    name, blob's path)`` each (:func:`_blob`)."""


def _blob(checker: Any, entry: Any) -> tuple[Any, int, str, str] | None:
    """``entry``'s item of a :class:`Linked` batch, when its file is a link that
    :func:`~modelguard.fs.linked_file` follows to a regular file of the manifest's size in a
    folder opened once per verify (without following a link, and found by ``/proc`` to be the
    folder checked: a read relative to it cannot leave it); else None."""
    found = linked_file(checker.root_text + os.sep + entry.path, checker.roots, checker.link_folders)
    if found is None or found[1].st_size != entry.size:
        return None
    real = found[0]
    folder, _, name = real.rpartition(os.sep)
    fds = checker.folder_fds
    fd = fds.get(folder)
    if fd is None:
        if len(fds) >= _FOLDERS:  # links into many folders: the general path, no descriptor held per folder
            return None
        try:
            fd = os.open(folder or os.sep, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            fd = -1
        else:
            opened = opened_path(fd)
            if opened is None or os.fspath(opened) != (folder or os.sep):
                os.close(fd)
                fd = -1
        fds[folder] = fd
    return None if fd < 0 else (entry, fd, name, real)


def read_batch(checker: Any, batch: list[Any], results: dict[str, FileResult]) -> None:
    """Put in ``results`` the result of each file of one of :func:`batches`' batches."""
    if type(batch) is Linked:
        return _read_linked(checker, batch, results)
    if type(batch[0]) is tuple:
        for item in batch:  # the general read: it diagnoses what it finds
            results[item[0].path] = checker.read_and_compare(*item)
        return
    if type(batch) is Planned and type(checker.cache) is NoCache and checker.progress is None:
        items = _plain_items(checker, batch)
        if items is not None:
            return _read_plain(checker, items, results)
    # Entries the listing named regular files straight in the folder. With the cache's folder
    # index (which cached_hits found holds no record that answers): the opened file's stat key
    # (fstat) is looked up among the cache's entries, then, read and verified, stored as the
    # record of that key: the bytes hashed are that file's, and a later change, or another file
    # renamed into its place, changes the key.
    memo = templates(checker.manifest, checker.all_digests)
    root_fd, progress = checker.root_fd, checker.progress
    cache = checker.cache
    store, lookup = (cache.store, cache.lookup) if type(cache) is FolderView else (None, None)
    prefix = checker.root_text + os.sep
    open_, preadv, close, fstat, is_reg, sha256 = os.open, os.preadv, os.close, os.fstat, stat.S_ISREG, hashlib.sha256
    buf = spare_buffer()  # hashing's read buffers, reused; longer than SMALL_BYTES
    view = memoryview(buf)
    again = []
    try:
        for entry in batch:
            name, size = entry.path, entry.size
            held = memo.get(name) or template_of(memo, checker, entry)
            try:
                fd = open_(name, _O_READ, dir_fd=root_fd)  # no link followed, no blocking on a FIFO
            except OSError:
                again.append(entry)
                continue
            st = None
            try:
                if store is not None:
                    st = fstat(fd)
                    if not is_reg(st.st_mode) or st.st_size != size:
                        again.append(entry)
                        continue
                    if lookup(prefix + name, st, held[0]) == held[0]:  # an entry the index did not hold
                        results[name] = held[1]
                        continue
                # one byte more than the size: a file that grew returns it (a folder or FIFO raises)
                got = preadv(fd, [view[:size + 1]], 0)
            except OSError:
                got = None
            finally:
                close(fd)
            if got == size and (sha256(view[:size]).hexdigest() == held[3] if held[3] else
                                _same(held, entry, view[:size])):
                results[name] = held[2]
                if st is not None:
                    store(prefix + name, st, held[0])
                if progress is not None:
                    progress(size)
            else:
                again.append(entry)
    finally:
        keep_buffer(buf)
    for entry in again:  # anything unusual: the general checks diagnose it from the file itself
        results[entry.path] = checker.check(entry)


def _plain_items(checker: Any, batch: Planned) -> tuple | None:
    """Per file of ``batch``, what :func:`_read_plain` needs: ``(entry, name, size, size + 1,
    the result of a read that verified, the sha256 expected)``, worked out once per manifest
    and batch; None when a file is compared by other digests."""
    manifest = checker.manifest
    plans = per_manifest(manifest, (id(manifest), checker.all_digests, "plain reads"), dict)
    held = plans.get(id(batch))
    if held is None or held[0] is not batch:  # the value holds the batch: no other list has its id
        memo = templates(manifest, checker.all_digests)
        items: list | None = []
        for entry in batch:
            _, _, verified, sha256 = template_of(memo, checker, entry)
            if sha256 is None or verified is None:
                items = None
                break
            items.append((entry, entry.path, entry.size, entry.size + 1, verified, sha256))
        held = plans[id(batch)] = (batch, None if items is None else tuple(items))
    return held[1]


def _read_plain(checker: Any, items: tuple, results: dict[str, FileResult]) -> None:
    """:func:`read_batch`'s loop with no cache and no progress to report, each file compared by
    its sha256: between the system calls, nothing but what a file needs (with two readers, any
    Python work one does holds the other back)."""
    root_fd = checker.root_fd
    open_, preadv, close, sha256 = os.open, os.preadv, os.close, hashlib.sha256
    buf = spare_buffer()
    view = memoryview(buf)
    again = []
    try:
        for entry, name, size, more, verified, expected in items:
            try:
                fd = open_(name, _O_READ, dir_fd=root_fd)  # no link followed, no blocking on a FIFO
            except OSError:
                again.append(entry)
                continue
            try:  # one byte more than the size: a file that grew returns it (a folder or FIFO raises)
                got = preadv(fd, [view[:more]], 0)
            except OSError:
                got = -1
            finally:
                close(fd)
            if got == size and sha256(view[:size]).hexdigest() == expected:
                results[name] = verified
            else:
                again.append(entry)
    finally:
        keep_buffer(buf)
    for entry in again:  # anything unusual: the general checks diagnose it from the file itself
        results[entry.path] = checker.check(entry)


def _read_linked(checker: Any, batch: Linked, results: dict[str, FileResult]) -> None:
    """:func:`read_batch`'s loop for a :class:`Linked` batch: each blob opened relative to its
    folder's descriptor without following a link or blocking, and read with one call of one
    byte more than its size, while ``/proc`` still names its folder by the folder's path (not
    moved since it was opened: :func:`_moved_folders`); with the folder index, its stat key
    (``fstat``) looked up and a verified read stored under the blob's path, as the general
    read stores it. Anything unusual goes to the general checks."""
    memo = templates(checker.manifest, checker.all_digests)
    progress, cache = checker.progress, checker.cache
    store, lookup = (cache.store, cache.lookup) if type(cache) is FolderView else (None, None)
    buf = spare_buffer()
    view = memoryview(buf)
    again = []
    moved = _moved_folders(batch)
    try:
        for entry, dir_fd, name, real in batch:
            size = entry.size
            held = memo.get(entry.path) or template_of(memo, checker, entry)
            if dir_fd in moved:
                again.append(entry)
                continue
            try:
                fd = os.open(name, _O_READ, dir_fd=dir_fd)
            except OSError:
                again.append(entry)
                continue
            st = None
            try:
                if store is not None:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                        again.append(entry)
                        continue
                    if lookup(real, st, held[0]) == held[0]:
                        results[entry.path] = held[1]
                        continue
                got = os.preadv(fd, [view[:size + 1]], 0)
            except OSError:
                got = None
            finally:
                os.close(fd)
            if got == size and _same(held, entry, view[:size]):
                results[entry.path] = held[2]
                if st is not None:
                    store(real, st, held[0])
                if progress is not None:
                    progress(size)
            else:
                again.append(entry)
    finally:
        keep_buffer(buf)
    for entry in again:
        results[entry.path] = checker.check(entry)


def _moved_folders(batch: Linked) -> set[int]:
    """``batch``'s folder descriptors that ``/proc`` no longer names by the folder's path (moved,
    perhaps out of the roots, since :func:`_blob` checked it): the general checks take their files."""
    moved = set()
    for fd, folder in {item[1]: item[3].rpartition(os.sep)[0] or os.sep for item in batch}.items():
        opened = opened_path(fd)
        if opened is None or os.fspath(opened) != folder:
            moved.add(fd)
    return moved


def _same(held: tuple, entry: Any, chunk: Any) -> bool:
    """Whether ``chunk`` (the whole file) has the digests ``held`` (``entry``'s template) lists."""
    for algorithm, value in held[0].items():
        hasher = _HASHERS.get(algorithm)
        if (hasher(chunk) if hasher else _hasher(algorithm, entry, chunk)).hexdigest() != value:
            return False  # the general read hashes again and diagnoses
    return True


def _hasher(algorithm: str, entry: Any, data: Any) -> Any:
    h = new_hasher(algorithm, entry.size, entry.piece_size)
    h.update(data)
    return h
