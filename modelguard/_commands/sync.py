"""``modelguard sync [--lock FILE] [--local-dir DIR | --cache-dir DIR] [--json]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DownloadError, OfflineError, UsageError
from ..hub import MAX_ATTEMPTS, fetch_files
from ..locking import record_default_branch
from ._locked import ModelOutcome, add_lock_options, check_dirs, emit_outcomes, local_dir_of, read_lock, sync_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync",
        help="download and verify every model in the project lock",
        description="Download every locked model's files at its locked commit into the Hugging Face cache (or "
                    "--local-dir DIR/ORG/NAME), the way fetch does: each file to a temporary file, verified, then "
                    "renamed into place; broken files are replaced (old bytes kept aside), files already verified "
                    "are kept. Offline with everything present it only verifies. "
                    "Exit 0 every model verified, 1 a model could not be obtained with the locked bytes, "
                    "2 bad invocation or lock.",
    )
    p.add_argument("--lock", metavar="FILE", help="the lock file (default: $MODELGUARD_LOCK, else modelguard.lock "
                                                   "in the working directory or above)")
    add_lock_options(p)
    p.add_argument("--attempts", type=int, default=MAX_ATTEMPTS, metavar="N",
                   help=f"downloads tried per file before giving up (default: {MAX_ATTEMPTS})")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_dirs(args)
    if not 1 <= args.attempts <= 20:
        raise UsageError("--attempts must be between 1 and 20", expected="1..20", actual=str(args.attempts))
    lock = read_lock(args.lock)
    fix = sync_command(lock, args)
    outcomes = []
    total = len(lock.entries)
    for n, entry in enumerate(lock.entries.values(), 1):
        if not args.json:
            sys.stderr.write(f"modelguard: sync [{n}/{total}] {entry.model_id} @ {entry.revision[:12]}\n")
            sys.stderr.flush()
        local = local_dir_of(args, entry)
        try:
            result = fetch_files(entry.manifest, entry.revision, local_dir=local, cache_dir=args.cache_dir,
                                 attempts=args.attempts)
        except DownloadError as exc:  # OfflineError too: this model failed, the others still sync
            result = exc.result
            directory = Path(result.report.directory) if result is not None else local
            outcomes.append(ModelOutcome(
                entry, directory, "failed" if result is not None else "missing",
                result.report if result is not None else None,
                message=exc.message,
                remedy=f"unset HF_HUB_OFFLINE, then run `{fix}`" if isinstance(exc, OfflineError) else exc.remedy,
                extra={"actions": [a.to_dict() for a in result.actions] if result is not None else [],
                       "error": exc.to_dict()}))
            continue
        if (local is None and result.ok and record_default_branch(entry.model_id, entry.revision, args.cache_dir)
                and not args.json):
            sys.stderr.write(f"  recorded {entry.revision[:12]} as the cache's refs/main (there was none)\n")
        changed = [a for a in result.actions if a.action != "kept"]
        if not args.json:
            for a in changed:
                sys.stderr.write(f"  {a.action:<10}  {a.path}: {a.message}\n")
        outcomes.append(ModelOutcome(entry, Path(result.report.directory), "verified" if result.ok else "failed", result.report,
                                     message=result.report.summary(), remedy=None if result.ok else fix,
                                     extra={"actions": [a.to_dict() for a in result.actions], "error": None}))
    return emit_outcomes(lock, outcomes, args, "synced")
