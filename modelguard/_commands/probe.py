"""``modelguard probe MODEL_OR_DIR [--json]``."""

from __future__ import annotations

import argparse

from ..output import emit_json
from ..probing import KINDS, format_probe, probe_model


def _seeds(text: str) -> tuple[int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not two integers, e.g. 0,1") from None
    if len(parts) != 2 or parts[0] == parts[1]:
        raise argparse.ArgumentTypeError(f"'{text}': give two different seeds, e.g. 0,1")
    return parts  # type: ignore[return-value]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="load a model twice under two seeds and find what makes its outputs change",
        description="Load the model under two different seeds, run fixed inputs, and compare every output: "
                    "changes with the load-time seed mean randomly initialized weights (which component); "
                    "changes with the call-time seed mean sampling. Nothing is downloaded. "
                    "Exit 0 deterministic, 1 some output changes with the seed, 2 bad invocation.",
    )
    p.add_argument("target", metavar="MODEL_OR_DIR", help="a model directory, a cache snapshot, or a cached model id")
    p.add_argument("--kind", choices=KINDS, help="how to run the model (default: detected from its files)")
    p.add_argument("--seeds", type=_seeds, default=(0, 1), metavar="A,B", help="the two seeds (default: 0,1)")
    p.add_argument("--max-new-tokens", type=int, default=8, metavar="N",
                   help="causal LMs: tokens generated per prompt (default: 8)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:0, ...")
    p.add_argument("--revision", help="with a model id: the cached revision (default: main)")
    p.add_argument("--cache-dir", help="Hugging Face hub cache folder (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    report = probe_model(args.target, kind=args.kind, seeds=args.seeds, max_new_tokens=args.max_new_tokens,
                         device=args.device, revision=args.revision, cache_dir=args.cache_dir)
    if args.json:
        emit_json(report.to_dict())
    else:
        print(format_probe(report))
    return 0 if report.deterministic else 1
