"""A durable cache of verified digests, keyed on what ``stat`` says about a file.

After a file verifies, its digests are remembered under its absolute path and
(device, inode, size, mtime_ns, ctime_ns). A later verify of the same unchanged file
costs a stat and one small read instead of hashing gigabytes. Rewriting a file in place
changes its ctime, replacing it changes its inode, and neither can be set back (short of
changing the system clock), so restoring size and mtime (``os.utime``) does not fool the key.

Anything unreadable, corrupt, from another format version or for another stat key is a
miss: never an error, never a pass. A file whose timestamps are younger than
:data:`RACY_WINDOW_NS` is not stored: file systems keep timestamps at a coarse tick
(a few ms on Linux, 2 s on FAT), and a write later in the same tick would leave the key
unchanged (git's "racily clean" problem).

Store: one small JSON file per entry, named by the sha256 of the file's path, in
``<cache dir>/digests/v1/``, written to a temporary file and renamed into place.
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
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import UsageError
from .hashing import stat_key

FORMAT_VERSION = 1
RACY_WINDOW_NS = 2_000_000_000
_DIGEST_LENGTHS = {"md5": 32, "sha256": 64, "git_sha1": 40}
_HEX = frozenset("0123456789abcdef")
_MAX_ENTRY_BYTES = 64 * 1024


def default_cache_dir() -> Path:
    """``$MODELGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/modelguard``, else ``~/.cache/modelguard``."""
    explicit = os.environ.get("MODELGUARD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "modelguard"


def cache_disabled_by_env() -> bool:
    return os.environ.get("MODELGUARD_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")


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
    are not stored. A store directory owned by another user, or writable by group or
    others, is not used (anyone who can write it could make a changed file pass).
    """

    enabled = True

    def __init__(self, directory: str | os.PathLike[str] | None = None, *,
                 racy_window_ns: int = RACY_WINDOW_NS) -> None:
        root = Path(directory) if directory is not None else default_cache_dir()
        self.root = root
        self.entries = root / "digests" / f"v{FORMAT_VERSION}"
        self.racy_window_ns = racy_window_ns
        self._usable: bool | None = None

    def __repr__(self) -> str:
        return f"StatCache({str(self.root)!r})"

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _key_path(path: Any) -> str:
        # abspath, not realpath: no syscalls, and safe because the stat key already pins
        # the file a path leads to (a retargeted link or folder gives another inode/ctime).
        # verify() passes paths it has already resolved.
        return os.path.abspath(os.fspath(path))

    def _entry_file(self, real: str) -> str:
        import hashlib

        name = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()
        return os.path.join(self.entries, name + ".json")

    def _check_dir(self, create: bool) -> bool:
        """Whether the entries folder is ours alone (created with mode 0700 when ``create``)."""
        if self._usable:
            return True
        try:
            if create:
                os.makedirs(self.entries, mode=0o700, exist_ok=True)
            st = os.stat(self.entries)
        except OSError:
            return False
        getuid = getattr(os, "getuid", None)
        owned = getuid is None or st.st_uid == getuid()
        self._usable = owned and not (st.st_mode & 0o022)
        return self._usable

    # ------------------------------------------------------------------ API

    def lookup(self, path: Any, st: os.stat_result, algorithms: Iterable[str]) -> dict[str, str] | None:
        """The cached digests for ``algorithms`` when ``st`` is the stat they were stored
        under, else None (a miss). Never raises for a bad or missing store."""
        try:
            if not self._check_dir(create=False):
                return None
            real = self._key_path(path)
            with open(self._entry_file(real), "rb") as f:
                raw = f.read(_MAX_ENTRY_BYTES + 1)
            if len(raw) > _MAX_ENTRY_BYTES:
                return None
            import json

            entry = json.loads(raw)
            if not isinstance(entry, dict) or entry.get("format") != FORMAT_VERSION:
                return None
            if entry.get("path") != real or entry.get("key") != list(stat_key(st)):
                return None
            digests = entry.get("digests")
            if not isinstance(digests, dict):
                return None
            out = {}
            for algorithm in algorithms:
                value = digests.get(algorithm)
                if not _valid_digest(algorithm, value):
                    return None
                out[algorithm] = value
            return out or None
        except Exception:  # a cache never fails a verification: anything odd is a miss
            return None

    def store(self, path: Any, st: os.stat_result, digests: Mapping[str, str]) -> None:
        """Remember ``digests`` (of content that verified) for the file at ``path`` whose
        stat before reading was ``st``. Skipped, silently, when the file is too recently
        modified, has changed since ``st``, or the store cannot be written."""
        tmp = None
        try:
            if not digests or not all(_valid_digest(a, v) for a, v in digests.items()):
                return
            newest = max(st.st_mtime_ns, st.st_ctime_ns)
            if time.time_ns() - newest < self.racy_window_ns:
                return
            real = self._key_path(path)
            now = os.stat(real)
            if stat_key(now) != stat_key(st):
                return
            if not self._check_dir(create=True):
                return
            target = self._entry_file(real)
            merged = dict(digests)
            previous = self._read_same_key(target, real, st)
            if previous:
                merged = {**previous, **merged}
            import json
            import tempfile

            document = {
                "format": FORMAT_VERSION, "path": real, "key": list(stat_key(st)),
                "digests": dict(sorted(merged.items())), "stored_at_ns": time.time_ns(),
            }
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.entries)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(document, f)
            os.replace(tmp, target)
            tmp = None
        except Exception:
            return
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def _read_same_key(self, target: str, real: str, st: os.stat_result) -> dict[str, str] | None:
        """Digests already stored for this very key (to keep md5 when sha256 is added)."""
        try:
            import json

            with open(target, "rb") as f:
                entry = json.loads(f.read(_MAX_ENTRY_BYTES))
            if (entry.get("format") == FORMAT_VERSION and entry.get("path") == real
                    and entry.get("key") == list(stat_key(st))):
                return {a: v for a, v in entry["digests"].items() if _valid_digest(a, v)}
        except Exception:
            return None
        return None

    def clear(self) -> int:
        """Remove every entry of this format version; returns how many were removed."""
        removed = 0
        try:
            names = os.listdir(self.entries)
        except OSError:
            return 0
        for name in names:
            if name.endswith(".json"):
                try:
                    os.unlink(os.path.join(self.entries, name))
                    removed += 1
                except OSError:
                    pass
        return removed


