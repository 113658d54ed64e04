"""``modelguard verify TARGET [DIR]``."""

from __future__ import annotations

import argparse
from shlex import quote

from ..engine import verify_directory
from ..hub import complete_expectations
from ..resolve import resolve_verify_target
from ..safety import scan_manifest_files
from ..errors import UsageError
from ._common import Progress, emit_verdict
from ._locked import check_dirs, emit_outcomes, read_lock, verify_locked
from ._signed import add_trust_arguments, run_verify, wants_signature


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a model directory or cache snapshot against a manifest",
        description="Check every file a model needs: present, complete, the right bytes. "
                    "Exit 0 verified, 1 failed, 2 bad invocation or manifest.",
    )
    p.add_argument("target", metavar="TARGET", nargs="?",
                   help="a manifest file, a model id (BAAI/bge-m3), a Hugging Face cache snapshot / download "
                        "folder, or a signature (model.sig, with --public-key, --certificate-chain or --identity); "
                        "with no manifest, a cached model is checked against the Hub's listing saved at download "
                        "(none saved: the Hub's listing fetched now, not saved; offline: its blobs' content addresses)")
    p.add_argument("directory", metavar="DIR", nargs="?",
                   help="model directory (default: the model's snapshot in the Hugging Face cache)")
    p.add_argument("--revision", help="with a model id: the revision whose manifest applies")
    p.add_argument("--cache-dir", help="Hugging Face hub cache folder (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    p.add_argument("--components", help="comma-separated components to check (default: all)")
    p.add_argument("--strict", action="store_true", help="files present but not in the manifest are a failure")
    p.add_argument("--all-digests", action="store_true",
                   help="check every digest listed (default: the pieces' sha256 of a file with chunks, else the strongest one)")
    p.add_argument("--all-files", action="store_true",
                   help="with no manifest: every file of the Hub's listing is required (default: docs and "
                        "formats the Python loaders do not read are checked only when present)")
    p.add_argument("--scan", action="store_true",
                   help="also scan pickle-based weights for code and check safetensors headers (unsafe: exit 1)")
    p.add_argument("--no-cache", action="store_true",
                   help="re-hash every file; do not use or update the verified-digest cache")
    p.add_argument("--rehash", action="store_true",
                   help="hash every file in full even when the verified-digest cache holds it "
                        "(catches in-place writes and bit rot the cache cannot see); still updates the cache")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    add_trust_arguments(p, "TARGET")
    p.add_argument("--lock", metavar="FILE", nargs="?", const="",
                   help="verify every model of the project lock (FILE, else $MODELGUARD_LOCK, else modelguard.lock "
                        "in the working directory or above) in one report: each model's cache snapshot at the "
                        "locked commit, or --local-dir DIR/ORG/NAME; a locked model not present fails")
    p.add_argument("--local-dir", metavar="DIR", help="with --lock: each locked model in DIR/ORG/NAME")
    p.add_argument("-q", "--quiet", action="store_true", help="print only failures and the summary")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.lock is not None or args.local_dir is not None:
        return run_lock(args)
    if args.target is None:
        raise UsageError("verify needs a TARGET, or --lock to verify every locked model",
                         expected="modelguard verify TARGET [DIR], or modelguard verify --lock [FILE]",
                         remedy="name a model id, manifest or folder; or pass --lock")
    if wants_signature(args):
        return run_verify(args)
    resolution = resolve_verify_target(args.target, args.directory, revision=args.revision, cache_dir=args.cache_dir,
                                       how_to_pass=f"pass the directory: modelguard verify {quote(args.target)} DIR",
                                       all_files=args.all_files, cli=True)
    resolution = complete_expectations(resolution, all_files=args.all_files)  # no saved listing: ask the Hub
    manifest, directory = resolution.manifest, resolution.directory
    components = [c.strip() for c in args.components.split(",") if c.strip()] if args.components else None
    entries = manifest.files if components is None else manifest.files_of(*components)
    progress = Progress(sum(e.size or 0 for e in entries), f"verifying {manifest.model}")
    try:
        report = verify_directory(
            manifest, directory, components=components, strict_extra=args.strict,
            all_digests=args.all_digests, progress=progress, cache=not args.no_cache,
            rehash=True if args.rehash else None,
        )
    finally:
        progress.close()
    findings = None
    if getattr(args, "scan", False):
        findings = scan_manifest_files(manifest, directory, components)
    return emit_verdict(args, report, findings)


def run_lock(args: argparse.Namespace) -> int:
    """``verify --lock [FILE]``: every locked model, one report; exit 0 all verified, 1 any failed or absent."""
    if args.lock is None:
        raise UsageError("--local-dir belongs to --lock", remedy="add --lock, or pass the folder as DIR")
    for name, value in (("TARGET", args.target), ("DIR", args.directory), ("--revision", args.revision),
                        ("--components", args.components), ("--public-key", args.public_key),
                        ("--certificate-chain", args.certificate_chain), ("--identity", args.identity),
                        ("--identity-provider", args.identity_provider), ("--trust-config", args.trust_config)):
        if value is not None:
            raise UsageError(f"verify --lock checks every locked model; {name} does not go with it",
                             actual=str(value), remedy="drop it, or verify one model without --lock")
    check_dirs(args)
    lock = read_lock(args.lock or None)
    return emit_outcomes(lock, verify_locked(lock, args), args, "verified")
