"""``modelguard audit DIR|MODEL [--json]``."""

from __future__ import annotations

import argparse

from ..auditing import audit, format_audit
from ..output import emit_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="report what makes a model's outputs vary (sampling settings, missing heads) and its integrity",
        description="Read generation_config.json, config.json and the sentence-transformers configs of a model "
                    "directory (or a model id in the Hugging Face cache) and report every setting that makes "
                    "outputs vary between calls, with how to get deterministic output; verify the files when a "
                    "manifest applies. Exit 0 when nothing makes outputs vary and the files (if checked) verify, "
                    "1 otherwise, 2 bad invocation.",
    )
    p.add_argument("target", metavar="DIR|MODEL", help="a model directory, a cache snapshot, or a cached model id")
    p.add_argument("--manifest", metavar="FILE", help="verify against this manifest (default: the one known for "
                                                      "the model id, when the target names one)")
    p.add_argument("--revision", help="with a model id: the cached revision to audit (default: main)")
    p.add_argument("--cache-dir", help="Hugging Face hub cache folder (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    p.add_argument("--no-verify", action="store_true", help="do not check file integrity")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = audit(args.target, manifest=args.manifest, revision=args.revision, cache_dir=args.cache_dir,
                   verify_files=not args.no_verify)
    if args.json:
        emit_json(report.to_dict())
    else:
        print(format_audit(report))
    return 0 if report.ok else 1
