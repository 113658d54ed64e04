"""``modelguard fetch MODEL [--revision REV] [--components a,b] [--local-dir DIR] [--cache-dir DIR] [--json]``."""

from __future__ import annotations

import argparse
import sys

from ..errors import DownloadError, UsageError
from ..hub import MAX_ATTEMPTS, fetch_files
from ..output import emit_json
from ..report import format_report


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fetch",
        help="download a model's manifest files at the pinned revision, verify them, repair what is broken",
        description="Download exactly the files the manifest lists, at its pinned revision, into the Hugging Face "
                    "cache (or --local-dir). Files already verified are kept; missing or broken ones are downloaded "
                    "to a temporary file and put in place only once they verify; old bytes are kept aside. "
                    "Exit 0 verified, 1 a file could not be obtained with the right bytes, 2 bad invocation.",
    )
    p.add_argument("model", metavar="MODEL", help="a model id with a known manifest or lock entry (BAAI/bge-m3), or a manifest file; with "
                        "neither, a model in the Hugging Face cache is fetched by its snapshot's listing (saved at "
                        "download, else the Hub's)")
    p.add_argument("--revision", help="the revision whose manifest applies (default: the manifest's pinned commit)")
    p.add_argument("--components", help="comma-separated components to fetch (default: the required ones, "
                                         "plus optional ones already present)")
    p.add_argument("--local-dir", metavar="DIR", help="put the files in DIR instead of the Hugging Face cache")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="Hugging Face hub cache folder (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    p.add_argument("--attempts", type=int, default=None, metavar="N",
                   help="downloads tried per file before giving up (default: 3)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    p.set_defaults(run=run)


def _format(result) -> str:
    head = f"{result.report.model} @ {(result.revision or '')[:12]}  in {result.report.directory}"
    changed = [a for a in result.actions if a.action != "kept"]
    lines = [head, *(f"  {a.action:<10}  {a.path}: {a.message}" for a in changed)]
    lines.append(f"  {len(result.actions) - len(changed)} file(s) already verified, "
                 f"{len(changed)} downloaded or repaired")
    lines.append(format_report(result.report, quiet=True))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.local_dir and args.cache_dir:
        raise UsageError("--local-dir and --cache-dir exclude each other",
                         remedy="pass --local-dir DIR for a plain folder, or --cache-dir DIR for a Hugging Face cache")
    attempts = MAX_ATTEMPTS if args.attempts is None else args.attempts
    if attempts < 1 or attempts > 20:
        raise UsageError("--attempts must be between 1 and 20", expected="1..20", actual=str(attempts))
    components = [c.strip() for c in args.components.split(",") if c.strip()] if args.components else None
    try:
        result = fetch_files(args.model, args.revision, components=components, local_dir=args.local_dir,
                             cache_dir=args.cache_dir, attempts=attempts)
    except DownloadError as exc:
        result = exc.result
        if result is None:
            raise
        if args.json:
            document = result.to_dict()
            document["error"] = exc.to_dict()
            emit_json(document)
        else:
            for a in result.actions:
                if a.action in ("downloaded", "repaired"):
                    sys.stdout.write(f"  {a.action:<10}  {a.path}: {a.message}\n")
        sys.stderr.write(f"modelguard: error: {exc}\n")
        return exc.exit_code
    if args.json:
        emit_json(result.to_dict())
    elif args.quiet:
        print(result.report.summary())
    else:
        print(_format(result))
    return 0
