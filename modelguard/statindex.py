"""A model folder's index in the digest cache: the digests a verify stored, read in one go.

A cold verify stores what it verified as records of the folder's index, written once at the
end of the verify (one file written, not one :mod:`modelguard.statcache` entry file per file:
creating a file costs far more than hashing a small one, above all on the network file
systems that hold home directories on clusters). A warm verify costs a stat per file and one
read of this index. Each record is what an entry holds (path, stat key, digests, when
stored), trusted as entries are: the index lives in the same private folder, is opened
relative to it without following links and without blocking, must be a regular file of this
user's that group and others cannot write, and is bounded in size; anything odd reads as an
empty index. A record counts only for the stat key it holds and until it expires
(``MODELGUARD_CACHE_MAX_AGE``); a file modified within the cache's racy window gets none (a
later write in the same timestamp tick would leave the key unchanged); with ``rehash`` no
record is believed: each file's record (and entry) is dropped as the file is read, and it is
stored afresh only if it verifies (a file a rehash found changed under an unchanged key is
not answered from its old record again). A record that misses is dropped and the file's
entry, if any, is read: entries are what ``lock add`` stores through the cache itself; one
read that way is copied into the index once older than the cache's ``index_settle_ns``.

Name: ``<sha256 of the folder's absolute path>.idx`` beside the entries; written (temporary
file, renamed into place) at the end of a verify that added or dropped records, as the
index then on disk with this verify's own changes applied: two verifies of one folder at once
keep each other's changes (short of both writing at the same instant: then the changes of
the one that wrote first are lost).
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any, Iterable, Mapping

from .private_dirs import O_NOFOLLOW, owned_by_us, replace_private_file
from .statcache import DIGEST_LENGTHS as _LENGTHS, HEX as _HEX, StatCache, valid_digest

FORMAT = 1
_MAX_INDEX_BYTES = 64 << 20
_LISTINGS = 4  # listing records an index keeps (modelguard.unlisted), one per set of listed paths
# The records of the indexes last decoded, by name, with the bytes they were decoded from: a
# verify still reads its index (opened and checked as always) and decodes it only when its bytes
# differ. Records are never changed in place (a verify replaces or drops them in its own copy).
_DECODED: dict[str, tuple[bytes, dict[str, Any], Any]] = {}
_O_READ = (os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
           | getattr(os, "O_CLOEXEC", 0))


def folder_view(cache: Any, folder: str) -> Any:
    """What the engine looks digests up in for the files of ``folder``: a :class:`FolderView`
    of a :class:`StatCache`, or ``cache`` itself (no cache, a caller's own object)."""
    if type(cache) is StatCache:
        return FolderView(cache, folder)
    return cache


class FolderView:
    """``lookup``/``store`` of a :class:`StatCache` for one verify of one folder, answered
    from the folder's index where a record still holds; :meth:`finish` writes the index."""

    def __init__(self, cache: StatCache, folder: str) -> None:
        import hashlib

        self.cache = cache
        top = os.path.abspath(folder)
        self.name = hashlib.sha256(top.encode("utf-8", "surrogateescape")).hexdigest() + ".idx"
        self.prefix = top.rstrip(os.sep) + os.sep  # the engine's paths: this folder's, already absolute
        self.believed = not cache.rehash  # rehash: no record or entry believed (those of files not read kept)
        now = time.time_ns()  # records stored within [oldest, newest] have not expired (statcache's rule)
        self.oldest_ns, self.newest_ns = now - int(cache.max_age_s * 1e9), now + 60 * 10**9
        self.started_ns = now  # before any read of this verify: the racy window counts from here
        self.touched: set[str] = set()  # paths whose record this verify added, replaced or dropped
        self.dir_fd: int | None = None
        # the decoded index the records were copied from (shared by the verifies that read the
        # same bytes, never changed): while this verify has changed none of its records (touched
        # is empty), each record is the very object ``source`` holds under its path
        self.source: dict[str, Any] = {}
        # the records of the folder's listing (modelguard.unlisted) by the key of the listed
        # paths, as decoded; the one this verify made, to be written by finish
        self.listings: Any = None
        self.new_listing: list | None = None
        try:
            self.dir_fd = cache.store_fd(create=False)
            if self.dir_fd is not None:
                self.source, self.listings = self._read()
        except Exception:  # anything odd is an empty index
            self.source, self.listings = {}, None
        self.records = dict(self.source)

    def _read(self) -> tuple[dict[str, Any], Any]:
        """The index's records as decoded (shared: not to be changed), or {}; and its listing records."""
        try:
            fd = os.open(self.name, _O_READ, dir_fd=self.dir_fd)
        except OSError:
            return {}, None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or not owned_by_us(st) or st.st_mode & 0o022
                    or st.st_size > _MAX_INDEX_BYTES):
                return {}, None
            chunks = []
            left = st.st_size + 1
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        last = _DECODED.get(self.name)
        if last is not None and last[0] == data:  # the same bytes as last read: the same records
            return last[1], last[2]
        import json

        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("files"), dict):
            return {}, None
        if len(_DECODED) >= 4:
            _DECODED.clear()
        _DECODED[self.name] = (data, doc["files"], doc.get("listings"))
        return doc["files"], doc.get("listings")

    def lookup(self, path: Any, st: os.stat_result, algorithms: Iterable[str]) -> dict[str, str] | None:
        real = path if type(path) is str and path.startswith(self.prefix) else os.path.abspath(os.fspath(path))
        if not self.believed:  # rehash: the file is read, and its record stored afresh only if it verifies
            if self.records.pop(real, None) is not None:
                self.touched.add(real)
            if self.dir_fd is not None:  # and its entry, if any, no longer answers for it
                try:
                    os.unlink(self.cache._entry_name(real), dir_fd=self.dir_fd)
                except OSError:
                    pass
            return None
        records = self.records
        record = records.get(real)
        if record is not None:
            try:  # the record's stat key, its age, then each digest asked for
                dev, ino, size, mtime, ctime, stored, digests = record
                if ((ino, size, mtime, ctime, dev) == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev)
                        and type(stored) is int and self.oldest_ns <= stored <= self.newest_ns):
                    out = {}
                    for algorithm in algorithms:
                        value = digests[algorithm]
                        if type(value) is not str or len(value) != _LENGTHS[algorithm] or not _HEX.issuperset(value):
                            break
                        out[algorithm] = value
                    else:
                        if out:
                            return out
            except Exception:  # a malformed record: a miss
                pass
            del records[real]
            self.touched.add(real)
        if self.dir_fd is None:  # no store folder yet: no entry to read (a verify's stores go in the index)
            return None
        digests, read = self.cache.lookup_entry(real, st, algorithms)
        if read is not None:
            entry_st, entry = read
            if time.time_ns() - max(entry_st.st_mtime_ns, entry_st.st_ctime_ns) >= self.cache.index_settle_ns:
                records[real] = [*entry["key"], entry["stored_at_ns"], entry["digests"]]
                self.touched.add(real)
        return digests

    def store(self, path: Any, st: os.stat_result, digests: Mapping[str, str]) -> None:
        """Remember ``digests`` (of content that verified) for the file at ``path``, read under
        ``st``, as a record of this folder's index, written with the others by :meth:`finish`:
        one write per verify, not one entry file per file (creating a file costs far more than
        hashing a small one, above all on a network file system). ``st`` is the stat of the
        file whose bytes were hashed, taken from its open descriptor before the read: a record
        never claims digests for a key whose content was not hashed (a file changed or renamed
        into the path since then has another key). Skipped, as the cache's own store is, when
        the digests are not valid or the file was modified within the cache's racy window
        before this verify began (so before the read began: a write later in the same timestamp
        tick, while the read was under way, would leave the key unchanged, however long the
        read then took)."""
        real = path if type(path) is str and path.startswith(self.prefix) else os.path.abspath(os.fspath(path))
        if (not digests or not all(valid_digest(a, v) for a, v in digests.items())
                or self.started_ns - max(st.st_mtime_ns, st.st_ctime_ns) < self.cache.racy_window_ns):
            return  # a record the file already has stays: it was stored when its key had settled
        key = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        merged = dict(digests)
        held = self.records.get(real) if self.believed else None  # rehash: no digest kept unread
        if (type(held) is list and len(held) == 7 and held[:5] == key and type(held[6]) is dict
                and type(held[5]) is int and self.oldest_ns <= held[5] <= self.newest_ns):
            # the same file's other digests (md5 kept when sha256 is added)
            merged = {**{a: v for a, v in held[6].items() if valid_digest(a, v)}, **merged}
        self.records[real] = [*key, time.time_ns(), dict(sorted(merged.items()))]
        self.touched.add(real)

    def remember_listing(self, key: str, extra: Iterable[str], folders: list[tuple[str, Any]],
                         links: Iterable[tuple[str, bool]] = ()) -> None:
        """Keep, to be written by :meth:`finish`, what a search for the files the manifest
        (``key``) does not list found: ``extra``, in the folders ``folders`` (``(relative
        folder, its stat taken before it was listed)``, each), with the links it met (``(relative
        path, whether it led to a folder)``, each: a change of a link's target shows in no
        folder's stat, only in what the link leads to). Skipped when a folder could not
        be listed or was modified within the cache's racy window before this verify began (a
        change later in the same timestamp tick would leave its key unchanged)."""
        keys = []
        for prefix, st in folders:
            if st is None or self.started_ns - max(st.st_mtime_ns, st.st_ctime_ns) < self.cache.racy_window_ns:
                return
            keys.append([prefix, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns])
        self.new_listing = [key, time.time_ns(), list(extra), keys, [[rel, bool(folder)] for rel, folder in links]]

    def finish(self) -> None:
        """Write the index when this verify added or dropped records: its own changes applied to
        the index as it is now, so what another verify of the folder wrote meanwhile stays (a
        record it dropped is not put back, one it added is not lost). Never raises."""
        if not self.touched and (self.new_listing is None or not self.records):  # a listing alone: no index
            return
        try:
            import json

            dir_fd = self.cache.store_fd(create=True)
            if dir_fd is None:
                return
            self.dir_fd = dir_fd
            try:
                now, listings = self._read()
                now = dict(now)
            except Exception:  # anything odd is an empty index
                now, listings = {}, None
            mine = self.records
            for path in self.touched:
                if path in mine:
                    now[path] = mine[path]
                else:
                    now.pop(path, None)
            self.records = now
            document = {"format": FORMAT, "files": now}
            listings = dict(listings) if type(listings) is dict else {}
            if self.new_listing is not None:
                listings[self.new_listing[0]] = self.new_listing
                if len(listings) > _LISTINGS:  # the newest kept (a malformed one first to go)
                    listings = dict(sorted(listings.items(), key=_stored)[-_LISTINGS:])
            if listings:
                document["listings"] = listings
            data = json.dumps(document, separators=(",", ":")).encode()
            if len(data) <= _MAX_INDEX_BYTES:
                replace_private_file(dir_fd, self.name, data)
                self.touched, self.new_listing = set(), None
        except Exception:
            return


def _stored(item: tuple[str, Any]) -> int:
    """When a listing record (``(key, record)``) was stored; -1 for a malformed one."""
    record = item[1]
    return record[1] if type(record) is list and len(record) > 1 and type(record[1]) is int else -1
