"""Why a file's size is not the manifest's, told from its first bytes: a Git LFS pointer
stub (and whether it points to the right file), an HTTP error page saved in its place, an
empty file, a truncated download, or data appended. Used by :mod:`modelguard.engine`."""

from __future__ import annotations

import os
from shlex import quote
from typing import Any

from .fs import human_size
from .manifest import FileEntry
from .report import FileResult
from .sniff import SNIFF_BYTES, article, first_line, parse_lfs_pointer, sniff_error_page


def wrong_size(checker: Any, entry: FileEntry, fd: int, size: int) -> FileResult:
    """The diagnosis of ``entry``, open as ``fd``, whose size is ``size``, not the manifest's:
    a Git LFS pointer stub, a saved error page, empty, truncated or oversized. ``checker``
    is the engine's: its ``result``, ``manifest`` and ``directory``."""
    head = os.pread(fd, SNIFF_BYTES, 0)
    actual: dict[str, Any] = {"size": size}
    pointer = parse_lfs_pointer(head)
    if pointer is not None:
        actual["lfs_oid_sha256"] = pointer["oid_sha256"]
        actual["lfs_size"] = pointer["size"]
        expected_sha = entry.digests.get("sha256")
        if checker.manifest.origin != "manifest":
            # A cache download, not a git clone: the fix is to download the file again.
            same = pointer["size"] == entry.size and pointer["oid_sha256"] == expected_sha
            return checker.result(
                entry, "lfs_pointer",
                f"is a Git LFS pointer stub ({size} bytes), not the file"
                + ("" if same else f" (to a different file: oid {pointer['oid_sha256']}, size {pointer['size']})"),
                actual=actual,
            )
        if pointer["size"] == entry.size and (expected_sha is None or pointer["oid_sha256"] == expected_sha):
            detail = ("this is the pointer to the right file: run `git lfs pull`" if expected_sha
                      else "its size matches the manifest: run `git lfs pull`")
            return checker.result(
                entry, "lfs_pointer",
                f"is a Git LFS pointer stub ({size} bytes), not the file; {detail}",
                actual=actual,
                remedy=f"cd {quote(str(checker.directory))} && git lfs pull --include {quote(entry.path)}",
            )
        return checker.result(
            entry, "lfs_pointer",
            f"is a Git LFS pointer stub ({size} bytes) to a DIFFERENT file "
            f"(oid {pointer['oid_sha256']}, size {pointer['size']}); the clone is at another revision",
            actual=actual,
            remedy=(f"check out revision {quote(checker.manifest.revision)} and run `git lfs pull`"
                    if checker.manifest.revision else "check out the manifest's revision and run `git lfs pull`"),
        )
    page = sniff_error_page(head)
    # An HTML/XML page is never a model file; a JSON error body only counts when it is
    # shorter than the file (a config.json may legitimately hold an "error" key).
    if page is not None and (size < entry.size or page != "JSON"):
        actual["content"] = f"{page} error page"
        return checker.result(
            entry, "error_page",
            f"is {article(page)} {page} error page saved in place of the file ({size} bytes, expected "
            f"{entry.size}; starts: {first_line(head)!r}): the download saved the server's error response",
            actual=actual,
        )
    if size == 0:
        return checker.result(entry, "empty", f"is empty (0 bytes), expected {entry.size} bytes", actual=actual)
    if size < entry.size:
        pct = 100.0 * size / entry.size
        return checker.result(
            entry, "truncated",
            f"truncated: {size} of {entry.size} bytes present ({pct:.1f}%, {human_size(entry.size - size)} short); "
            "the download or copy stopped early",
            actual=actual,
        )
    return checker.result(
        entry, "oversized",
        f"larger than expected: {size} bytes, expected {entry.size} (+{size - entry.size} bytes); "
        "a different file, or data appended to it",
        actual=actual,
    )
