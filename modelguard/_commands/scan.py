"""``modelguard scan [--cache-dir DIR] [--json]``."""

from __future__ import annotations

import argparse

from ..hub import cache_blob_bytes, format_scan, scan_cache
from ..output import emit_json
from ._common import Progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan",
        help="find corrupt files anywhere in the Hugging Face cache",
        description="Walk the Hugging Face cache: every blob named by a digest (sha256 for LFS files, git sha1 for "
                    "small ones) is hashed and compared with its name, and every snapshot with a known manifest is "
                    "verified against it. Exit 0 clean, 1 corruption found, 2 bad invocation.",
    )
    p.add_argument("--cache-dir", metavar="DIR",
                   help="Hugging Face hub cache folder (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress(cache_blob_bytes(args.cache_dir), "scanning the Hugging Face cache")
    try:
        report = scan_cache(args.cache_dir, progress=progress)
    finally:
        progress.close()
    if args.json:
        emit_json(report.to_dict())
    else:
        print(format_scan(report))
    return 0 if report.ok else 1
