"""``modelguard lock add ORG/NAME[@REV] ... [--from DIR] [--lock FILE] [--cache-dir DIR] [--json]``;
``modelguard lock record -- CMD ...`` (:mod:`.lock_record`)."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from ..env import is_offline
from ..errors import ModelGuardError, UsageError
from ..locking import entry_for_model
from ..lockfile import LOCK_NAME, Lock, SignedBy, dump_lock, find_lock, load_lock, validate_signed_by, write_lock
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
    add.add_argument("--signed-by-key", metavar="KEY.pem",
                     help="require the models to be signed (model.sig) with this PEM public key at load and by "
                          "verify --lock; recorded relative to the lock file's folder when inside it. Adding a "
                          "model again without --signed-by-key/--signed-by-identity keeps its recorded signer")
    add.add_argument("--signed-by-identity", metavar="EMAIL_OR_URI",
                     help="require a Sigstore signature by this identity (with --identity-provider)")
    add.add_argument("--identity-provider", metavar="URL", help="the OIDC issuer of --signed-by-identity")
    add.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    add.set_defaults(run=run_add)
    add_record_parser(actions)


def lock_target(named: str | None) -> Path:
    """Where ``lock add`` writes: ``--lock``, else the lock that applies here, else ./modelguard.lock."""
    if named:
        return Path(named)
    return find_lock() or Path(os.getcwd()) / LOCK_NAME


def signed_by_option(args: argparse.Namespace, lock_path: Path) -> SignedBy | None:
    """The ``signed_by`` the options name (validated as the lock validates it), or None."""
    key, identity, provider = args.signed_by_key, args.signed_by_identity, args.identity_provider
    if key is None and identity is None and provider is None:
        return None
    if key is not None:
        if identity is not None or provider is not None:
            raise UsageError("--signed-by-key and --signed-by-identity/--identity-provider exclude each other",
                             remedy="name the key or the Sigstore identity the model is signed with, not both")
        if not Path(key).is_file():
            raise UsageError(f"--signed-by-key {key}: no such file", path=key, expected="a PEM public key file",
                             remedy="pass the publisher's public key (e.g. made with openssl ec -pubout)")
        absolute = Path(os.path.abspath(key))
        folder = Path(os.path.abspath(lock_path)).parent
        written = os.path.relpath(absolute, folder) if absolute.is_relative_to(folder) else str(absolute)
        fields = {"public_key": written}
    else:
        if identity is None:
            raise UsageError("--identity-provider names the issuer of --signed-by-identity, which is missing",
                             remedy="add --signed-by-identity EMAIL_OR_URI")
        fields = {"identity": identity, **({"identity_provider": provider} if provider is not None else {})}
    try:
        return validate_signed_by(fields, "(command line)", "signed_by")
    except ModelGuardError as exc:
        raise UsageError(exc.message.replace("lock file (command line): ", ""), expected=exc.expected,
                         actual=exc.actual, remedy="--signed-by-key KEY.pem, or --signed-by-identity EMAIL_OR_URI "
                                                   "--identity-provider URL") from None


def run_add(args: argparse.Namespace) -> int:
    if args.source_dir is not None and len(args.models) != 1:
        raise UsageError("--from DIR holds one model; name exactly one ORG/NAME[@COMMIT]",
                         actual=" ".join(args.models), remedy="run lock add once per folder")
    path = lock_target(args.lock)
    current = load_lock(path) if path.exists() else Lock(path=path)
    how = (f"hashed from {args.source_dir}" if args.source_dir is not None
           else "from the Hugging Face cache" if is_offline() else "from the Hub's metadata")
    signed_by = signed_by_option(args, path)
    entries = [entry_for_model(spec, source_dir=args.source_dir, cache_dir=args.cache_dir) for spec in args.models]
    if signed_by is not None:  # without the options, a re-added model keeps its recorded signer (Lock.merged)
        entries = [replace(e, signed_by=signed_by) for e in entries]
    updated = current.merged(entries)
    entries = [updated.entries[e.model_id] for e in entries]
    text = dump_lock(updated)
    try:
        unchanged = path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        unchanged = False
    if not unchanged:
        write_lock(path, updated)
    if args.json:
        emit_json({"ok": True, "lock": str(path), "changed": not unchanged,
                   "models": [{"model": e.model_id, "revision": e.revision, "files": len(e.manifest.files),
                               "signed_by": None if e.signed_by is None else e.signed_by.to_dict()}
                              for e in entries]})
        return 0
    for e in entries:
        signer = f", signed by {e.signed_by.describe()}" if e.signed_by is not None else ""
        print(f"locked {e.model_id} @ {e.revision} ({len(e.manifest.files)} file(s), {how}{signer})")
    print(f"{'unchanged' if unchanged else 'wrote'} {path} ({len(updated.entries)} model(s))")
    return 0
