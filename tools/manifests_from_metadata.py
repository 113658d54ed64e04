#!/usr/bin/env python3
"""Write shipped manifests from a file of published Hub metadata (offline).

    python tools/manifests_from_metadata.py tests/data/hub-metadata.yaml manifests/

The metadata file maps a model id to {revision, files: {path: {size, sha256, git_sha1, trust}}}.
Only the values it records are written: no digest is invented. Components come
from modelguard's build rules; bge-m3's head files also get their tensor shapes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelguard.build import choose_rules  # noqa: E402
from modelguard.manifest import FileEntry, Manifest, TensorSpec, save_manifest  # noqa: E402

# Shapes of bge-m3's heads: Linear(1024 -> 1) and Linear(1024 -> 1024), saved in float16.
BGE_M3_TENSORS = {
    "sparse_linear.pt": {"weight": TensorSpec((1, 1024), "float16"), "bias": TensorSpec((1,), "float16")},
    "colbert_linear.pt": {"weight": TensorSpec((1024, 1024), "float16"), "bias": TensorSpec((1024,), "float16")},
}


def manifest_for(model: str, meta: dict) -> Manifest:
    revision = meta.get("revision")
    if not isinstance(revision, str) or not re.fullmatch(r"[0-9a-f]{40}", revision):
        revision = None  # an unconfirmed revision is not recorded
    paths = sorted(meta["files"])
    rules = choose_rules(model, paths)
    entries = []
    for path in paths:
        info = meta["files"][path]
        digests = {k: info[k] for k in ("sha256", "git_sha1", "md5") if k in info}
        tensors = BGE_M3_TENSORS.get(path) if rules.name == "bge-m3" else None
        entries.append(FileEntry(path=path, size=int(info["size"]), component=rules.component_for(path),
                                 digests=digests, tensors=tensors))
    used = {e.component for e in entries}
    components = {n: c for n, c in rules.components.items() if n in used}
    return Manifest(model=model, revision=revision, components=components, files=tuple(entries),
                    description=(meta.get("notes") or "").strip() or None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metadata", help="YAML file of published Hub metadata")
    parser.add_argument("outdir", help="folder to write ORG/NAME.yaml manifests into")
    args = parser.parse_args()
    data = yaml.safe_load(Path(args.metadata).read_text())
    for model, meta in data.items():
        manifest = manifest_for(model, meta)
        out = save_manifest(manifest, Path(args.outdir) / f"{model}.yaml")
        print(f"wrote {out} ({len(manifest.files)} files, revision {manifest.revision or 'not pinned'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
