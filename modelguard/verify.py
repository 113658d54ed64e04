"""Verify a model directory against a manifest, and explain every failure.

Cheapest test first: exists -> regular file -> size -> content sniff -> digests.
All digests a file needs come from one read of it.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import VerificationError
from .hashing import FileChangedError, hash_fd, usable_cpus
from .manifest import DIGEST_ALGORITHMS, FileEntry, Manifest

SNIFF_BYTES = 1024
LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
# Directories and files that belong to tools, not to the model.
IGNORED_NAMES = frozenset({".git", ".cache", "__pycache__", ".DS_Store", ".huggingface", ".locks"})
# Lock files and partial downloads left by download tools.
IGNORED_SUFFIXES = (".lock", ".incomplete")

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True)
class FileResult:
    """The outcome for one manifest file.

    ``status`` is ``ok``, ``failed`` or ``skipped`` (optional component absent);
    ``diagnosis`` a stable code (``ok``, ``missing``, ``empty``, ``truncated``,
    ``oversized``, ``lfs_pointer``, ``error_page``, ``zero_filled``,
    ``digest_mismatch``, ``unreadable``, ``not_a_file``, ``symlink_escape``,
    ``changed_while_reading``, ``optional_missing``).
    """

    path: str
    component: str
    required: bool
    status: str
    diagnosis: str
    message: str
    expected: Mapping[str, Any] = field(default_factory=dict)
    actual: Mapping[str, Any] = field(default_factory=dict)
    remedy: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "component": self.component,
            "required": self.required,
            "status": self.status,
            "diagnosis": self.diagnosis,
            "message": self.message,
            "expected": dict(self.expected),
            "actual": dict(self.actual),
            "remedy": self.remedy,
            "cached": self.cached,
        }


@dataclass(frozen=True)
class VerifyReport:
    """All file results of one verification, plus files the manifest does not list."""

    model: str
    revision: str | None
    directory: str
    manifest_source: str | None
    files: tuple[FileResult, ...]
    extra_files: tuple[str, ...] = ()
    strict_extra: bool = False
    elapsed_s: float = 0.0
    expectations: str = "manifest"

    @property
    def completeness_checked(self) -> bool:
        """False when the expectations could not say which files should exist (blob addresses)."""
        return self.expectations != "blob-addresses"

    @property
    def expectations_phrase(self) -> str:
        if self.expectations == "hub-listing":
            rev = f" of commit {self.revision[:12]}" if self.revision else ""
            return f"the Hub's listing{rev} saved at download"
        if self.expectations == "blob-addresses":
            return "their blobs' content addresses (completeness not checked)"
        return "the manifest"

    @property
    def _unlisted(self) -> str:
        if self.expectations == "blob-addresses":
            return "with no content address (plain files, not links to blobs)"
        return f"not in {self.expectations_phrase}"

    @property
    def failures(self) -> tuple[FileResult, ...]:
        return tuple(r for r in self.files if r.status == FAILED)

    @property
    def ok(self) -> bool:
        return not self.failures and not (self.strict_extra and self.extra_files)

    @property
    def failed_components(self) -> tuple[str, ...]:
        return tuple(sorted({r.component for r in self.failures}))

    @property
    def missing_optional_components(self) -> tuple[str, ...]:
        return tuple(sorted({r.component for r in self.files if r.status == SKIPPED}))

    def result(self, path: str) -> FileResult | None:
        for r in self.files:
            if r.path == path:
                return r
        return None

    def summary(self) -> str:
        n_ok = sum(r.status == OK for r in self.files)
        n_skipped = sum(r.status == SKIPPED for r in self.files)
        if self.ok:
            text = f"verified: {n_ok} file(s) of {self.model} match {self.expectations_phrase}"
            if n_skipped:
                text += f"; optional component(s) not present: {', '.join(self.missing_optional_components)}"
            return text
        parts = []
        if self.failures:
            parts.append(
                f"{len(self.failures)} of {len(self.files)} file(s) failed"
                f" (component(s): {', '.join(self.failed_components)})"
            )
        if self.strict_extra and self.extra_files:
            parts.append(f"{len(self.extra_files)} file(s) {self._unlisted}")
        return f"FAILED: {self.model}: " + "; ".join(parts)

    def raise_for_errors(self) -> None:
        """Raise :class:`VerificationError` describing every failure, if any."""
        if self.ok:
            return
        lines = [self.summary()]
        for r in self.failures:
            lines.append(f"  {r.path} [{r.component}]: {r.message}")
        for path in self.extra_files if self.strict_extra else ():
            lines.append(f"  {path}: {self._unlisted.replace('not in', 'not listed in')}")
        remedies = list(dict.fromkeys(r.remedy for r in self.failures if r.remedy))
        raise VerificationError(
            "\n".join(lines),
            report=self,
            path=self.directory,
            remedy="; ".join(remedies) if remedies else None,
        )

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return {
            "modelguard": __version__,
            "ok": self.ok,
            "model": self.model,
            "revision": self.revision,
            "directory": self.directory,
            "manifest": self.manifest_source,
            "summary": {
                "files": len(self.files),
                "ok": sum(r.status == OK for r in self.files),
                "failed": len(self.failures),
                "skipped": sum(r.status == SKIPPED for r in self.files),
                "extra": len(self.extra_files),
            },
            "failed_components": list(self.failed_components),
            "missing_optional_components": list(self.missing_optional_components),
            "files": [r.to_dict() for r in self.files],
            "extra_files": list(self.extra_files),
            "strict_extra": self.strict_extra,
            "elapsed_s": round(self.elapsed_s, 4),
            "expectations": {"origin": self.expectations, "source": self.manifest_source,
                             "completeness_checked": self.completeness_checked},
        }


# --------------------------------------------------------------------------- diagnosis helpers


def human_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{n} B"


def parse_lfs_pointer(head: bytes) -> dict[str, Any] | None:
    """The oid/size of a Git LFS pointer file's text, or None if it is not one."""
    if not head.startswith(LFS_PREFIX):
        return None
    text = head.decode("utf-8", "replace")
    oid = re.search(r"^oid sha256:([0-9a-f]{64})\s*$", text, re.M)
    size = re.search(r"^size (\d+)\s*$", text, re.M)
    return {"oid_sha256": oid.group(1) if oid else None, "size": int(size.group(1)) if size else None}


