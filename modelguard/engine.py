"""The verify engine: check a model directory against a :class:`Manifest`, and explain
every failure.

Cheapest test first: exists -> regular file -> size -> content sniff -> digests.
All digests a file needs come from one read of it; files whose bytes must be read are
hashed in parallel (:func:`modelguard.hashing.run_parallel`). Which manifest and which
directory apply is decided before, by :mod:`modelguard.resolve`.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import UsageError
from .fs import (access_detail, containing_roots, file_type_name, human_size, linked_file, opened_path,
                 within, zero_region)
from .diagnosis import wrong_size
from .hflisting import remedy as download_again
from .hashing import FileChangedError, big_files, hash_fd, run_parallel, stat_key, usable_cpus, worth_a_pipeline
from .manifest import DIGEST_ALGORITHMS, FileEntry, Manifest
from .pieces import CHUNKED
from .quickpath import batches, read_batch
from .readplan import manifest_order
from .unlisted import unlisted_files
from .remedy import fetch_command
from .report import FAILED, OK, SKIPPED, FileResult, VerifyReport, new_file_result
from .sniff import SNIFF_BYTES, article, first_line, parse_lfs_pointer, sniff_error_page
from .statcache import open_cache
from .statindex import folder_view

_O_READ = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


# --------------------------------------------------------------------------- engine


class _Checker:
    def __init__(
        self,
        manifest: Manifest,
        directory: Path,
        *,
        all_digests: bool,
        cache: Any,
        remedy: Callable[[FileEntry, str], str | None],
        progress: Callable[[int], None] | None,
        rehash: bool | None = None,
    ) -> None:
        self.manifest = manifest
        self.directory = directory
        self.roots = containing_roots(directory)
        self.root_text = os.fspath(self.roots[0]).rstrip(os.sep)
        self._dir_text = os.fspath(directory)
        self.plain_dirs: set[str] = set()  # folders below the root found to be plain folders
        self.link_folders: dict = {}  # fs.linked_file's folders, for this verify
        self.folder_fds: dict[str, int] = {}  # blob folders opened for quickpath's reads (-1: not to be)
        self.all_digests = all_digests
        # the cache first: a cache argument refused leaves no folder open
        self.cache = folder_view(open_cache(cache, rehash=rehash), self.root_text)
        try:  # files straight in the model folder are opened relative to it
            self.root_fd: int | None = os.open(self.root_text, _O_READ | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            self.root_fd = None
        self.remedy = remedy
        self.progress = progress
        self.listing: list[os.DirEntry] | None = None  # the model folder's entries, when listed
        self.listing_stat: os.stat_result | None = None  # the folder's stat, taken before
        # the reader threads, the cores they run on and the sizes of the big files they read
        # (hashing.worth_a_pipeline)
        self.readers, self.cores, self.big = 1, 1, ()

    def close(self) -> None:
        fd, self.root_fd = self.root_fd, None
        if fd is not None:
            os.close(fd)
        fds, self.folder_fds = self.folder_fds, {}
        for fd in fds.values():
            if fd >= 0:
                os.close(fd)

    def result(self, entry: FileEntry, diagnosis: str, message: str, *, status: str = FAILED,
               expected: Mapping[str, Any] | None = None, actual: Mapping[str, Any] | None = None,
               remedy: str | None = None, cached: bool = False) -> FileResult:
        comp = self.manifest.components[entry.component]
        if expected is None:
            expected = {"size": entry.size, **entry.digests} if entry.size is not None else dict(entry.digests)
        if status == FAILED and remedy is None:
            remedy = self.remedy(entry, diagnosis)
        return new_file_result(entry.path, entry.component, comp.required, status, diagnosis, message, expected,
                               actual or {}, remedy, cached)

    def algorithms_for(self, entry: FileEntry) -> tuple[str, ...]:
        # a file with chunk digests is verified by them (every core), or by every digest
        chunked = (CHUNKED,) if entry.chunks is not None else ()
        if self.all_digests:
            return tuple(a for a in DIGEST_ALGORITHMS if a in entry.digests) + chunked
        return chunked or (entry.strongest_digest[0],)

    def check(self, entry: FileEntry, *, hash_content: bool = True, use_cache: bool = True) -> FileResult | None:
        """The result for ``entry``. With ``hash_content=False``, None when only reading
        the file could tell (no cache hit); ``use_cache=False`` skips the cache lookup."""
        located = self.locate(entry, use_cache=use_cache)
        if isinstance(located, FileResult):
            return located
        return self.read_and_compare(entry, *located) if hash_content else None

    def locate(self, entry: FileEntry, *, use_cache: bool = True) -> FileResult | tuple[Path, Path]:
        """Every check that needs no read of the content (links, existence, type, cache
        hit): a result, or ``(path, resolved path)`` of a file whose bytes must be read."""
        plain = self.plain_file(entry.path)
        if plain is not None:
            resolved, st = plain
            return self._cached_or_read(entry, None, resolved, st, use_cache)
        path = self.directory / entry.path
        folder = entry.path.rpartition("/")[0]
        if not folder or folder in self.plain_dirs:  # a link in a plain folder, to a file within the roots
            linked = linked_file(f"{self.root_text}{os.sep}{entry.path}", self.roots, self.link_folders)
            if linked is not None:
                return self._cached_or_read(entry, path, linked[0], linked[1], use_cache)
        # Symlinks: a link may only resolve inside the model directory (or, for a
        # Hugging Face cache snapshot, into that repository's blobs folder).
        try:
            resolved = path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:
            return self.result(entry, "unreadable", f"path cannot be resolved: {exc}")
        if not within(resolved, self.roots):
            return self.result(
                entry, "symlink_escape",
                f"links outside the model directory (to {resolved}); not followed",
                actual={"resolves_to": str(resolved)},
                remedy=f"replace {path} with the real file; modelguard does not follow links out of the model directory",
            )
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self._missing(entry, path)
        except NotADirectoryError:
            return self._missing(entry, path)
        except PermissionError:
            return self.result(entry, "unreadable",
                               "permission denied: a folder on its path cannot be searched by this user",
                               remedy=f"make the folders of {path} searchable (chmod +x) by this user, then verify again")
        except OSError as exc:
            return self.result(entry, "unreadable", f"cannot stat: {exc.strerror}")
        if not stat.S_ISREG(st.st_mode):
            kind = file_type_name(st.st_mode)
            return self.result(
                entry, "not_a_file", f"is a {kind}, not a regular file; not opened",
                actual={"type": kind}, remedy=f"replace {path} with the real file",
            )
        return self._cached_or_read(entry, path, resolved, st, use_cache)

    def regular_names(self) -> frozenset[str]:
        """Names straight in the model folder that its listing says are regular files (the
        file type the directory entry holds: no stat per file); empty when it cannot be listed.
        The listing is kept (:attr:`listing`): the search for files the manifest does not list
        starts from it instead of listing the folder again."""
        if self.root_fd is None:
            return frozenset()
        try:
            self.listing_stat = os.fstat(self.root_fd)
            with os.scandir(self.root_fd) as listing:
                self.listing = list(listing)
        except OSError:
            return frozenset()
        return frozenset([e.name for e in self.listing if e.is_file(follow_symlinks=False)])

    def plain_file(self, relative: str) -> tuple[str, os.stat_result] | None:
        """``(resolved path, stat)`` of a regular file reached from the resolved model
        directory through no symlink (then its real path needs no resolving): one lstat per
        path component, each folder once per verify. None when anything differs; the general
        way then decides."""
        folder, _, name = relative.rpartition("/")
        if folder and folder not in self.plain_dirs:
            current = self.root_text
            for part in folder.split("/"):
                if part in ("", ".", ".."):
                    return None
                current = current + os.sep + part
                try:
                    if not stat.S_ISDIR(os.lstat(current).st_mode):
                        return None
                except OSError:
                    return None
            self.plain_dirs.add(folder)
        if name in ("", ".", ".."):
            return None
        path = f"{self.root_text}{os.sep}{relative}"
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return (path, st) if stat.S_ISREG(st.st_mode) else None

    def _cached_or_read(self, entry: FileEntry, path: Path | None, resolved: str | Path, st: os.stat_result,
                        use_cache: bool) -> FileResult | tuple[str | Path, str | Path]:
        if use_cache and entry.size in (None, st.st_size):
            hit = self.cache.lookup(resolved, st, self.algorithms_for(entry))
            if hit is not None:
                for algorithm, value in hit.items():
                    if entry.expected_digest(algorithm) != value:
                        break
                else:
                    return self._ok(entry, st.st_size, hit, True)
                # a mismatch is diagnosed from the bytes themselves (zero fill, error page)
        return path, resolved

    def read_and_compare(self, entry: FileEntry, path: Path | None, resolved: str | Path) -> FileResult:
        """Open, size, content sniff and digests of a file :meth:`locate` passed on (``path``
        None: a file reached through no link, ``resolved`` its path)."""
        shown = os.path.join(self._dir_text, entry.path) if path is None else path
        # A file straight in the model folder is opened relative to it without following a
        # link: it is inside whatever happened since locate(), with nothing to resolve.
        direct = path is None and self.root_fd is not None and "/" not in entry.path
        try:
            if direct:
                fd = os.open(entry.path, _O_READ | getattr(os, "O_NOFOLLOW", 0), dir_fd=self.root_fd)
            else:
                fd = os.open(shown, _O_READ)
        except PermissionError:
            return self.result(entry, "unreadable", "permission denied: this user cannot read it" + access_detail(shown),
                               remedy=f"make {shown} readable by this user (chmod/chown), then verify again")
        except OSError as exc:
            if direct and exc.errno == errno.ELOOP:  # became a link since locate(): judged as one
                located = self.locate(entry, use_cache=False)
                return located if isinstance(located, FileResult) else self.read_and_compare(entry, *located)
            return self.result(entry, "unreadable", f"cannot open: {exc.strerror}")
        try:
            # A link swapped between locate() and open() must not take the read outside.
            real = None if direct else opened_path(fd)
            if real is not None and not within(real, self.roots):
                return self.result(
                    entry, "symlink_escape",
                    f"links outside the model directory (to {real}, swapped while verifying); not read",
                    actual={"resolves_to": str(real)},
                    remedy=f"replace {shown} with the real file; modelguard does not follow links out of the model directory",
                )
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = file_type_name(st.st_mode)
                return self.result(entry, "not_a_file", f"is a {kind}, not a regular file", actual={"type": kind})
            if entry.size is not None and st.st_size != entry.size:
                return wrong_size(self, entry, fd, st.st_size)
            pieces: list[str] = []
            try:
                digests = hash_fd(fd, self.algorithms_for(entry), progress=self.progress, stat_before=st,
                                  piece_size=entry.piece_size, pieces=pieces,
                                  threads=worth_a_pipeline(st.st_size, self.big, self.readers, self.cores))
            except FileChangedError as exc:
                return self.result(entry, "changed_while_reading", f"{exc}; not verified",
                                   remedy="wait until whatever is writing the file has finished, then verify again")
            except OSError as exc:
                return self.result(entry, "unreadable", f"read error: {exc.strerror or exc}")
            try:  # the path must still name the file that was read (not renamed over or removed)
                now = stat_key(os.stat(entry.path, dir_fd=self.root_fd, follow_symlinks=False) if direct
                               else os.stat(shown))
            except OSError:
                now = None
            if now != stat_key(st):
                return self.result(entry, "changed_while_reading",
                                   "replaced or removed while it was read; not verified",
                                   remedy="wait until whatever is writing the file has finished, then verify again")
            result = self._compare(entry, st.st_size, digests, fd, pieces=pieces)
            if result.ok:
                self.cache.store(resolved, st, digests)
            return result
        finally:
            os.close(fd)

    def _missing(self, entry: FileEntry, path: Path) -> FileResult:
        comp = self.manifest.components[entry.component]
        if not comp.required:
            return self.result(
                entry, "optional_missing", f"not present (optional component '{entry.component}')",
                status=SKIPPED, actual={"exists": False},
            )
        if path.is_symlink():
            return self.result(entry, "missing", f"dangling symlink (points to {os.readlink(path)})",
                               actual={"exists": False})
        return self.result(entry, "missing",
                           f"missing: not in {self.directory} (required component '{entry.component}')",
                           actual={"exists": False})

    def _ok(self, entry: FileEntry, size: int, digests: Mapping[str, str], cached: bool) -> FileResult:
        # the result built directly: a warm verify builds one per file
        expected = {"size": entry.size, **entry.digests} if entry.size is not None else dict(entry.digests)
        return new_file_result(entry.path, entry.component, self.manifest.components[entry.component].required, OK,
                               "ok", f"ok ({human_size(size)}, {'+'.join(digests)}{', cached' if cached else ''})",
                               expected, {"size": size, **digests}, None, cached)

    def _compare(self, entry: FileEntry, size: int, digests: Mapping[str, str], fd: int | None,
                 cached: bool = False, pieces: list[str] | None = None) -> FileResult:
        mismatched = {a: v for a, v in digests.items() if entry.expected_digest(a) != v}
        if not mismatched:
            return self._ok(entry, size, digests, cached)
        actual: dict[str, Any] = {"size": size, **digests}
        detail = "; ".join(f"{a}: expected {entry.expected_digest(a)}, got {v}" for a, v in mismatched.items()
                           if a != CHUNKED)
        if CHUNKED in mismatched and entry.chunks is not None and pieces:
            actual["chunks_differ"], told = entry.chunks.differences(pieces, size)
            detail = "; ".join(filter(None, [detail, told]))
        if fd is not None and entry.size is None:
            # No size to compare first (expectations from content addresses): tell the stub,
            # the empty file and the error page apart by their bytes.
            if size == 0:
                return self.result(entry, "empty", f"is empty (0 bytes); {detail}", actual=actual)
            pointer = parse_lfs_pointer(os.pread(fd, SNIFF_BYTES, 0))
            if pointer is not None:
                actual["lfs_oid_sha256"] = pointer["oid_sha256"]
                actual["lfs_size"] = pointer["size"]
                same = pointer["oid_sha256"] == entry.digests.get("sha256")
                return self.result(
                    entry, "lfs_pointer",
                    f"is a Git LFS pointer stub ({size} bytes), not the file"
                    + ("" if same else f" (it points to oid {pointer['oid_sha256']}, size {pointer['size']})"),
                    actual=actual,
                )
        sized = "right size but " if entry.size is not None else ""
        if fd is not None and size > 0:
            zero_from = zero_region(fd, size)
            if zero_from == 0:
                actual["content"] = "all zero bytes"
                return self.result(entry, "zero_filled",
                                   f"{sized}every byte is zero (a preallocated or wiped file); {detail}",
                                   actual=actual)
            if zero_from is not None and size - zero_from >= min(4096, size // 2):
                actual["zero_from"] = zero_from
                return self.result(
                    entry, "zero_filled",
                    f"{sized}bytes {zero_from}..{size} are zero: a preallocated download that did not "
                    f"finish ({100.0 * zero_from / size:.1f}% written); {detail}",
                    actual=actual,
                )
            head = os.pread(fd, SNIFF_BYTES, 0)
            page = sniff_error_page(head)
            if page is not None and not (page == "JSON" and entry.path.endswith(".json")):
                actual["content"] = f"{page} error page"
                return self.result(entry, "error_page",
                                   f"is {article(page)} {page} error page saved in place of the file "
                                   f"(starts: {first_line(head)!r}); {detail}", actual=actual)
        return self.result(
            entry, "digest_mismatch",
            f"{'right size, ' if entry.size is not None else ''}wrong content: {detail}", actual=actual,
        )



def default_remedy(manifest: Manifest, directory: Path) -> Callable[[FileEntry, str], str | None]:
    """The command that repairs a broken file of ``manifest`` in ``directory``."""

    def remedy(entry: FileEntry, diagnosis: str) -> str | None:
        if diagnosis in ("changed_while_reading",):
            return None
        if manifest.origin != "manifest":
            return download_again(manifest, directory)
        if "/" not in manifest.model:
            return f"restore {entry.path} from the source the manifest was built from"
        # a snapshot named by a relative path or through a link is fetched into the cache too
        snapshot = Path(directory).resolve().parent.name == "snapshots"  # only for a failure
        return fetch_command(manifest.model, manifest.revision, local_dir=None if snapshot else directory)

    return remedy


def verify_directory(
    manifest: Manifest,
    directory: str | os.PathLike[str],
    *,
    components: Iterable[str] | None = None,
    strict_extra: bool = False,
    all_digests: bool = False,
    cache: Any = True,
    rehash: bool | None = None,
    progress: Callable[[int], None] | None = None,
    max_workers: int | None = None,
) -> VerifyReport:
    """Verify ``directory`` against ``manifest`` and return a frozen report.

    ``components`` limits the check to those components; ``strict_extra`` makes
    files absent from the manifest a failure; ``all_digests`` checks every digest
    listed instead of the pieces' sha256 (an entry with ``chunks``) or the strongest one. ``cache``: True (default) remembers the digests of
    files that verified in the user's durable cache (:mod:`modelguard.statcache`) so an
    unchanged file later costs a stat; False re-hashes every file; a directory uses a cache
    there; or any object with ``lookup(path, stat, algorithms)`` / ``store(path, stat, digests)``.
    ``rehash=True`` (default: ``MODELGUARD_REHASH``) hashes every file in full whatever the
    cache holds, and stores what verifies.
    Files are hashed in parallel threads (``max_workers``), largest first.
    """
    start = time.perf_counter()
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(
            f"model directory {root} does not exist" if not root.exists() else f"{root} is not a directory",
            path=root, expected="a directory holding the model's files",
            remedy=(f"download the model first: {fetch_command(manifest.model, manifest.revision, local_dir=root)}"
                    if "/" in manifest.model else None),
        )
    if components is not None:
        wanted = set(components)
        unknown = wanted - set(manifest.components)
        if unknown:
            raise UsageError(
                f"unknown component(s) {', '.join(sorted(unknown))} for {manifest.model}",
                expected="one of: " + ", ".join(manifest.components), actual=", ".join(sorted(unknown)),
            )
    checker = _Checker(
        manifest, root, all_digests=all_digests, cache=cache, rehash=rehash,
        remedy=default_remedy(manifest, root), progress=progress,
    )
    # Every check that needs no read (missing, wrong type, cache hit) runs in this thread:
    # an unchanged model costs a stat per file and starts no thread. A file whose bytes
    # must be read goes at once to the reader threads (hashlib releases the GIL), so these
    # checks overlap the hashing; largest files first so the readers do not end on one big file.
    # Small files go to a reader in batches (quickpath.batches), each file read once.
    results: dict[str, FileResult] = {}
    order = manifest_order(manifest, None if components is None else frozenset(wanted))

    cores = usable_cpus()
    workers = max_workers or min(len(order.by_size), cores, 8) or 1
    checker.readers, checker.cores = workers, cores
    checker.big = big_files(e.size for e in order.by_size)
    try:
        # files the folder's digest index answers cost an lstat each (quickpath.cached_hits); a
        # small regular file straight in the folder goes to a reader as the folder's listing names it
        extra: list[tuple[str, ...]] = [()]

        def unlisted() -> None:  # while the readers read; the folder still open (its listing's entries need it)
            if components is None:
                extra[0] = unlisted_files(checker, root, order.paths)

        run_parallel(batches(checker, order, results), lambda batch: read_batch(checker, batch, results),
                     workers=workers, thread_name="modelguard-verify", meanwhile=unlisted)
    finally:
        checker.close()
        finish = getattr(checker.cache, "finish", None)
        if finish is not None:
            finish()  # the folder's digest index, when this verify changed it
    ordered = tuple(map(results.__getitem__, order.by_path))
    return VerifyReport(
        model=manifest.model, revision=manifest.revision, directory=str(root),
        manifest_source=manifest.source, files=ordered, extra_files=extra[0],
        strict_extra=strict_extra, elapsed_s=time.perf_counter() - start, expectations=manifest.origin,
    )
