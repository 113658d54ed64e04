"""``modelguard lock record [--lock FILE] [guard options] -- CMD ...``.

Runs CMD as ``modelguard run`` does, with ``$MODELGUARD_RECORD`` naming a file in a private
temporary folder: the guard in every Python process of the command appends each load it let
through (:mod:`modelguard.recording`). When the command ends, each loaded model's Hugging
Face cache snapshot becomes a lock entry pinned to its commit, listing the files the loaders
read (with the files an entry of the same commit already lists), through
:func:`modelguard.locking.entry_for_snapshot` — offline, from the snapshot's saved listing or
the digest cache, so nothing is downloaded or hashed twice. The entries are merged into the
lock; the same loads give the same bytes. The exit code is the command's (the lock is
written whatever it is: every recorded load passed the guard), or 1 when the command
succeeded but a recorded model could not be locked.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from shlex import quote
from typing import Any, Iterable

from .. import hfcache
from ..errors import ModelGuardError
from ..lockfile import ENV_LOCK, LOCK_NAME, Lock, LockEntry, find_lock, load_lock, write_lock
from ..locking import entry_for_snapshot
from ..recording import ENV_RECORD, LoadRecord, read_records
from .run import add_guard_options, command_of, find_program, guarded_environment


def add_record_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "record",
        help="run a program guarded and add every model it loads to the lock",
        description="Run CMD as `modelguard run` does and add every model the guarded loaders load (model id, the "
                    "commit of its Hugging Face cache snapshot, the files they read) to the lock. modelguard itself "
                    "downloads nothing and hashes a file at most once; recording the same loads again leaves the "
                    "lock byte-identical. Exit code: the command's; 1 when it succeeded but a model could not be "
                    "locked; 2 when modelguard cannot start it or cannot write the lock.",
        epilog="example: modelguard lock record -- python train.py --epochs 1",
    )
    p.add_argument("--lock", metavar="FILE",
                   help=f"the lock to add to (default: ${ENV_LOCK}, else {LOCK_NAME} in the working directory "
                        f"or above, else a new {LOCK_NAME} here)")
    add_guard_options(p)
    p.set_defaults(run=run_record)


def run_record(args: argparse.Namespace) -> int:
    command = command_of(args, "lock record")
    path = Path(os.path.abspath(args.lock)) if args.lock else (find_lock() or Path.cwd() / LOCK_NAME)
    existing = load_lock(path) if path.exists() else Lock({}, path)  # a broken lock stops us before the run
    with tempfile.TemporaryDirectory(prefix="modelguard-record-") as folder:
        record = os.path.join(folder, "loads.jsonl")
        env = guarded_environment(args, **{ENV_RECORD: record})
        if path.is_file():
            env[ENV_LOCK] = str(path)  # what is locked already is enforced while recording
        else:
            env.pop(ENV_LOCK, None)
        program = find_program(command, env, "lock record")
        code = run_child(program, command, env)
        records = read_records(record)
    entries, notes, failed = entries_from_records(records, existing)
    if entries:  # only models new to the lock or changed: recording the same loads writes nothing
        write_lock(path, existing.merged(entries))
    sys.stderr.write(summary(path, entries, notes, code))
    return code if code != 0 or not failed else 1


def run_child(program: str, command: list[str], env: dict[str, str]) -> int:
    """Run the command to its end; Ctrl-C reaches it from the terminal and SIGTERM is passed on,
    while this process waits to write the lock. A command killed by signal N gives 128+N."""
    child = subprocess.Popen(command, executable=program, env=env)

    def forward(signum: int, _frame: Any) -> None:
        child.send_signal(signum)

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, forward)}
    try:
        code = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def entries_from_records(records: Iterable[LoadRecord], lock: Lock) -> tuple[list[LockEntry], list[str], bool]:
    """Lock entries for the recorded loads that are new to ``lock`` or differ from its entry (one
    per model: its snapshot's commit, the files read, plus those the lock's entry for the same
    commit lists), notes on loads not locked, and whether a model could not be locked (an error,
    such as a damaged cache copy, named in the notes)."""
    found: dict[str, tuple[str, Path, set[str] | None]] = {}
    notes: list[str] = []
    for record in records:
        located = _snapshot_of(record)
        if located is None:
            if record.directory is None and record.model is not None:
                notes.append(f"not locked: {record.model} (loaded by {record.loader}) has no snapshot in the "
                             "Hugging Face cache after the run; lock it with "
                             f"`modelguard lock add {quote(record.model)}`")
                continue
            where = record.directory or "?"
            notes.append(f"not locked: {where} (loaded by {record.loader}) is not a Hugging Face cache snapshot; "
                         f"lock a local folder with `modelguard lock add ORG/NAME --from {quote(where)}`")
            continue
        model, commit, snapshot = located
        known = found.get(model)
        if known is not None and known[0] != commit:
            notes.append(f"{model} was loaded at two commits, {known[0]} and {commit}: the lock pins the last")
            known = None
        if known is None:
            files: set[str] | None = set()
        else:
            files = known[2]
        if files is not None:
            files = None if record.files is None else files | set(record.files)
        found[model] = (commit, snapshot, files)
    entries = []
    failed = False
    for model, (commit, snapshot, files) in sorted(found.items()):
        old = lock.get(model)
        if files is not None and old is not None and old.revision == commit:
            files |= {entry.path for entry in old.manifest.files}
        try:
            entry = entry_for_snapshot(model, snapshot, files=None if files is None else sorted(files))
        except ModelGuardError as exc:
            failed = True
            notes.append(f"not locked: {model} @ {commit}: " + str(exc).replace("\n", "\n  "))
            continue
        if old is None or old.to_dict() != entry.to_dict():
            entries.append(entry)
    return entries, list(dict.fromkeys(notes)), failed


def _snapshot_of(record: LoadRecord) -> tuple[str, str, Path] | None:
    """``(model id, commit, snapshot folder)`` of a recorded load, or None (not from the cache)."""
    directory = record.directory
    if directory is None and record.model is not None:
        # Not in the cache before the load: the loader downloaded it.
        directory = hfcache.snapshot_path(record.model, record.revision, record.cache_dir)
    if directory is None:
        return None
    root = hfcache.snapshot_root(directory)
    parsed = hfcache.parse_snapshot_path(root) if root is not None else None
    if root is None or parsed is None or not root.is_dir():
        return None
    return parsed[0], parsed[1], root


def summary(path: Path, entries: list[LockEntry], notes: list[str], code: int) -> str:
    lines = []
    if entries:
        lines.append(f"modelguard lock record: {len(entries)} model(s) added to or updated in {path}:")
        lines += [f"  {e.model_id} @ {e.revision} ({len(e.manifest.files)} files)" for e in entries]
    else:
        lines.append(f"modelguard lock record: {path} unchanged: " + (
            "every model loaded is locked already" if path.is_file() else "no model from the cache was loaded"))
    lines += [f"  {note}" for note in notes]
    if code != 0:
        lines.append(f"  the command exited with code {code}; the loads before that are recorded")
    return "\n".join(lines) + "\n"