def sniff_error_page(head: bytes) -> str | None:
    """'HTML'/'JSON'/'XML' when ``head`` looks like a saved web error page."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "HTML"
    if stripped.startswith(b"<?xml") and b"<error" in stripped:
        return "XML"
    if stripped.startswith(b"{") and re.search(rb'"(error|errors|message|detail)"\s*:', stripped[:512]):
        # A server's error body is a small object such as {"error": "Repository not found"};
        # a config that merely has an "errors" key (GPT-2's tokenizer_config.json) is not one.
        import json

        try:
            body = json.loads(head.decode("utf-8"))
        except ValueError:
            return None
        keys = {k.lower() for k in body} if isinstance(body, dict) else set()
        if keys & {"error", "errors", "message", "detail"} and len(keys) <= 4:
            return "JSON"
    return None


def _article(word: str) -> str:
    return "an" if word[:1] in "AEFHILMNORSX" else "a"


def _first_line(head: bytes) -> str:
    text = head.decode("utf-8", "replace").strip()
    if "<title>" in text.lower():
        m = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        if m:
            return m.group(1).strip()[:100]
    return text.splitlines()[0][:100] if text else ""


def _zero_region(fd: int, size: int) -> int | None:
    """Offset where a trailing all-zero region starts, or None if the last byte is not zero.

    At memory speed, not byte by byte: a trailing hole (sparse or preallocated file) is found
    with ``SEEK_HOLE``/``SEEK_DATA`` and never read; the bytes before it are read backwards
    in large blocks, each compared with a block of zeros (a memcmp), and only the one block
    where the zeros end is searched for the last non-zero byte.
    """
    end = _trailing_hole(fd, size)
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


def _trailing_hole(fd: int, size: int) -> int | None:
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


def _containing_roots(directory: Path) -> list[Path]:
    """Directories a file may resolve into: the model dir, and for a HF cache
    snapshot, that repo's own blobs folder."""
    roots = [directory.resolve()]
    if directory.parent.name == "snapshots":
        roots.append((directory.parent.parent / "blobs").resolve())
    return roots


