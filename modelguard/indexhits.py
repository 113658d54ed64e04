"""Answering a verify's files from the model folder's digest index
(:mod:`modelguard.statindex`): the engine's warm loop.

:func:`cached_hits` answers, in the verify's thread, every file whose stat key and digests
the folder's index still holds: one ``lstat`` (relative to the open model folder: its path is
not walked again per file) and a record compare per file, no other work (a Hugging Face cache
snapshot's link: a ``readlink`` and the ``lstat`` of its blob, :func:`~modelguard.fs.linked_file`,
and the blob's record). A record found to hold the expected digests is remembered by identity
(the index's records are never changed in place), so a later verify that meets the same record
compares only the stat key, the type and the record's age. Once a verify has answered a
manifest's files from one decoded index, what it found is kept as a plan (:class:`_Plan`):
while a later verify of the same folder reads the same index bytes (the same decoded records,
:attr:`~modelguard.statindex.FolderView.source`) and has changed none, each file the plan
holds costs only its ``lstat`` and the compare of its stat key and type, the records' ages
compared once for all. Whatever cannot be answered at once (no record, a record that differs,
any other link, a missing file, a folder on the way) goes to the engine's general checks,
which take every trust and diagnosis decision as before.

The results a hit and a verified read give are made once per manifest file (:func:`templates`),
frozen, their mappings read-only: the reports of every verify that finds the file unchanged
share them.
"""

from __future__ import annotations

import os
import stat
from types import MappingProxyType
from typing import Any, NamedTuple

from .fs import human_size, linked_file
from .readplan import full_paths, per_manifest
from .report import OK, FileResult
from .statindex import FolderView

_NEW = object.__new__
_SET = object.__setattr__


def ok_result(entry: Any, required: bool, size: int, digests: dict[str, str], cached: bool) -> FileResult:
    """The result of a file that verified (as the engine's ``_ok`` builds it), built directly."""
    result = _NEW(FileResult)
    shown = f"{size} B" if size < 1000 else f"{size / 1000:.2f} KB" if size < 1000_000 else human_size(size)
    _SET(result, "__dict__", {
        "path": entry.path, "component": entry.component, "required": required, "status": OK, "diagnosis": "ok",
        "message": f"ok ({shown}, {'+'.join(digests)}{', cached' if cached else ''})",
        "expected": {"size": entry.size, **entry.digests} if entry.size is not None else dict(entry.digests),
        "actual": {"size": size, **digests}, "remedy": None, "cached": cached})
    return result


def templates(manifest: Any, all_digests: bool) -> dict[str, tuple]:
    """Per manifest file, what a cache hit needs: the digests to compare and the result (a
    hit's result is the same every time the file is unchanged); filled as files are met."""
    return per_manifest(manifest, (id(manifest), all_digests), dict)


def cached_hits(checker: Any, entries: tuple, results: dict[str, FileResult]) -> tuple | list[Any]:
    """Put in ``results`` every entry its folder index answers; return the others, in order
    (``entries`` itself when the index holds no record to look at)."""
    view = checker.cache
    records = view.records if type(view) is FolderView and view.believed else None
    if not records:
        return entries  # itself: batches() knows then that nothing was answered
    manifest = checker.manifest
    plans = per_manifest(manifest, (id(manifest), checker.all_digests, "plans", checker.root_text), dict)
    plan = plans.get(id(entries))
    checked = per_manifest(manifest, (id(manifest), checker.all_digests, "hits"), dict)
    if (plan is not None and plan.source is view.source and plan.entries is entries and not view.touched
            and checker.root_fd is not None and view.oldest_ns <= plan.oldest and plan.newest <= view.newest_ns):
        return _replay(checker, plan, view, records, checked, results)
    rest = _answer(checker, entries, view, records, checked, results)
    if view.source and not view.touched:
        plans[id(entries)] = _Plan.of(checker, entries, view.source, checked)
    return rest


class _Plan(NamedTuple):
    """What a verify found answering ``entries`` from the decoded index ``source``: per file
    its index record held the expected digests under (in ``entries``' order), ``(entry, its
    path relative to the model folder, encoded, its folder or None, the record's stat key, the
    hit's result)``; the other files, in order (one sequence every replay hands
    :func:`_answer`, so its paths are made once too); the oldest and newest time those records
    were stored."""

    source: dict
    entries: tuple
    files: tuple
    others: tuple
    oldest: int
    newest: int

    @classmethod
    def of(cls, checker: Any, entries: tuple, source: dict, checked: dict) -> "_Plan":
        _, paths, _, relative_paths = full_paths(checker.manifest, entries, checker.root_text)
        files, others, stored = [], [], []
        for entry, path, rel in zip(entries, paths, relative_paths):
            known = checked.get(entry.path)
            if known is not None and source.get(path) is known[0]:  # this index's record, checked
                files.append((entry, rel, entry.path.rpartition("/")[0] or None, known[1], known[3]))
                stored.append(known[2])
            else:
                others.append(entry)
        return cls(source, entries, tuple(files), tuple(others), min(stored, default=0), max(stored, default=0))


