"""``modelguard lock add ORG/NAME[@REV] ... [--from DIR] [--lock FILE] [--cache-dir DIR] [--json]``;
``modelguard lock record -- CMD ...`` (:mod:`.lock_record`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..env import is_offline
from ..errors import UsageError
from ..locking import entry_for_model
from ..lockfile import LOCK_NAME, Lock, dump_lock, find_lock, load_lock, write_lock
from ..output import emit_json
from .lock_record import add_record_parser


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lock",
        help=f"pin the models a project uses, with every file's size and digests, in {LOCK_NAME}",
        description=f"Manage the project lock ({LOCK_NAME}: $MODELGUARD_LOCK, else the first one in the working "
                    "directory or above). With a lock, the guard loads a locked model only at its locked commit "
                    "and with the locked bytes.",
    )
    actions = p.add_subparsers(dest="lock_command", metavar="ACTION", parser_class=type(p))
    actions.required = True
    add = actions.add_parser(
        "add",
        help="add or update models in the lock",
        description="Pin each model at a commit (a branch or tag is resolved to its commit) with its files' sizes "
                    "and digests: online from the Hub's metadata (no weights are downloaded), offline "
                    "(HF_HUB_OFFLINE=1) from the model's snapshot in the Hugging Face cache, or from a local "
                    "folder (--from DIR, hashed). Creates the lock if absent; adding the same models again "
                    "leaves the file byte-identical. Exit 0 written, 1 the Hub failed, 2 bad invocation.",
    )
    add.add_argument("models", metavar="ORG/NAME[@REV]", nargs="+", help="models to pin (default revision: main)")
    add.add_argument("--from", dest="source_dir", metavar="DIR",
                     help="hash the files of this folder (one model; a commit from the folder or ORG/NAME@COMMIT)")
    add.add_argument("--lock", metavar="FILE",
                     help=f"the lock file (default: $MODELGUARD_LOCK, else {LOCK_NAME} here or above, else "
                          f"./{LOCK_NAME})")
    add.add_argument("--cache-dir", metavar="DIR",
                     help="Hugging Face hub cache folder for offline locking (default: $HF_HUB_CACHE)")
    add.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    add.set_defaults(run=run_add)
    add_record_parser(actions)


def lock_target(named: str | None) -> Path:
    """Where ``lock add`` writes: ``--lock``, else the lock that applies here, else ./modelguard.lock."""
    if named:
        return Path(named)
    return find_lock() or Path(os.getcwd()) / LOCK_NAME


def run_add(args: argparse.Namespace) -> int:
    if args.source_dir is not None and len(args.models) != 1:
        raise UsageError("--from DIR holds one model; name exactly one ORG/NAME[@COMMIT]",
                         actual=" ".join(args.models), remedy="run lock add once per folder")
    path = lock_target(args.lock)
    current = load_lock(path) if path.exists() else Lock(path=path)
    how = (f"hashed from {args.source_dir}" if args.source_dir is not None
           else "from the Hugging Face cache" if is_offline() else "from the Hub's metadata")
    entries = [entry_for_model(spec, source_dir=args.source_dir, cache_dir=args.cache_dir) for spec in args.models]
    updated = current.merged(entries)
    text = dump_lock(updated)
    try:
        unchanged = path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        unchanged = False
    if not unchanged:
        write_lock(path, updated)
    if args.json:
        emit_json({"ok": True, "lock": str(path), "changed": not unchanged,
                   "models": [{"model": e.model_id, "revision": e.revision, "files": len(e.manifest.files)}
                              for e in entries]})
        return 0
    for e in entries:
        print(f"locked {e.model_id} @ {e.revision} ({len(e.manifest.files)} file(s), {how})")
    print(f"{'unchanged' if unchanged else 'wrote'} {path} ({len(updated.entries)} model(s))")
    return 0