def _within(path: Path, roots: Iterable[Path]) -> bool:
    # On strings: ``root in path.parents`` builds a Path per level, and this runs twice per file.
    text = os.fspath(path)
    for root in roots:
        prefix = os.fspath(root)
        if text == prefix or text.startswith(prefix.rstrip(os.sep) + os.sep):
            return True
    return False


def opened_path(fd: int) -> Path | None:
    """The real path of the open file ``fd`` (Linux /proc), or None where it cannot be told."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return Path(target) if target.startswith("/") and not target.endswith(" (deleted)") else None


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
    ) -> None:
        self.manifest = manifest
        self.directory = directory
        self.roots = _containing_roots(directory)
        self._root_text = os.fspath(self.roots[0]).rstrip(os.sep)
        self.all_digests = all_digests
        self.cache = cache
        self.remedy = remedy
        self.progress = progress

    def result(self, entry: FileEntry, diagnosis: str, message: str, *, status: str = FAILED,
               expected: Mapping[str, Any] | None = None, actual: Mapping[str, Any] | None = None,
               remedy: str | None = None, cached: bool = False) -> FileResult:
        comp = self.manifest.components[entry.component]
        if expected is None:
            expected = {"size": entry.size, **entry.digests} if entry.size is not None else dict(entry.digests)
        if status == FAILED and remedy is None:
            remedy = self.remedy(entry, diagnosis)
        return FileResult(
            path=entry.path, component=entry.component, required=comp.required, status=status,
            diagnosis=diagnosis, message=message, expected=expected, actual=actual or {},
            remedy=remedy, cached=cached,
        )

    def algorithms_for(self, entry: FileEntry) -> tuple[str, ...]:
        if self.all_digests:
            return tuple(a for a in DIGEST_ALGORITHMS if a in entry.digests)
        return (entry.strongest_digest[0],)

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
        path = self.directory / entry.path
        plain = self._plain_file(entry.path)
        if plain is not None:
            resolved, st = plain
            return self._cached_or_read(entry, path, resolved, st, use_cache)
        # Symlinks: a link may only resolve inside the model directory (or, for a
        # Hugging Face cache snapshot, into that repository's blobs folder).
        try:
            resolved = path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:
            return self.result(entry, "unreadable", f"path cannot be resolved: {exc}")
        if not _within(resolved, self.roots):
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
            kind = _file_kind(st.st_mode)
            return self.result(
                entry, "not_a_file", f"is a {kind}, not a regular file; not opened",
                actual={"type": kind}, remedy=f"replace {path} with the real file",
            )
        return self._cached_or_read(entry, path, resolved, st, use_cache)

    def _plain_file(self, relative: str) -> tuple[Path, os.stat_result] | None:
        """``(resolved path, stat)`` of a regular file reached from the resolved model
        directory through no symlink (then its real path needs no resolving): one lstat per
        path component. None when anything differs; the general way then decides."""
        current = self._root_text
        parts = relative.split("/")
        try:
            for i, part in enumerate(parts):
                if part in ("", ".", ".."):
                    return None
                current = current + os.sep + part
                st = os.lstat(current)
                if not (stat.S_ISDIR(st.st_mode) if i < len(parts) - 1 else stat.S_ISREG(st.st_mode)):
                    return None
        except OSError:
            return None
        return Path(current), st

    def _cached_or_read(self, entry: FileEntry, path: Path, resolved: Path, st: os.stat_result,
                        use_cache: bool) -> FileResult | tuple[Path, Path]:
        if self.cache is not None and use_cache and entry.size in (None, st.st_size):
            hit = self.cache.lookup(resolved, st, self.algorithms_for(entry))
            if hit is not None:
                cached = self._compare(entry, st.st_size, hit, None, cached=True)
                if cached.ok:
                    return cached
                # a mismatch is diagnosed from the bytes themselves (zero fill, error page)
        return path, resolved

    def read_and_compare(self, entry: FileEntry, path: Path, resolved: Path) -> FileResult:
        """Open, size, content sniff and digests of a file :meth:`locate` passed on."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        except PermissionError:
            return self.result(entry, "unreadable", "permission denied: this user cannot read it" + _access_detail(path),
                               remedy=f"make {path} readable by this user (chmod/chown), then verify again")
        except OSError as exc:
            return self.result(entry, "unreadable", f"cannot open: {exc.strerror}")
        try:
            # A link swapped between locate() and open() must not take the read outside.
            real = opened_path(fd)
            if real is not None and not _within(real, self.roots):
                return self.result(
                    entry, "symlink_escape",
                    f"links outside the model directory (to {real}, swapped while verifying); not read",
                    actual={"resolves_to": str(real)},
                    remedy=f"replace {path} with the real file; modelguard does not follow links out of the model directory",
                )
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = _file_kind(st.st_mode)
                return self.result(entry, "not_a_file", f"is a {kind}, not a regular file", actual={"type": kind})
            if entry.size is not None and st.st_size != entry.size:
                return self._wrong_size(entry, fd, st.st_size)
            try:
                digests = hash_fd(fd, self.algorithms_for(entry), progress=self.progress, stat_before=st)
            except FileChangedError as exc:
                return self.result(entry, "changed_while_reading", f"{exc}; not verified",
                                   remedy="wait until whatever is writing the file has finished, then verify again")
            except OSError as exc:
                return self.result(entry, "unreadable", f"read error: {exc.strerror or exc}")
            from .hashing import stat_key

            try:  # the path must still name the file that was read (not renamed over or removed)
                now = stat_key(os.stat(path))
            except OSError:
                now = None
            if now != stat_key(st):
                return self.result(entry, "changed_while_reading",
                                   "replaced or removed while it was read; not verified",
                                   remedy="wait until whatever is writing the file has finished, then verify again")
            result = self._compare(entry, st.st_size, digests, fd)
            if result.ok and self.cache is not None:
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

    def _wrong_size(self, entry: FileEntry, fd: int, size: int) -> FileResult:
        from shlex import quote

        head = os.pread(fd, SNIFF_BYTES, 0)
        actual: dict[str, Any] = {"size": size}
        pointer = parse_lfs_pointer(head)
        if pointer is not None:
            actual["lfs_oid_sha256"] = pointer["oid_sha256"]
            actual["lfs_size"] = pointer["size"]
            expected_sha = entry.digests.get("sha256")
            if self.manifest.origin != "manifest":
                # A cache download, not a git clone: the fix is to download the file again.
                same = pointer["size"] == entry.size and pointer["oid_sha256"] == expected_sha
                return self.result(
                    entry, "lfs_pointer",
                    f"is a Git LFS pointer stub ({size} bytes), not the file"
                    + ("" if same else f" (to a different file: oid {pointer['oid_sha256']}, size {pointer['size']})"),
                    actual=actual,
                )
            if pointer["size"] == entry.size and (expected_sha is None or pointer["oid_sha256"] == expected_sha):
                detail = ("this is the pointer to the right file: run `git lfs pull`" if expected_sha
                          else "its size matches the manifest: run `git lfs pull`")
                return self.result(
                    entry, "lfs_pointer",
                    f"is a Git LFS pointer stub ({size} bytes), not the file; {detail}",
                    actual=actual,
                    remedy=f"cd {quote(str(self.directory))} && git lfs pull --include {quote(entry.path)}",
                )
            return self.result(
                entry, "lfs_pointer",
                f"is a Git LFS pointer stub ({size} bytes) to a DIFFERENT file "
                f"(oid {pointer['oid_sha256']}, size {pointer['size']}); the clone is at another revision",
                actual=actual,
                remedy=(f"check out revision {quote(self.manifest.revision)} and run `git lfs pull`"
                        if self.manifest.revision else "check out the manifest's revision and run `git lfs pull`"),
            )
        page = sniff_error_page(head)
        # An HTML/XML page is never a model file; a JSON error body only counts when it is
        # shorter than the file (a config.json may legitimately hold an "error" key).
        if page is not None and (size < entry.size or page != "JSON"):
            actual["content"] = f"{page} error page"
            return self.result(
                entry, "error_page",
                f"is {_article(page)} {page} error page saved in place of the file ({size} bytes, expected "
                f"{entry.size}; starts: {_first_line(head)!r}): the download saved the server's error response",
                actual=actual,
            )
        if size == 0:
            return self.result(entry, "empty", f"is empty (0 bytes), expected {entry.size} bytes", actual=actual)
        if size < entry.size:
            pct = 100.0 * size / entry.size
            return self.result(
                entry, "truncated",
                f"truncated: {size} of {entry.size} bytes present ({pct:.1f}%, {human_size(entry.size - size)} short); "
                "the download or copy stopped early",
                actual=actual,
            )
        return self.result(
            entry, "oversized",
            f"larger than expected: {size} bytes, expected {entry.size} (+{size - entry.size} bytes); "
            "a different file, or data appended to it",
            actual=actual,
        )

    def _compare(self, entry: FileEntry, size: int, digests: Mapping[str, str], fd: int | None,
                 cached: bool = False) -> FileResult:
        mismatched = {a: v for a, v in digests.items() if entry.digests.get(a) != v}
        actual = {"size": size, **digests}
        if not mismatched:
            names = "+".join(digests)
            return self.result(entry, "ok", f"ok ({human_size(size)}, {names}{', cached' if cached else ''})",
                               status=OK, actual=actual, cached=cached)
        detail = "; ".join(f"{a}: expected {entry.digests[a]}, got {v}" for a, v in mismatched.items())
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
            zero_from = _zero_region(fd, size)
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
                                   f"is {_article(page)} {page} error page saved in place of the file "
                                   f"(starts: {_first_line(head)!r}); {detail}", actual=actual)
        return self.result(
            entry, "digest_mismatch",
            f"{'right size, ' if entry.size is not None else ''}wrong content: {detail}", actual=actual,
        )