def _replay(checker: Any, plan: _Plan, view: FolderView, records: dict, checked: dict,
            results: dict[str, FileResult]) -> list[Any]:
    """:func:`cached_hits` by ``plan``: the verify's records are the plan's (the same decoded
    index, none changed), each held the expected digests when the plan was made and none has
    expired; a file the plan holds is answered when its ``lstat`` gives the record's key and a
    regular file, every other goes through :func:`_answer`."""
    rest = []
    fd, plain_dirs, is_reg, stat_at = checker.root_fd, checker.plain_dirs, stat.S_ISREG, os.stat
    for entry, rel, folder, key, result in plan.files:
        if folder is not None and folder not in plain_dirs:
            checker.plain_file(entry.path)  # learns the folder, once
            if folder not in plain_dirs:
                rest.append(entry)
                continue
        try:
            st = stat_at(rel, dir_fd=fd, follow_symlinks=False)
        except OSError:
            rest.append(entry)
            continue
        if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev) == key and is_reg(st.st_mode):
            results[entry.path] = result
        else:
            rest.append(entry)
    if plan.others:
        rest += _answer(checker, plan.others, view, records, checked, results)
        if len(rest) > 1:  # in the order given (largest first, for the readers)
            place = {id(e): i for i, e in enumerate(plan.entries)}
            rest.sort(key=lambda e: place[id(e)])
    return rest


def _answer(checker: Any, entries: tuple, view: FolderView, records: dict, checked: dict,
            results: dict[str, FileResult]) -> list[Any]:
    """:func:`cached_hits` file by file: each record looked up and compared (each one found to
    hold the expected digests remembered in ``checked``, by identity)."""
    rest = []
    lstat, is_reg = os.lstat, stat.S_ISREG
    oldest, newest = view.oldest_ns, view.newest_ns
    plain_dirs = checker.plain_dirs
    memo = templates(checker.manifest, checker.all_digests)
    _, paths, raw_paths, relative_paths = full_paths(checker.manifest, entries, checker.root_text)
    roots, link_folders = checker.roots, checker.link_folders
    # stat'ed relative to the open model folder: the path's folders are not walked again per file
    fd = checker.root_fd
    stat_at = os.stat
    for entry, path, raw, rel in zip(entries, paths, raw_paths, relative_paths):
        relative = entry.path
        if "/" in relative and relative.rpartition("/")[0] not in plain_dirs:
            checker.plain_file(relative)  # learns the folder, once
            if relative.rpartition("/")[0] not in plain_dirs:
                rest.append(entry)
                continue
        record = records.get(path)
        if record is not None:
            try:
                st = lstat(raw) if fd is None else stat_at(rel, dir_fd=fd, follow_symlinks=False)
            except OSError:
                rest.append(entry)
                continue
        else:  # a link (a Hugging Face cache snapshot's) has its target's record
            linked = linked_file(path, roots, link_folders)
            record = None if linked is None else records.get(linked[0])
            if record is None:
                rest.append(entry)
                continue
            st = linked[1]
        known = checked.get(relative)
        if known is not None and known[0] is record:  # this record object was checked before
            _, key, stored, result = known
            if (key == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev) and is_reg(st.st_mode)
                    and oldest <= stored <= newest):
                results[relative] = result
            else:
                rest.append(entry)
            continue
        wanted, fields, _, _ = template_of(memo, checker, entry)
        size = st.st_size
        try:
            dev, ino, rsize, mtime, ctime, stored, digests = record
            if not (is_reg(st.st_mode) and (entry.size is None or entry.size == size) and ino == st.st_ino
                    and rsize == size and mtime == st.st_mtime_ns and ctime == st.st_ctime_ns and dev == st.st_dev
                    and type(stored) is int and oldest <= stored <= newest):
                rest.append(entry)
                continue
            # equal to the manifest's value: a valid digest, and the one expected
            for algorithm, value in wanted.items():
                if digests.get(algorithm) != value:
                    break
            else:
                if fields is None:  # no size in the manifest: the message says the size found
                    result = ok_result(entry, checker.manifest.components[entry.component].required, size,
                                       dict(wanted), True)
                else:
                    result = fields  # the same every time: one object, read-only mappings
                    # the index's records are never changed in place: while this record object is
                    # the folder's, a hit needs only its stat key, its age and the file's type
                    checked[relative] = (record, (ino, rsize, mtime, ctime, dev), stored, result)
                results[relative] = result
                continue
        except Exception:  # a malformed record: the general lookup drops it
            pass
        rest.append(entry)
    return rest


def template_of(memo: dict[str, tuple], checker: Any, entry: Any) -> tuple:
    """``entry``'s :func:`_template`, made the first time a verify of its manifest meets it."""
    held = memo.get(entry.path)
    if held is None:
        held = memo[entry.path] = _template(checker, entry)
    return held


def _template(checker: Any, entry: Any) -> tuple[dict[str, str], FileResult | None, FileResult | None, str | None]:
    """The digests to compare; the result of a cache hit and the result of a read that
    verified (frozen, their mappings read-only, so the reports of every verify share them);
    the sha256 when it is the only digest to compare."""
    wanted = {a: entry.expected_digest(a) for a in checker.algorithms_for(entry)}
    only = wanted["sha256"] if len(wanted) == 1 and "sha256" in wanted else None
    if entry.size is None:
        return wanted, None, None, only
    required = checker.manifest.components[entry.component].required
    return wanted, _frozen(ok_result(entry, required, entry.size, dict(wanted), True)), \
        _frozen(ok_result(entry, required, entry.size, dict(wanted), False)), only


def _frozen(result: FileResult) -> FileResult:
    """``result`` with read-only mappings: one object every verify that finds the file unchanged shares."""
    _SET(result, "expected", MappingProxyType(result.expected))
    _SET(result, "actual", MappingProxyType(result.actual))
    return result
