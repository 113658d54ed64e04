"""What ``verify --lock`` and ``sync`` share: which lock, where each locked model lives, and
the one report over every locked model."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any

from .. import hfcache
from ..engine import verify_directory
from ..errors import UsageError
from ..lockfile import LOCK_NAME, Lock, LockEntry, find_lock, load_lock
from ..output import emit_json
from ..report import VerifyReport, format_report
from ..signature_lock import signed_by_problem


def add_lock_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local-dir", metavar="DIR",
                   help="each locked model in DIR/ORG/NAME instead of the Hugging Face cache")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="Hugging Face hub cache folder (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)")


def read_lock(named: str | None) -> Lock:
    """The lock named by ``--lock FILE`` (``named``), else the one that applies here; a clear
    UsageError when there is none."""
    if named:
        return load_lock(named)
    path = find_lock()
    if path is None:
        raise UsageError(
            f"no {LOCK_NAME} in {os.getcwd()} or any folder above it, and $MODELGUARD_LOCK is not set",
            expected=f"a {LOCK_NAME} file", actual="none found",
            remedy="create one: modelguard lock add ORG/NAME; or pass --lock FILE",
        )
    return load_lock(path)


def check_dirs(args: argparse.Namespace) -> None:
    if args.local_dir and args.cache_dir:
        raise UsageError("--local-dir and --cache-dir exclude each other",
                         remedy="pass --local-dir DIR for plain folders, or --cache-dir DIR for a Hugging Face cache")


def local_dir_of(args: argparse.Namespace, entry: LockEntry) -> Path | None:
    return Path(args.local_dir) / entry.model_id if args.local_dir else None


def model_dir(args: argparse.Namespace, entry: LockEntry) -> Path | None:
    """Where ``entry``'s files are: ``--local-dir``/ORG/NAME, or its snapshot at the locked commit (None: absent)."""
    local = local_dir_of(args, entry)
    if local is not None:
        return local if local.is_dir() else None
    return hfcache.snapshot_path(entry.model_id, entry.revision, args.cache_dir)


def sync_command(lock: Lock, args: argparse.Namespace) -> str:
    cmd = "modelguard sync"
    if lock.path is not None:
        cmd += f" --lock {quote(str(lock.path))}"
    if args.local_dir:
        cmd += f" --local-dir {quote(args.local_dir)}"
    elif args.cache_dir:
        cmd += f" --cache-dir {quote(args.cache_dir)}"
    return cmd


@dataclass(frozen=True)
class ModelOutcome:
    """One locked model in a ``verify --lock`` or ``sync`` report."""

    entry: LockEntry
    directory: Path | None
    status: str  # verified | failed | missing
    report: VerifyReport | None = None
    message: str = ""
    remedy: str | None = None
    extra: Any = None  # sync: the FetchResult as a dict, or the error

    @property
    def ok(self) -> bool:
        return self.status == "verified"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.entry.model_id, "revision": self.entry.revision,
                               "directory": None if self.directory is None else str(self.directory),
                               "ok": self.ok, "status": self.status, "message": self.message,
                               "remedy": self.remedy,
                               "report": None if self.report is None else self.report.to_dict()}
        if self.extra is not None:
            out.update(self.extra)
        return out


def verify_locked(lock: Lock, args: argparse.Namespace) -> list[ModelOutcome]:
    """Every locked model checked where it lives (nothing downloaded)."""
    fix = sync_command(lock, args)
    outcomes = []
    for entry in lock.entries.values():
        directory = model_dir(args, entry)
        if directory is None:
            where = local_dir_of(args, entry) or f"the Hugging Face cache ({hfcache.hf_cache_dir(args.cache_dir)})"
            outcomes.append(ModelOutcome(entry, None, "missing", message=f"not present: no copy at {entry.revision} "
                                         f"in {where}", remedy=fix))
            continue
        report = verify_directory(entry.manifest, directory, cache=not getattr(args, "no_cache", False),
                                  rehash=True if getattr(args, "rehash", False) else None)
        problem = signed_by_problem(lock, entry, directory) if report.ok else None
        if problem is not None:
            outcomes.append(ModelOutcome(entry, directory, "failed", report, message=problem[0], remedy=problem[1]))
            continue
        outcomes.append(ModelOutcome(entry, directory, "verified" if report.ok else "failed", report,
                                     message=report.summary(), remedy=None if report.ok else fix))
    return outcomes


def emit_outcomes(lock: Lock, outcomes: list[ModelOutcome], args: argparse.Namespace, verb: str) -> int:
    """Print the report over every locked model (one JSON document with ``--json``); 0 when all verified, else 1."""
    bad = [o for o in outcomes if not o.ok]
    where = lock.path if lock.path is not None else LOCK_NAME
    if args.json:
        emit_json({"ok": not bad, "lock": str(where), "models": [o.to_dict() for o in outcomes]})
        return 1 if bad else 0
    lines = [f"{LOCK_NAME}: {where} ({len(outcomes)} model(s))"]
    for o in outcomes:
        lines.append("")
        if o.report is not None:
            lines.append(format_report(o.report, quiet=args.quiet))
            if o.report.ok and not o.ok:  # the files verified, the signature the lock requires did not
                lines.append(f"FAILED: {o.entry.model_id} @ {o.entry.revision[:12]}: {o.message}")
        else:
            lines.append(f"FAILED: {o.entry.model_id} @ {o.entry.revision[:12]}: {o.message}")
        if o.remedy:
            lines.append(f"  fix: {o.remedy}")
    lines.append("")
    if bad:
        lines.append(f"FAILED: {len(bad)} of {len(outcomes)} locked model(s) did not verify: "
                     + ", ".join(o.entry.model_id for o in bad))
    else:
        lines.append(f"{verb}: all {len(outcomes)} locked model(s) verified")
    print("\n".join(lines))
    return 1 if bad else 0