def _valid_digest(algorithm: Any, value: Any) -> bool:
    length = _DIGEST_LENGTHS.get(algorithm)
    return length is not None and isinstance(value, str) and len(value) == length and _HEX.issuperset(value)


def open_cache(cache: Any) -> Any:
    """What ``verify(cache=...)`` accepts, as an object with ``lookup``/``store``.

    ``True`` (the default): the user's :class:`StatCache`, unless ``MODELGUARD_NO_CACHE`` is
    set; ``False``/``None``: a :class:`NoCache`; a path: a :class:`StatCache` rooted there;
    anything else with ``lookup`` and ``store`` (a NoCache too): used as is.
    """
    if cache is True:
        return NoCache() if cache_disabled_by_env() else StatCache()
    if cache is False or cache is None:
        return NoCache()
    if isinstance(cache, (str, os.PathLike)):
        return StatCache(cache)
    if callable(getattr(cache, "lookup", None)) and callable(getattr(cache, "store", None)):
        return cache
    raise UsageError(
        f"cache must be True, False, a directory or an object with lookup() and store(), not {type(cache).__name__}",
        expected="True | False | path | cache object", actual=repr(cache)[:100],
        remedy="pass cache=False to re-hash every file, or leave the default",
    )


def resolve_cache(cache: Any) -> Any:
    """Like :func:`open_cache`, but None where caching is off (the older form of the answer)."""
    opened = open_cache(cache)
    return None if isinstance(opened, NoCache) else opened
