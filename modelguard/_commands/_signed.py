"""``modelguard verify model.sig [DIR] --public-key KEY.pem``: a signature as the expectation."""

from __future__ import annotations

import argparse
from shlex import quote
import os
from pathlib import Path

from ..errors import UsageError
from ..safety import scan_manifest_files
from ..signing import configured_public_key, verify_signed
from ._common import Progress, emit_verdict


def wants_signature(args: argparse.Namespace) -> bool:
    """Whether ``verify`` was asked to check a signature rather than a manifest."""
    return bool(args.public_key or args.certificate_chain or args.target.endswith(".sig"))


def run_verify(args: argparse.Namespace) -> int:
    for flag, value in (("--components", args.components), ("--revision", args.revision),
                        ("--cache-dir", args.cache_dir)):
        if value:
            raise UsageError(
                f"{flag} does not apply to a signature: it lists the exact files of one folder",
                expected=f"modelguard verify {quote(args.target)} DIR --public-key KEY.pem", actual=f"{flag} {value}",
                remedy=f"leave out {flag}",
            )
    public_key = args.public_key or (None if args.certificate_chain else configured_public_key())
    if public_key is None and not args.certificate_chain:
        raise UsageError(
            f"{args.target} is a signature: checking it needs the signer's public key",
            expected=f"modelguard verify {quote(args.target)} DIR --public-key KEY.pem (or --certificate-chain CA.pem)",
            actual="no key given", remedy="pass --public-key, or set MODELGUARD_PUBLIC_KEY=KEY.pem",
        )
    directory = Path(args.directory) if args.directory else Path(os.path.dirname(os.path.abspath(args.target)))
    progress = Progress(0, f"verifying {directory}")
    statement, report = verify_signed(
        args.target, directory, public_key=public_key, certificate_chain=args.certificate_chain or (),
        strict_extra=args.strict, all_digests=args.all_digests, cache=not args.no_cache, progress=progress,
    )
    findings = None
    if args.scan:
        findings = scan_manifest_files(statement.manifest(directory), directory, None)
    return emit_verdict(args, report, findings, signature=statement)
