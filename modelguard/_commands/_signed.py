"""``modelguard verify model.sig [DIR] --public-key KEY.pem``: a signature as the expectation;
the options that say whom a signature must come from, shared by ``verify`` and ``build``."""

from __future__ import annotations

import argparse
from shlex import quote
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..safety import scan_manifest_files
from ..signing import (ENV_IDENTITY, ENV_IDENTITY_PROVIDER, ENV_PUBLIC_KEY, configured_identity, configured_public_key,
                       verify_signed)
from ._common import Progress, emit_verdict


def add_trust_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """The signer options, named as the ``model_signing`` CLI names them (with hyphens: its
    ``--identity_provider`` is ``--identity-provider`` here; a mistyped option gets a "did you mean")."""
    p.add_argument("--public-key", metavar="KEY.pem",
                   help=f"check the OpenSSF model signature {what} with this PEM public key "
                        f"(default for a .sig: ${ENV_PUBLIC_KEY}, else ${ENV_IDENTITY}), then every file it lists")
    p.add_argument("--certificate-chain", metavar="CA.pem",
                   action="append",
                   help=f"check the signature {what}, made with a certificate, against this chain (repeatable)")
    p.add_argument("--identity", metavar="EMAIL_OR_URI",
                   help=f"check the Sigstore (keyless) signature {what}: the identity that must have signed it "
                        "(the certificate's email or URI), with --identity-provider")
    p.add_argument("--identity-provider", metavar="ISSUER_URL",
                   help="the OIDC issuer that vouched for --identity, e.g. https://accounts.google.com or "
                        "https://token.actions.githubusercontent.com")
    p.add_argument("--use-staging", action="store_true",
                   help="with --identity: Sigstore's staging instance (test signatures)")
    p.add_argument("--trust-config", metavar="CONFIG.json",
                   help="with --identity: a Sigstore client trust configuration instead of the trust root "
                        "fetched from Sigstore over the network")


def wants_signature(args: argparse.Namespace) -> bool:
    """Whether ``verify`` was asked to check a signature rather than a manifest."""
    return bool(args.public_key or args.certificate_chain or args.identity or args.identity_provider
                or args.use_staging or args.trust_config or args.target.endswith(".sig"))


def trust_from_args(args: argparse.Namespace, signature: str) -> dict[str, Any]:
    """The keyword arguments of :func:`modelguard.signing.read_signature` the options name:
    the options given, else ``$MODELGUARD_PUBLIC_KEY``, else ``$MODELGUARD_IDENTITY`` (and its
    provider); a UsageError for none, or for more than one kind of signer."""
    sigstore_options = [flag for flag, value in (("--identity", args.identity),
                                                 ("--identity-provider", args.identity_provider),
                                                 ("--use-staging", args.use_staging),
                                                 ("--trust-config", args.trust_config)) if value]
    other = [flag for flag, value in (("--public-key", args.public_key),
                                      ("--certificate-chain", args.certificate_chain)) if value]
    if sigstore_options and other:
        raise UsageError(
            f"{' and '.join(other)} and {', '.join(sigstore_options)} name different kinds of signer",
            expected="one of: --public-key KEY.pem; --certificate-chain CA.pem; --identity ID --identity-provider URL",
            actual=" ".join(other + sigstore_options),
            remedy="pass only the options for how the model was signed (a key, a certificate chain, or Sigstore)",
        )
    if sigstore_options:
        return {"identity": args.identity, "identity_provider": args.identity_provider,
                "use_staging": args.use_staging, "trust_config": args.trust_config}
    if other:
        return {"public_key": args.public_key, "certificate_chain": args.certificate_chain or ()}
    public_key = configured_public_key()
    if public_key is not None:
        return {"public_key": public_key}
    identity = configured_identity()
    if identity is not None:
        return {"identity": identity.identity, "identity_provider": identity.provider}
    raise UsageError(
        f"{signature} is a signature: checking it needs to know who must have signed it",
        expected=(f"--public-key KEY.pem, --certificate-chain CA.pem, or --identity ID --identity-provider URL "
                  f"(or ${ENV_PUBLIC_KEY}, or ${ENV_IDENTITY} with ${ENV_IDENTITY_PROVIDER})"),
        actual="no key, certificate chain or identity given",
        remedy=f"pass --public-key, or set {ENV_PUBLIC_KEY}=KEY.pem",
    )


def run_verify(args: argparse.Namespace) -> int:
    for flag, value in (("--components", args.components), ("--revision", args.revision),
                        ("--cache-dir", args.cache_dir)):
        if value:
            raise UsageError(
                f"{flag} does not apply to a signature: it lists the exact files of one folder",
                expected=f"modelguard verify {quote(args.target)} DIR --public-key KEY.pem", actual=f"{flag} {value}",
                remedy=f"leave out {flag}",
            )
    trust = trust_from_args(args, args.target)
    directory = Path(args.directory) if args.directory else Path(os.path.dirname(os.path.abspath(args.target)))
    progress = Progress(0, f"verifying {directory}")
    statement, report = verify_signed(
        args.target, directory, **trust,
        strict_extra=args.strict, all_digests=args.all_digests, cache=not args.no_cache, progress=progress,
    )
    findings = None
    if args.scan:
        findings = scan_manifest_files(statement.manifest(directory), directory, None)
    return emit_verdict(args, report, findings, signature=statement)
