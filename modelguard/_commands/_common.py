"""Helpers shared by CLI commands: resolving a target to a manifest and a directory, progress."""

from __future__ import annotations

import os
import sys
from shlex import quote
import threading
import time
from pathlib import Path

from ..errors import UsageError
from ..manifest import Manifest, load_manifest


def looks_like_manifest_file(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or os.path.isfile(target)


def resolve_target(target: str, directory: str | None, revision: str | None = None,
                   cache_dir: str | None = None) -> tuple[Manifest, Path]:
    """A manifest file or a model id with a known manifest, plus the directory to check.

    Without ``directory``, a model id's snapshot in the Hugging Face cache is used.
    """
    from .. import hfcache, registry

    if looks_like_manifest_file(target):
        manifest = load_manifest(target)
    elif os.path.isdir(target) and not _is_known_model(target, revision):
        raise UsageError(
            f"{target} is a directory; TARGET is a manifest file or a model id",
            expected="modelguard verify TARGET [DIR], e.g. modelguard verify BAAI/bge-m3 " + quote(target),
            actual=target,
            remedy=f"name the manifest first: modelguard verify MANIFEST.yaml {quote(target)}, "
                   f"or write one: modelguard build {quote(target)} --model ORG/NAME -o MANIFEST.yaml",
        )
    else:
        manifest = registry.require_manifest(target, revision)
    if directory is not None:
        return manifest, Path(directory)
    snap = hfcache.require_snapshot(
        manifest.model, manifest.revision or revision, cache_dir,
        how_to_pass=f"pass the directory: modelguard verify {quote(target)} DIR",
    )
    return manifest, snap


def _is_known_model(target: str, revision: str | None) -> bool:
    from .. import registry

    try:
        return registry.find_manifest(target, revision) is not None
    except UsageError:  # not a model id at all
        return False


class Progress:
    """A byte counter drawn on stderr when it is a terminal and the job is long."""

    def __init__(self, total: int, label: str, *, min_total: int = 256 * 1024 * 1024) -> None:
        self.total = total
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty() and total >= min_total
        self._lock = threading.Lock()
        self._last = 0.0

    def __call__(self, n: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last < 0.2:
                return
            self._last = now
            pct = 100.0 * self.done / self.total if self.total else 100.0
            sys.stderr.write(f"\r{self.label}: {pct:5.1f}% of {self.total / 1e9:.2f} GB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()
