"""A durable cache of verified digests, keyed on what ``stat`` says about a file.

After a file verifies, its digests are remembered under its real path (a link's: its
target's) and (device, inode, size, mtime_ns, ctime_ns). A later verify of the same
unchanged file costs a stat (its folder's index is read once per verify) instead of hashing
gigabytes. Rewriting a file through
``write()`` changes its ctime, replacing it changes its inode, and neither can be set back
(short of changing the system clock), so restoring size and mtime (``os.utime``) does not
fool the key.

What the key cannot see: bytes changed through a writable shared memory map whose pages
were already dirty (the kernel updates the times only on the first write fault), and
silent corruption by the disk (bit rot). Entries therefore expire: after
:data:`DEFAULT_MAX_AGE_S` (a week; ``$MODELGUARD_CACHE_MAX_AGE``) the file is hashed in
full again. ``rehash=True`` (``verify --rehash``, ``install(rehash=True)``,
``MODELGUARD_REHASH=1``) ignores every entry, and still stores fresh ones.

Trust: the cache believes entries that only this user could have written. Every folder
it creates is made 0700 whatever the umask; the root, ``digests`` and ``v1`` folders are
opened one by one (no symlink followed below the root) and each must be owned by this
user and not writable by group or others, else the cache is not used. Entries are opened
relative to that opened folder, without following links and without blocking, and only a
regular file owned by this user is read: a link, FIFO, device or folder is a miss. A
process running as the same user can still forge entries; nothing in a per-user cache
can stop that.

Anything unreadable, corrupt, expired, from another format version or for another stat
key is a miss: never an error, never a pass. A file whose timestamps are younger than
:data:`RACY_WINDOW_NS` is not stored: file systems keep timestamps at a coarse tick
(a few ms on Linux, 2 s on FAT), and a write later in the same tick would leave the key
unchanged (git's "racily clean" problem).

Store: one small JSON file per entry, named by the sha256 of the file's path, in
``<cache dir>/digests/v1/``, written to a temporary file and renamed into place (what
:meth:`StatCache.store` writes: ``lock add`` stores that way); a verify stores instead into its
model folder's index (:mod:`modelguard.statindex`), written once per verify and read once
per verify, and reads an entry only where that index has no record.
Not sqlite: its WAL mode needs shared memory that network file systems (NFS home
directories on clusters) do not give, while ``rename`` is atomic on every POSIX file
system, so several processes can read and write without a lock and a reader sees a whole
old entry or a whole new one; a damaged entry costs that entry only; and importing
``sqlite3`` would cost more than the whole warm verify. The last writer of an entry wins,
which is fine: every writer stores digests it has just checked.

Cache dir: ``$MODELGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelguard``, else
``~/.cache/modelguard``. ``MODELGUARD_NO_CACHE=1`` turns the default cache off.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from .env import ENV_NO_CACHE, env_flag, rehash_by_env
from .errors import UsageError
from .hashing import stat_key
from .pieces import CHUNKED
from .private_dirs import O_NOFOLLOW, open_private_chain, owned_by_us, replace_private_file

FORMAT_VERSION = 1
RACY_WINDOW_NS = 2_000_000_000
DEFAULT_MAX_AGE_S = 7 * 24 * 3600
ENV_CACHE_DIR = "MODELGUARD_CACHE_DIR"
ENV_MAX_AGE = "MODELGUARD_CACHE_MAX_AGE"
DIGEST_LENGTHS = {"md5": 32, "sha256": 64, "git_sha1": 40, CHUNKED: 64}
HEX = frozenset("0123456789abcdef")
_MAX_ENTRY_BYTES = 64 * 1024
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_O_ENTRY = (os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
            | getattr(os, "O_CLOEXEC", 0))


def _expand(name: str, value: str) -> Path:
    try:
        return Path(value).expanduser()
    except RuntimeError:  # '~nosuchuser/...', or '~' with no home directory
        raise UsageError(
            f"${name}={value!r} names a home directory that does not exist",
            expected="a folder path, e.g. ~/.cache/modelguard or /var/cache/modelguard",
            actual=value,
            remedy=f"export {name}=/path/to/folder  (or unset it for the default)",
        ) from None


def default_cache_dir() -> Path | None:
    """``$MODELGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelguard``, else ``~/.cache/modelguard``.

    None when there is no home directory to put it in (no cache is used, with a warning);
    a variable naming a home that does not exist (``~nosuchuser/x``) is a UsageError.
    """
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return _expand(ENV_CACHE_DIR, explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return _expand("XDG_CACHE_HOME", xdg) / "modelguard"
    try:
        return Path.home() / ".cache" / "modelguard"
    except (RuntimeError, KeyError):
        import warnings

        warnings.warn(
            f"modelguard: no home directory for this user, so the verified-digest cache is off "
            f"(every file is hashed in full); set {ENV_CACHE_DIR} to a folder to turn it on",
            RuntimeWarning, stacklevel=3,
        )
        return None


def cache_disabled_by_env() -> bool:
    return env_flag(ENV_NO_CACHE)


def parse_max_age(text: str, *, source: str = ENV_MAX_AGE) -> float:
    """Seconds from ``"604800"``, ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"`` or ``"2w"``."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UsageError(
            f"{source}={text!r} is not a cache lifetime",
            expected="a number of seconds, or a number followed by s, m, h, d or w (e.g. 7d)",
            actual=text, remedy=f"export {ENV_MAX_AGE}=7d  (or unset it for the default, a week)",
        )
    return value


