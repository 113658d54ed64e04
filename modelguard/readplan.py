"""What a verify works out once per frozen manifest (and set of components asked for) and keeps
while the manifest is in use: its files in the orders a verify uses (:class:`ManifestOrder`:
largest first for the readers, the report's order, the set of listed paths) and the batches its
small files straight in the model folder make for :mod:`modelguard.quickpath`'s tight loop, and
their paths (:func:`full_paths`); :func:`per_manifest` is the one memo, which quickpath's
per-file templates use too (a frozen manifest does not change; the memo holds a weak
reference to it).
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Callable, Iterable, NamedTuple

from .hashing import CHUNK_SIZE

SMALL_BYTES = CHUNK_SIZE - 1  # files up to this size are read with one call (and one byte more) in read_batch
BATCH_BYTES = 1 << 20  # small files handed to a reader thread together, up to this many bytes
BATCH_FILES = 64
_MEMO: dict[tuple, tuple[Any, Any]] = {}  # (id(manifest), what): (weak reference, value)


def per_manifest(manifest: Any, key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, once per frozen :class:`Manifest` and ``key`` (a frozen manifest does not
    change); kept for the last few manifests verified."""
    held = _MEMO.get(key)
    if held is not None and held[0]() is manifest:
        return held[1]
    if len(_MEMO) >= 48:  # a few kinds per manifest (templates, orders, hits, plans): those of manifests gone first
        for gone in [k for k, (ref, _) in list(_MEMO.items()) if ref() is None]:
            _MEMO.pop(gone, None)
        if len(_MEMO) >= 48:
            _MEMO.clear()
    value = make()
    _MEMO[key] = (weakref.ref(manifest), value)
    return value


class Planned(list):
    """A batch of a manifest's small files straight in the folder (:attr:`ManifestOrder.small`):
    the same list every verify of the manifest, so what a reader works out for it once holds."""


class ManifestOrder(NamedTuple):
    """A manifest's files (or those of some of its components) in the orders a verify uses,
    worked out once."""

    by_size: tuple  # largest first: the readers do not end on one big file
    by_path: tuple[str, ...]  # the paths in the report's order
    paths: frozenset[str]  # every listed path: what is not among them is an extra file
    # by_size less the small files straight in the folder below: larger than those, the rest
    large: tuple
    rest: tuple
    # the small files straight in the folder (see :func:`~modelguard.quickpath.batches`), largest first, in the batches a
    # reader takes: (their names, the batch)
    small: tuple[tuple[tuple[str, ...], list], ...]

    @classmethod
    def of(cls, entries: Iterable[Any]) -> ManifestOrder:
        entries = tuple(entries)
        by_size = tuple(sorted(entries, key=lambda e: -(e.size or 0)))
        large, rest, small, batch, batch_bytes = [], [], [], Planned(), 0
        for e in by_size:
            if not small_and_straight_in(e):
                (large if (e.size or 0) > SMALL_BYTES else rest).append(e)
                continue
            batch.append(e)
            batch_bytes += e.size
            if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_FILES:
                small.append(batch)
                batch, batch_bytes = Planned(), 0
        if batch:
            small.append(batch)
        return cls(by_size, tuple(sorted(e.path for e in entries)), frozenset(e.path for e in entries),
                   tuple(large), tuple(rest), tuple((tuple(e.path for e in b), b) for b in small))


def small_and_straight_in(entry: Any) -> bool:
    """Whether ``entry`` may go in a batch that :func:`~modelguard.quickpath.read_batch` reads in its tight loop, once
    the folder's listing names it a regular file."""
    return bool(entry.size) and entry.size <= SMALL_BYTES and "/" not in entry.path


def manifest_order(manifest: Any, components: frozenset[str] | None = None) -> ManifestOrder:
    """:class:`ManifestOrder` of ``manifest``'s files (of ``components`` only, when given),
    kept while the manifest is in use."""
    if components is None:
        return per_manifest(manifest, (id(manifest), "order"), lambda: ManifestOrder.of(manifest.files))
    return per_manifest(manifest, (id(manifest), "order", components),
                         lambda: ManifestOrder.of(e for e in manifest.files if e.component in components))


def full_paths(manifest: Any, entries: tuple, root_text: str) -> tuple[tuple, tuple, tuple, tuple]:
    """``(entries, their paths, the same encoded, their relative paths encoded)`` under the
    folder ``root_text``, made once per manifest, sequence of its entries and folder: a path
    made afresh costs a concatenation and the hashing of a new string, and a ``str`` path costs
    an encoding in every ``stat``."""
    prefix = root_text + os.sep

    def make() -> tuple[tuple, tuple, tuple, tuple]:
        paths = tuple(prefix + e.path for e in entries)
        return entries, paths, tuple(map(os.fsencode, paths)), tuple(os.fsencode(e.path) for e in entries)

    # the value holds ``entries``: while it is kept, no other sequence can have that id
    held = per_manifest(manifest, (id(manifest), "paths", id(entries), prefix), make)
    return held if held[0] is entries else make()