def _access_detail(path: Path) -> str:
    """`` (mode -rw-------, owner uid 1000; this process runs as uid 1001)``, or '' if unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f" (mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}; this process runs as uid {os.geteuid()})"


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def default_remedy(manifest: Manifest, directory: Path) -> Callable[[FileEntry, str], str | None]:
    """The command that repairs a broken file of ``manifest`` in ``directory``."""

    def remedy(entry: FileEntry, diagnosis: str) -> str | None:
        from shlex import quote

        if diagnosis in ("changed_while_reading",):
            return None
        if manifest.origin != "manifest":
            from .hflisting import remedy as download_again

            return download_again(manifest, directory)
        if "/" not in manifest.model:
            return f"restore {entry.path} from the source the manifest was built from"
        cmd = f"modelguard fetch {quote(manifest.model)}"
        if manifest.revision:
            cmd += f" --revision {quote(manifest.revision)}"
        if directory.parent.name != "snapshots":
            cmd += f" --local-dir {quote(str(directory))}"
        return cmd

    return remedy


def list_extra_files(manifest: Manifest, directory: Path) -> tuple[str, ...]:
    """Files under ``directory`` the manifest does not list (tool folders skipped)."""
    listed = {entry.path for entry in manifest.files}
    extra: list[str] = []
    if not directory.is_dir():
        return ()
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES)
        rel_root = os.path.relpath(root, directory)
        for name in files:
            if name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES):
                continue
            rel = name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/")
            if rel not in listed:
                extra.append(rel)
    return tuple(sorted(extra))


def _resolve_manifest(manifest: str | os.PathLike[str]) -> Manifest:
    """A manifest file; a model id with a known manifest, else its Hugging Face cache snapshot's
    own listing (:mod:`modelguard.hflisting`); or a snapshot / ``local_dir`` folder's listing."""
    from .manifest import load_manifest

    text = os.fspath(manifest)
    if os.path.isdir(text):
        from .hflisting import cache_expectations, describe_missing_source
        from .errors import ManifestNotFoundError

        found = cache_expectations(text)
        if found is None:
            raise ManifestNotFoundError(
                f"{text} is a folder with no source of expectations: not a Hugging Face cache snapshot "
                "or download folder with a saved listing",
                path=text, expected="a manifest file, a model id, or a folder downloaded by huggingface_hub",
                remedy=describe_missing_source("ORG/NAME") + f", then pass the manifest: verify(MANIFEST, {text!r})",
            )
        return found
    if isinstance(manifest, str) and not text.endswith((".yaml", ".yml")) and not os.path.exists(text):
        from .registry import find_manifest, require_manifest

        found = find_manifest(text)
        if found is None:
            from .hflisting import model_expectations

            cached = model_expectations(text)
            if cached is not None:
                return cached[0]
            require_manifest(text)  # raises, naming the search path and how to get a source
        return found
    return load_manifest(manifest)


