"""``modelguard build DIR --model ID [--revision REV] [-o FILE]``; ``--from-hub MODEL``;
``--from-signature model.sig`` (the signed digests, once the files verified against them)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

from ..build import build_from_digests, build_manifest
from ..errors import UsageError, VerificationError
from ..hub import build_from_hub
from ..manifest import dump_manifest, save_manifest
from ..report import format_report
from ..signing import verify_signed
from ._signed import add_trust_arguments, trust_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build",
        help="write a manifest from a local model directory",
        description="Hash every file of a model directory (size, md5, sha256) and write a manifest "
                    "with components assigned by rules.",
    )
    p.add_argument("directory", metavar="DIR", nargs="?", help="the model directory")
    p.add_argument("--model", help="the model id recorded in the manifest, e.g. BAAI/bge-m3")
    p.add_argument("--revision", help="the commit the files come from (pin a commit, not a branch)")
    p.add_argument("--rules", choices=("auto", "bge-m3", "generic"), default="auto",
                   help="how files are grouped into components (default: auto)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="leave out matching files")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout (never overwrites without --force)")
    p.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    p.add_argument("--from-hub", metavar="MODEL",
                   help="build from the Hub's metadata of MODEL instead of a directory: LFS files get sha256 and "
                        "size from the listing, small files their git blob sha1; no weights are downloaded; "
                        "--revision (branch, tag or commit, default main) is resolved and the commit pinned")
    p.add_argument("--hash-small", action="store_true",
                   help="with --from-hub: also download the small (non-LFS) files to record their sha256 and md5")
    p.add_argument("--from-signature", metavar="SIG",
                   help="take each file's sha256 from this OpenSSF model signature (model.sig) instead of hashing: "
                        "the signature is checked (--public-key, --certificate-chain or --identity), then the "
                        "files against it (the digest cache spares files verified before); a file that does "
                        "not match is refused. DIR defaults to the signature's folder")
    add_trust_arguments(p, "SIG")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "from_signature", None):
        return _run_from_signature(args)
    trust_flags = [flag for flag, value in (("--public-key", args.public_key),
                                            ("--certificate-chain", args.certificate_chain),
                                            ("--identity", args.identity),
                                            ("--identity-provider", args.identity_provider),
                                            ("--use-staging", args.use_staging),
                                            ("--trust-config", args.trust_config)) if value]
    if trust_flags:
        raise UsageError(f"{', '.join(trust_flags)} {'applies' if len(trust_flags) == 1 else 'apply'} to "
                         "--from-signature only",
                         remedy="add --from-signature DIR/model.sig, or leave them out")
    if getattr(args, "from_hub", None):
        return _run_from_hub(args)
    if not args.directory:
        raise UsageError("build needs a model directory", remedy="modelguard build DIR --model ORG/NAME [-o FILE]")
    if not args.model:
        raise UsageError("build needs --model", expected="--model ORG/NAME, e.g. --model BAAI/bge-m3",
                         remedy=f"modelguard build {shlex.quote(args.directory)} --model ORG/NAME")
    out = _output_path(args)
    if args.revision and not re.fullmatch(r"[0-9a-f]{40}", args.revision):
        sys.stderr.write(f"modelguard: warning: revision '{args.revision}' is not a commit hash; a branch or tag "
                         "moves, so the manifest will not say which files it describes. Pin the 40-hex commit.\n")
    manifest = build_manifest(
        args.directory, args.model, args.revision,
        rules=None if args.rules == "auto" else args.rules, exclude=args.exclude,
    )
    return _write(manifest, out, "")


def _run_from_hub(args: argparse.Namespace) -> int:
    if args.directory:
        raise UsageError("pass either DIR or --from-hub MODEL, not both",
                         remedy=f"modelguard build --from-hub {shlex.quote(args.from_hub)} --revision REV [-o FILE]")
    if args.model and args.model != args.from_hub:
        raise UsageError("--model differs from --from-hub", expected=args.from_hub, actual=args.model,
                         remedy="drop --model; --from-hub names the model")
    out = _output_path(args)
    manifest = build_from_hub(
        args.from_hub, args.revision, rules=None if args.rules == "auto" else args.rules,
        exclude=args.exclude, hash_small=args.hash_small,
    )
    return _write(manifest, out, f"{manifest.model} @ {manifest.revision}, ")


def _run_from_signature(args: argparse.Namespace) -> int:
    if args.from_hub:
        raise UsageError("pass either --from-signature or --from-hub, not both",
                         remedy="--from-signature for a local signed folder, --from-hub for the Hub's listing")
    signature = args.from_signature
    directory = Path(args.directory) if args.directory else Path(os.path.dirname(os.path.abspath(signature)))
    if not args.model:
        raise UsageError("build needs --model", expected="--model ORG/NAME, e.g. --model BAAI/bge-m3",
                         remedy=f"modelguard build {shlex.quote(str(directory))} --from-signature "
                                f"{shlex.quote(signature)} --model ORG/NAME")
    out = _output_path(args)
    trust = trust_from_args(args, signature)
    statement, report = verify_signed(signature, directory, **trust)
    if not report.ok:
        raise VerificationError(
            f"build refused: files of {directory} do not match the signature {signature} ({statement.signer}); "
            "a manifest would record digests of bytes that are not there\n"
            + "\n".join("  " + line for line in format_report(report, quiet=True).splitlines()),
            report=report, path=directory,
            remedy="; ".join(dict.fromkeys(r.remedy for r in report.failures if r.remedy)) or None,
        )
    if report.extra_files:
        shown = ", ".join(report.extra_files[:10]) + (" ..." if len(report.extra_files) > 10 else "")
        sys.stderr.write(f"modelguard: note: {len(report.extra_files)} file(s) of {directory} are not covered by the "
                         f"signature and are left out of the manifest: {shown}\n")
    manifest = build_from_digests(directory, args.model, args.revision, statement.digests,
                                  rules=None if args.rules == "auto" else args.rules, exclude=args.exclude)
    return _write(manifest, out, f"signed by {statement.signer}, ")


def _write(manifest, out: Path | None, what: str) -> int:
    """The manifest on stdout, or saved to ``out`` with a one-line note on stderr."""
    if out is None:
        write_manifest_to_stdout(dump_manifest(manifest))
    else:
        save_manifest(manifest, out)
        comps = ", ".join(f"{n}{'' if c.required else ' (optional)'}" for n, c in sorted(manifest.components.items()))
        sys.stderr.write(f"wrote {out}: {what}{len(manifest.files)} file(s), components: {comps}\n")
    return 0


def _output_path(args: argparse.Namespace) -> Path | None:
    """``-o FILE`` as a path, refused early (before hashing) when it exists without --force."""
    out = Path(args.output) if args.output else None
    if out is not None and out.exists() and not args.force:
        raise UsageError(f"{out} exists; not overwritten", path=out, remedy="pass --force to replace it, or another -o FILE")
    _check_output_folder(out)
    return out


def _check_output_folder(out) -> None:
    """Refuse early (before hashing) an -o FILE whose folder cannot exist."""
    if out is None:
        return
    if out.is_dir():
        raise UsageError(f"{out} is a directory", path=out, expected="a manifest file name, e.g. model.yaml",
                         remedy=f"pass -o {shlex.quote(str(out / 'model.yaml'))}")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"cannot write {out}: {parent} is not a directory", path=out,
                                 remedy="pass -o with a path inside a folder")
            return


def write_manifest_to_stdout(text: str) -> None:
    """A manifest is UTF-8 whatever the terminal's encoding: when stdout cannot encode
    it (``PYTHONIOENCODING=ascii``), its UTF-8 bytes go to the underlying buffer, so a
    redirected manifest keeps its non-ASCII paths intact."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is not None:
            sys.stdout.flush()
            buffer.write(text.encode("utf-8", "surrogateescape"))
            buffer.flush()
            return
    sys.stdout.write(text)