def max_age_from_env() -> float:
    raw = os.environ.get(ENV_MAX_AGE)
    if raw is None or not raw.strip():
        return float(DEFAULT_MAX_AGE_S)
    return parse_max_age(raw, source="$" + ENV_MAX_AGE)


class NoCache:
    """The cache that remembers nothing (``verify(..., cache=False)``)."""

    enabled = False

    def lookup(self, path: Any, st: os.stat_result, algorithms: Iterable[str]) -> dict[str, str] | None:
        return None

    def store(self, path: Any, st: os.stat_result, digests: Mapping[str, str]) -> None:
        return None


class StatCache:
    """Verified digests by (absolute path, device, inode, size, mtime_ns, ctime_ns).

    ``directory`` is the cache root (default :func:`default_cache_dir`); entries live in
    ``directory/digests/v1``. ``racy_window_ns``: files modified more recently than this
    are not stored. ``max_age_s``: entries older than this are a miss (default
    ``$MODELGUARD_CACHE_MAX_AGE`` or a week), so the file is hashed in full again.
    ``rehash``: every lookup is a miss; files that verify are still stored.
    ``index_settle_ns``: entries younger than this are left out of a folder's index
    (:mod:`modelguard.statindex`).
    A store folder owned by another user, or writable by group or others, is not used
    (anyone who can write it could make a changed file pass).
    """

    enabled = True

    def __init__(self, directory: str | os.PathLike[str] | None = None, *,
                 racy_window_ns: int = RACY_WINDOW_NS, max_age_s: float | None = None,
                 rehash: bool = False, index_settle_ns: int = RACY_WINDOW_NS) -> None:
        root = Path(directory) if directory is not None else default_cache_dir()
        self.root = root
        self.entries = None if root is None else root / "digests" / f"v{FORMAT_VERSION}"
        self.racy_window_ns = racy_window_ns
        self.max_age_s = max_age_from_env() if max_age_s is None else float(max_age_s)
        self.rehash = rehash
        self.index_settle_ns = index_settle_ns  # entries younger than this stay out of a folder index
        self._fd: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StatCache({str(self.root)!r})"

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the store folder (reopened, and checked again, on the next use)."""
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _key_path(path: Any) -> str:
        # abspath, not realpath: no syscalls, and safe because the stat key already pins
        # the file a path leads to (a retargeted link or folder gives another inode/ctime).
        # verify() passes paths it has already resolved.
        return os.path.abspath(os.fspath(path))

    @staticmethod
    def _entry_name(real: str) -> str:
        import hashlib

        return hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest() + ".json"

    def _entry_file(self, real: str) -> str:
        return os.path.join(self.entries, self._entry_name(real))

    def store_fd(self, create: bool) -> int | None:
        """An open descriptor of the entries folder when it, ``digests`` and the root are
        all this user's alone; None otherwise (the cache is then not used)."""
        if self._fd is not None:
            return self._fd
        if self.root is None:
            return None
        with self._lock:
            if self._fd is None:
                self._fd = open_private_chain(self.root, ("digests", f"v{FORMAT_VERSION}"), create)
            return self._fd

    def read_entry(self, dir_fd: int, name: str) -> tuple[dict, os.stat_result] | None:
        """``(parsed entry, its stat)`` of entry ``name``, or None: only a regular file of this
        user's is read, opened without following a link and without blocking (a FIFO is not
        waited on)."""
        try:
            fd = os.open(name, _O_ENTRY, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not owned_by_us(st) or st.st_mode & 0o022:
                return None
            if st.st_size > _MAX_ENTRY_BYTES:
                return None
            raw = os.read(fd, _MAX_ENTRY_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > _MAX_ENTRY_BYTES:
            return None
        import json

        entry = json.loads(raw)
        if not isinstance(entry, dict) or entry.get("format") != FORMAT_VERSION:
            return None
        return entry, st

    def _fresh(self, entry: Mapping[str, Any]) -> bool:
        stored = entry.get("stored_at_ns")
        if not isinstance(stored, int) or isinstance(stored, bool):
            return False
        age_ns = time.time_ns() - stored
        # an entry from the future (a clock set back) is not trusted either
        return -60 * 10**9 <= age_ns <= self.max_age_s * 1e9

    # ------------------------------------------------------------------ API

    def lookup(self, path: Any, st: os.stat_result, algorithms: Iterable[str]) -> dict[str, str] | None:
        """The cached digests for ``algorithms`` when ``st`` is the stat they were stored
        under and the entry has not expired, else None (a miss). Never raises for a bad
        or missing store."""
        return self.lookup_entry(path, st, algorithms)[0]

    def lookup_entry(self, path: Any, st: os.stat_result, algorithms: Iterable[str]) -> tuple[Any, Any]:
        """``(digests or None, (entry file's stat, entry) or None)``: :meth:`lookup`,
        plus the entry file it read (for :mod:`modelguard.statindex`)."""
        if self.rehash:
            return None, None
        try:
            dir_fd = self.store_fd(create=False)
            if dir_fd is None:
                return None, None
            real = self._key_path(path)
            name = self._entry_name(real)
            read = self.read_entry(dir_fd, name)
            if read is None:
                return None, None
            entry, entry_st = read
            if not self._fresh(entry) or entry.get("path") != real or entry.get("key") != list(stat_key(st)):
                return None, None
            digests = entry.get("digests")
            if not isinstance(digests, dict):
                return None, None
            out = {}
            for algorithm in algorithms:
                value = digests.get(algorithm)
                if not valid_digest(algorithm, value):
                    return None, None
                out[algorithm] = value
            return out or None, (entry_st, entry)
        except Exception:  # a cache never fails a verification: anything odd is a miss
            return None, None

    def store(self, path: Any, st: os.stat_result, digests: Mapping[str, str]) -> None:
        """Remember ``digests`` (of content that verified) for the file at ``path`` whose
        stat before reading was ``st``. Skipped, silently, when the file is too recently
        modified, has changed since ``st``, or the store cannot be written."""
        try:
            if not digests or not all(valid_digest(a, v) for a, v in digests.items()):
                return
            newest = max(st.st_mtime_ns, st.st_ctime_ns)
            if time.time_ns() - newest < self.racy_window_ns:
                return
            real = self._key_path(path)
            now = os.stat(real)
            if stat_key(now) != stat_key(st):
                return
            dir_fd = self.store_fd(create=True)
            if dir_fd is None:
                return
            name = self._entry_name(real)
            merged = dict(digests)
            previous = self._read_same_key(dir_fd, name, real, st)
            if previous:
                merged = {**previous, **merged}
            import json

            document = {
                "format": FORMAT_VERSION, "path": real, "key": list(stat_key(st)),
                "digests": dict(sorted(merged.items())), "stored_at_ns": time.time_ns(),
            }
            replace_private_file(dir_fd, name, json.dumps(document).encode("utf-8"))
        except Exception:
            return

    def _read_same_key(self, dir_fd: int, name: str, real: str, st: os.stat_result) -> dict[str, str] | None:
        """Digests already stored for this very key and not expired (to keep md5 when
        sha256 is added)."""
        try:
            read = self.read_entry(dir_fd, name)
            entry = read[0] if read is not None else None
            if (entry is not None and self._fresh(entry) and entry.get("path") == real
                    and entry.get("key") == list(stat_key(st))):
                return {a: v for a, v in entry["digests"].items() if valid_digest(a, v)}
        except Exception:
            return None
        return None

    def clear(self) -> int:
        """Remove every entry of this format version; returns how many were removed."""
        removed = 0
        dir_fd = self.store_fd(create=False)
        if dir_fd is None:
            return 0
        try:
            names = os.listdir(dir_fd)
        except OSError:
            return 0
        for name in names:
            if name.endswith((".json", ".idx")):
                try:
                    os.unlink(name, dir_fd=dir_fd)
                    removed += 1
                except OSError:
                    pass
        return removed


def valid_digest(algorithm: Any, value: Any) -> bool:
    length = DIGEST_LENGTHS.get(algorithm)
    return length is not None and isinstance(value, str) and len(value) == length and HEX.issuperset(value)


def open_cache(cache: Any, *, rehash: bool | None = None) -> Any:
    """What ``verify(cache=...)`` accepts, as an object with ``lookup``/``store``.

    ``True`` (the default): the user's :class:`StatCache`, unless ``MODELGUARD_NO_CACHE`` is
    set; ``False``/``None``: a :class:`NoCache`; a path: a :class:`StatCache` rooted there;
    anything else with ``lookup`` and ``store`` (a NoCache too): used as is. ``rehash=True``
    (``None``: whether ``MODELGUARD_REHASH`` is set): no lookup ever hits, so every file is
    hashed in full; what verifies is still stored.
    """
    if rehash is None:
        rehash = rehash_by_env()
    if cache is True:
        return NoCache() if cache_disabled_by_env() else StatCache(rehash=rehash)
    if cache is False or cache is None:
        return NoCache()
    if isinstance(cache, (str, os.PathLike)):
        return StatCache(cache, rehash=rehash)
    if callable(getattr(cache, "lookup", None)) and callable(getattr(cache, "store", None)):
        if isinstance(cache, NoCache):
            return cache
        if type(cache) is StatCache and rehash and not cache.rehash:  # the same store, nothing believed
            return StatCache(cache.root, racy_window_ns=cache.racy_window_ns, max_age_s=cache.max_age_s,
                             rehash=True, index_settle_ns=cache.index_settle_ns)
        return _StoreOnly(cache) if rehash and not getattr(cache, "rehash", False) else cache
    raise UsageError(
        f"cache must be True, False, a directory or an object with lookup() and store(), not {type(cache).__name__}",
        expected="True | False | path | cache object", actual=repr(cache)[:100],
        remedy="pass cache=False to re-hash every file, or leave the default",
    )


def resolve_cache(cache: Any, *, rehash: bool | None = None) -> Any:
    """Like :func:`open_cache`, but None where caching is off (the older form of the answer)."""
    opened = open_cache(cache, rehash=rehash)
    return None if isinstance(opened, NoCache) else opened


class _StoreOnly:
    """A cache whose lookups all miss (full re-hash) while stores go through."""

    rehash = True

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    def lookup(self, path: Any, st: os.stat_result, algorithms: Iterable[str]) -> dict[str, str] | None:
        return None

    def store(self, path: Any, st: os.stat_result, digests: Mapping[str, str]) -> None:
        self.cache.store(path, st, digests)
