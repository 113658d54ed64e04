"""Helpers shared by CLI commands: resolving a target to a manifest and a directory, progress."""

from __future__ import annotations

import os
import sys
from shlex import quote
import threading
from pathlib import Path

from ..errors import UsageError
from ..manifest import Manifest, load_manifest


def looks_like_manifest_file(target: str) -> bool:
    return target.endswith((".yaml", ".yml")) or os.path.isfile(target)


def resolve_target(target: str, directory: str | None, revision: str | None = None,
                   cache_dir: str | None = None, *, all_files: bool = False) -> tuple[Manifest, Path]:
    """A manifest file or a model id with a known manifest, plus the directory to check.

    Without ``directory``, a model id's snapshot in the Hugging Face cache is used. With no
    manifest, a cache snapshot (or ``local_dir`` download) is checked against what the cache
    recorded: the Hub's listing saved at download, else its blobs' content addresses
    (:mod:`modelguard.hflisting`; ``all_files`` makes every listed file required).
    """
    from .. import hfcache, hflisting, registry

    if looks_like_manifest_file(target):
        manifest = load_manifest(target)
    elif os.path.isdir(target) and not _is_known_model(target, revision):
        found = hflisting.cache_expectations(target, all_files=all_files)
        if found is None:
            raise UsageError(
                f"{target} is a directory with no source of expectations: no manifest names it, and it is not a "
                "Hugging Face cache snapshot or download folder with a saved listing",
                expected="modelguard verify TARGET [DIR], e.g. modelguard verify BAAI/bge-m3 " + quote(target),
                actual=target,
                remedy=f"name the manifest first: modelguard verify MANIFEST.yaml {quote(target)}, "
                       f"or write one: modelguard build {quote(target)} --model ORG/NAME -o MANIFEST.yaml; "
                       "or download the model with snapshot_download (or `hf download`) so the Hub's listing is saved",
            )
        return found, Path(directory) if directory is not None else Path(target)
    else:
        manifest = registry.find_manifest(target, revision)
        if manifest is None:
            found = (hflisting.cache_expectations(directory, all_files=all_files, model=target)
                     if directory is not None else None)
            if found is not None:
                return found, Path(directory)
            cached = hflisting.model_expectations(target, revision, cache_dir, all_files=all_files)
            if cached is not None and directory is None:
                return cached
            manifest = registry.require_manifest(target, revision)  # raises, saying how to get a source
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
    """Bytes hashed, drawn on stderr by tqdm (percent, rate, time left) when stderr is a
    terminal and the job is long; otherwise nothing is drawn and tqdm is not imported."""

    def __init__(self, total: int, label: str, *, min_total: int = 256 * 1024 * 1024,
                 mininterval: float = 0.2) -> None:
        self.total = total
        self.label = label
        self.enabled = sys.stderr.isatty() and total >= min_total
        self._lock = threading.Lock()  # hashing threads report concurrently
        self._bar = None
        if self.enabled:
            from tqdm import tqdm  # installed with huggingface_hub

            self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=mininterval)

    def __call__(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
