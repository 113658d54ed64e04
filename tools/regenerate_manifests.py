#!/usr/bin/env python3
"""Regenerate modelguard's shipped manifests from the Hugging Face Hub (maintainers; needs the network).

Not run in CI. Every value comes from the Hub itself: the tree listing gives each
LFS file's sha256 and size, and each small file's git blob sha1; with the default
``--hash-small`` the small files are downloaded (a few kB each, never the weights)
to add their sha256 and md5 after checking the git sha1.

    # re-derive every shipped manifest at the commit it pins (a no-op when nothing changed)
    python tools/regenerate_manifests.py

    # only check: exit 1 and show the differences if a manifest no longer matches the Hub
    python tools/regenerate_manifests.py --check

    # move BAAI/bge-m3 to the commit main points at today, and list every file of the repo
    python tools/regenerate_manifests.py BAAI/bge-m3 --update --all-files

What is kept from the existing manifest: the pinned revision (unless ``--update``),
its file list (unless ``--all-files``; Hub files it does not list are reported),
each file's component and ``tensors`` spec, the component descriptions and the
description. A manifest without a pinned revision is pinned to main's commit.
HF_ENDPOINT points it at a mirror; HF_TOKEN authenticates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelguard.errors import ModelGuardError  # noqa: E402
from modelguard.hub import build_from_hub  # noqa: E402
from modelguard.manifest import FileEntry, Manifest, load_manifest, save_manifest  # noqa: E402

SHIPPED = Path(__file__).resolve().parent.parent / "manifests"


def regenerate(old: Manifest, *, update: bool, all_files: bool, hash_small: bool) -> tuple[Manifest, list[str]]:
    """The manifest the Hub gives today for ``old``'s model, and notes about what differs."""
    revision = None if update else old.revision
    fresh = build_from_hub(old.model, revision, hash_small=hash_small)
    notes: list[str] = []
    old_by_path = {e.path: e for e in old.files}
    fresh_by_path = {e.path: e for e in fresh.files}
    keep = set(fresh_by_path) if all_files else set(old_by_path)
    gone = sorted(set(old_by_path) - set(fresh_by_path))
    if gone:
        notes.append(f"not on the Hub at {fresh.revision}: {', '.join(gone)} (dropped)")
    unlisted = sorted(set(fresh_by_path) - set(old_by_path))
    if unlisted and not all_files:
        notes.append(f"on the Hub but not in the manifest (pass --all-files to add): {', '.join(unlisted)}")
    components = dict(fresh.components)
    components.update(old.components)
    entries = []
    for path in sorted(keep & set(fresh_by_path)):
        new = fresh_by_path[path]
        prev = old_by_path.get(path)
        component = prev.component if prev is not None else new.component
        if component not in components:
            components[component] = fresh.components[new.component]
        entry = FileEntry(path=path, size=new.size, component=component, digests=dict(new.digests),
                          tensors=prev.tensors if prev is not None else None)
        if prev is not None:
            changed = [a for a in prev.digests if a in new.digests and prev.digests[a] != new.digests[a]]
            if changed or prev.size != new.size:
                notes.append(f"{path}: changed ({', '.join(changed) or 'size'})")
        else:
            notes.append(f"{path}: added")
        entries.append(entry)
    used = {e.component for e in entries}
    manifest = Manifest(
        model=old.model, revision=fresh.revision,
        components={n: c for n, c in components.items() if n in used},
        files=tuple(entries), description=old.description or fresh.description,
    )
    if old.revision != fresh.revision:
        notes.insert(0, f"revision {old.revision or '(none)'} -> {fresh.revision}")
    return manifest, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", metavar="MODEL", help="model ids to regenerate (default: all shipped)")
    parser.add_argument("--manifests", type=Path, default=SHIPPED, help=f"manifest folder (default: {SHIPPED})")
    parser.add_argument("--update", action="store_true", help="pin the commit main points at now")
    parser.add_argument("--all-files", action="store_true", help="list every file of the repo, not only the current ones")
    parser.add_argument("--no-hash-small", dest="hash_small", action="store_false",
                        help="do not download small files (their manifest entries then carry only git_sha1)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if any manifest would change")
    args = parser.parse_args(argv)

    paths = sorted(p for p in args.manifests.rglob("*.yaml") if p.is_file())
    manifests = [(p, load_manifest(p)) for p in paths]
    if args.models:
        wanted = set(args.models)
        unknown = wanted - {m.model for _, m in manifests}
        if unknown:
            print(f"error: no manifest in {args.manifests} for: {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        manifests = [(p, m) for p, m in manifests if m.model in wanted]
    differs = False
    for path, old in manifests:
        try:
            new, notes = regenerate(old, update=args.update, all_files=args.all_files, hash_small=args.hash_small)
        except ModelGuardError as exc:
            print(f"{old.model}: error: {exc}", file=sys.stderr)
            return 1
        # Digests added where none differ (e.g. md5 next to a matching sha256) are not a change.
        same = not [n for n in notes if not n.startswith("on the Hub but not")]
        differs |= not same
        status = "unchanged" if same else ("would change" if args.check else "updated")
        print(f"{old.model} @ {new.revision}: {status} ({path})")
        for note in notes:
            print(f"  {note}")
        if not same and not args.check:
            save_manifest(new, path)
    return 1 if args.check and differs else 0


if __name__ == "__main__":
    sys.exit(main())