def _cache_snapshot(manifest: Manifest) -> Path:
    """The model's snapshot in the Hugging Face cache at the manifest's revision."""
    from .hfcache import require_snapshot

    return require_snapshot(manifest.model, manifest.revision)


def verify(
    manifest: Manifest | str | os.PathLike[str],
    directory: str | os.PathLike[str] | None = None,
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
    listed instead of the strongest one. ``cache``: True (default) remembers the digests of
    files that verified in the user's durable cache (:mod:`modelguard.statcache`) so an
    unchanged file later costs a stat; False re-hashes every file; a directory uses a cache
    there; or any object with ``lookup(path, stat, algorithms)`` / ``store(path, stat, digests)``.
    ``rehash=True`` (default: ``MODELGUARD_REHASH``) hashes every file in full whatever the
    cache holds, and stores what verifies.
    Files are hashed in parallel threads (``max_workers``), largest first.

    ``manifest`` is a :class:`Manifest`, the path of a manifest file, or a model id with a
    known manifest (``"BAAI/bge-m3"``, see :mod:`modelguard.registry`). Without
    ``directory``, the model's snapshot in the Hugging Face cache is checked. A model id with
    no manifest, or a snapshot / ``local_dir`` folder, is checked against what the cache
    itself recorded (:mod:`modelguard.hflisting`); the report's ``manifest_source`` says which.
    """
    if not isinstance(manifest, Manifest):
        if directory is None and os.path.isdir(manifest):
            directory = manifest
        manifest = _resolve_manifest(manifest)
    if directory is None:
        directory = _cache_snapshot(manifest)
    start = time.perf_counter()
    root = Path(directory)
    if not root.is_dir():
        from shlex import quote

        from .errors import UsageError

        raise UsageError(
            f"model directory {root} does not exist" if not root.exists() else f"{root} is not a directory",
            path=root, expected="a directory holding the model's files",
            remedy=(f"download the model first: modelguard fetch {quote(manifest.model)}"
                    + (f" --revision {quote(manifest.revision)}" if manifest.revision else "")
                    + f" --local-dir {quote(str(root))}") if "/" in manifest.model else None,
        )
    entries = manifest.files
    if components is not None:
        wanted = set(components)
        unknown = wanted - set(manifest.components)
        if unknown:
            from .errors import UsageError

            raise UsageError(
                f"unknown component(s) {', '.join(sorted(unknown))} for {manifest.model}",
                expected="one of: " + ", ".join(manifest.components), actual=", ".join(sorted(unknown)),
            )
        entries = tuple(e for e in entries if e.component in wanted)
    from .statcache import resolve_cache

    checker = _Checker(
        manifest, root, all_digests=all_digests, cache=resolve_cache(cache, rehash=rehash),
        remedy=default_remedy(manifest, root), progress=progress,
    )
    # Every check that needs no read (missing, wrong type, cache hit) runs in this thread:
    # an unchanged model costs a stat per file and starts no thread. A file whose bytes
    # must be read is queued at once to reader threads (hashlib releases the GIL), so these
    # checks overlap the hashing; largest files first so the readers do not end on one big
    # file. Plain threads and a queue, not an executor: a future per file costs GIL time.
    results: dict[str, FileResult] = {}
    workers = max_workers or min(len(entries), usable_cpus(), 8) or 1
    work = None
    readers: list = []
    errors: list[BaseException] = []

    def read_queued() -> None:
        while True:
            item = work.get()
            if item is None:
                return
            try:
                results[item[0].path] = checker.read_and_compare(*item)
            except BaseException as exc:  # raised in the caller's thread below
                errors.append(exc)

    try:
        for e in sorted(entries, key=lambda e: -(e.size or 0)):
            located = checker.locate(e)
            if isinstance(located, FileResult):
                results[e.path] = located
            elif workers == 1:
                results[e.path] = checker.read_and_compare(e, *located)
            else:
                if work is None:
                    import queue as queue_module
                    import threading

                    work = queue_module.SimpleQueue()
                    readers = [threading.Thread(target=read_queued, name="modelguard-verify", daemon=True)
                               for _ in range(workers)]
                    for t in readers:
                        t.start()
                work.put((e, *located))
    finally:
        for _ in readers:
            work.put(None)
        for t in readers:
            t.join()
    if errors:
        raise errors[0]
    ordered = tuple(results[e.path] for e in sorted(entries, key=lambda e: e.path))
    extra = list_extra_files(manifest, root) if components is None else ()
    return VerifyReport(
        model=manifest.model, revision=manifest.revision, directory=str(root),
        manifest_source=manifest.source, files=ordered, extra_files=extra,
        strict_extra=strict_extra, elapsed_s=time.perf_counter() - start, expectations=manifest.origin,
    )


def format_report(report: VerifyReport, *, quiet: bool = False) -> str:
    """Human-readable report: one line per file, details under failures, a summary."""
    lines: list[str] = []
    if not quiet:
        rev = f" @ {report.revision[:12]}" if report.revision else ""
        lines.append(f"{report.model}{rev}  in {report.directory}")
        if report.expectations != "manifest":
            lines.append(f"  expectations: {report.manifest_source}")
        width = max((len(r.path) for r in report.files), default=10)
        cwidth = max((len(r.component) for r in report.files), default=6)
        for r in report.files:
            tag = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}[r.status]
            lines.append(f"  {tag}  {r.component:<{cwidth}}  {r.path:<{width}}  {r.message}")
            if r.status == FAILED:
                exp = ", ".join(f"{k} {v}" for k, v in r.expected.items())
                act = ", ".join(f"{k} {v}" for k, v in r.actual.items())
                if exp:
                    lines.append(f"        expected: {exp}")
                if act:
                    lines.append(f"        actual:   {act}")
                if r.remedy:
                    lines.append(f"        fix:      {r.remedy}")
        if report.extra_files:
            label = "FAIL" if report.strict_extra else "note"
            unchecked = "" if report.strict_extra else " (not checked)"
            lines.append(f"  {label}  {len(report.extra_files)} file(s) {report._unlisted}{unchecked}: "
                         + ", ".join(report.extra_files[:20])
                         + (" ..." if len(report.extra_files) > 20 else ""))
    elif not report.ok:
        for r in report.failures:
            lines.append(f"FAIL {r.path} [{r.component}]: {r.message}")
            if r.remedy:
                lines.append(f"     fix: {r.remedy}")
    lines.append(report.summary())
    return "\n".join(lines)
