"""``modelguard sign DIR (--private-key KEY.pem | --sigstore) [--output DIR/model.sig]``."""

from __future__ import annotations

import argparse

from ..output import emit_json
from ..signing import sign_directory


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sign",
        help="sign a model folder (OpenSSF model signing; needs modelguard[signing])",
        description="Write an OpenSSF model signature (a Sigstore bundle, as `model_signing sign` writes) "
                    "over every file of DIR, git files and the signature itself left out, with a private key "
                    "or with Sigstore (keyless, online). `modelguard verify DIR/model.sig --public-key PUB.pem` "
                    "(or --identity ... --identity-provider ...) and `model_signing verify` check it. "
                    "Exit 0 signed, 2 bad invocation or Sigstore unreachable.",
    )
    p.add_argument("directory", metavar="DIR", help="the model folder to sign")
    p.add_argument("--private-key", metavar="KEY.pem",
                   help="PEM elliptic-curve private key (P-256/P-384/P-521)")
    p.add_argument("--password", help="password of the private key, if it is encrypted")
    p.add_argument("--sigstore", action="store_true",
                   help="sign with Sigstore instead of a key: a short-lived certificate for your identity "
                        "(an identity token, ambient CI credentials, or a browser login), logged publicly; "
                        "needs the network")
    p.add_argument("--use-staging", action="store_true",
                   help="with --sigstore: Sigstore's staging instance (test signatures)")
    p.add_argument("--identity-token", metavar="TOKEN",
                   help="with --sigstore: an OIDC identity token to use instead of ambient credentials or a login")
    p.add_argument("--trust-config", metavar="CONFIG.json",
                   help="with --sigstore: a Sigstore client trust configuration (another Sigstore instance)")
    p.add_argument("-o", "--output", metavar="SIG", help="where to write the signature (default: DIR/model.sig)")
    p.add_argument("--ignore-paths", metavar="PATH", action="append", default=[],
                   help="files or folders of DIR to leave out of the signature (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out, statement = sign_directory(args.directory, private_key=args.private_key, output=args.output,
                                    password=args.password, ignore_paths=args.ignore_paths,
                                    sigstore=args.sigstore, use_staging=args.use_staging,
                                    identity_token=args.identity_token, trust_config=args.trust_config)
    if args.json:
        emit_json({"ok": True, "signature": str(out), **{k: v for k, v in statement.to_dict().items()
                                                         if k not in ("signature", "cached")}})
    else:
        print(f"signed {len(statement.digests)} file(s) of {args.directory} with {statement.signer}: wrote {out}")
    return 0
