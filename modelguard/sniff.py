"""What a file's first bytes say it is: a Git LFS pointer, a saved web error page, a zip,
a pickle, a safetensors header. Pure functions over bytes; nothing here opens a file."""

from __future__ import annotations

import re
import struct
from typing import Any

SNIFF_BYTES = 1024
LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
ZIP_MAGIC = b"PK\x03\x04"
# safetensors refuses headers above 100 MB (HeaderTooLarge); so do we.
SAFETENSORS_MAX_HEADER = 100_000_000


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


def sniff_format(head: bytes) -> str:
    """What the first bytes of a file look like: zip, npy, 7z, pickle, lfs_pointer, html, empty, safetensors, unknown."""
    if not head:
        return "empty"
    if head.startswith(LFS_PREFIX):
        return "lfs_pointer"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head[:1] == b"\x80" and head[1:2] in (b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "html"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= SAFETENSORS_MAX_HEADER and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def article(word: str) -> str:
    """``a`` or ``an`` before an upper-case format name (``an HTML``, ``a JSON``)."""
    return "an" if word[:1] in "AEFHILMNORSX" else "a"


def first_line(head: bytes) -> str:
    """The page title, or the first line, of a text file's first bytes (at most 100 characters)."""
    text = head.decode("utf-8", "replace").strip()
    if "<title>" in text.lower():
        m = re.search(r"<title>(.*?)</title>", text, re.I | re.S)
        if m:
            return m.group(1).strip()[:100]
    return text.splitlines()[0][:100] if text else ""
