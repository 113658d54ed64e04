"""The record of guarded loads that ``modelguard lock record`` turns into lock entries.

When ``$MODELGUARD_RECORD`` names a file, the guard appends one JSON line per model load it
let through (:func:`record_load`): the model id, the revision, the folder, the files the
loader reads, how the expectations were found, and the loader. The file is opened with
``O_APPEND`` and each line is written with one ``write``, so the processes of one program
(workers, subprocesses) can record into the same file. :func:`read_records` reads it back.
Standard library only: the guard calls this at load time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable

from .errors import UsageError

ENV_RECORD = "MODELGUARD_RECORD"
FORMAT = 1


@dataclass(frozen=True)
class LoadRecord:
    """One guarded load: ``model`` (Hub id or None), ``revision`` (as resolved, or as asked when
    the model was not in the cache yet), ``directory`` (None: not downloaded before the load),
    ``files`` (relative paths the loader reads; None: not known before the load, such as a model
    the loader downloads, so whatever its snapshot holds afterwards), ``how`` (the resolution's),
    ``loader``, ``cache_dir`` (the loader's own, if it named one)."""

    model: str | None
    revision: str | None
    directory: str | None
    files: tuple[str, ...] | None
    how: str
    loader: str
    cache_dir: str | None = None


def recording_path() -> str | None:
    """The record file named by ``$MODELGUARD_RECORD``, or None when nothing is recorded."""
    value = os.environ.get(ENV_RECORD, "").strip()
    return value or None


def record_load(model: str | None, revision: str | None, directory: str | os.PathLike[str] | None,
                files: Iterable[str] | None, *, how: str, loader: str,
                cache_dir: str | os.PathLike[str] | None = None) -> None:
    """Append one load to the record file; nothing when ``$MODELGUARD_RECORD`` is unset."""
    path = recording_path()
    if path is None:
        return
    line = json.dumps({
        "modelguard-record": FORMAT, "model": model, "revision": revision,
        "directory": None if directory is None else os.fspath(directory),
        "files": None if files is None else sorted(set(files)), "how": how, "loader": loader,
        "cache_dir": None if cache_dir is None else os.fspath(cache_dir),
    }, sort_keys=True) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise UsageError(
            f"cannot record the load of {model or directory} in {path}: {exc.strerror}", path=path,
            remedy=f"unset {ENV_RECORD}, or point it at a file this program can write",
        ) from None


def read_records(path: str | os.PathLike[str]) -> list[LoadRecord]:
    """The loads recorded in ``path`` (none if it does not exist), in order; a line that is not
    a record of this format (a write cut short by a crash) is skipped."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if not isinstance(data, dict) or data.get("modelguard-record") != FORMAT:
            continue
        files = data.get("files")
        records.append(LoadRecord(
            model=_text(data.get("model")), revision=_text(data.get("revision")),
            directory=_text(data.get("directory")),
            files=tuple(f for f in files if isinstance(f, str)) if isinstance(files, list) else None,
            how=_text(data.get("how")) or "unknown", loader=_text(data.get("loader")) or "unknown",
            cache_dir=_text(data.get("cache_dir")),
        ))
    return records


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
