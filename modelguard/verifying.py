"""``modelguard.verify(target, directory=None)``: resolve the target, then run the verify engine.

The engine (:func:`modelguard.engine.verify_directory`) takes a Manifest and a directory;
this is the front door that also accepts a manifest file or a model id and, without a
directory, checks the model's snapshot in the Hugging Face cache. A cache snapshot with no saved
listing is checked against the Hub's listing fetched in memory when the Hub may be reached
(:func:`modelguard.hub.complete_expectations`), else against its blobs' content addresses.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from .engine import verify_directory
from .hub import complete_expectations
from .manifest import Manifest
from .report import VerifyReport, format_report
from .resolve import resolve_verify_target

__all__ = ["verify", "format_report", "VerifyReport"]


def verify(
    manifest: Manifest | str | os.PathLike[str],
    directory: str | os.PathLike[str] | None = None,
    *,
    components: Iterable[str] | None = None,
    strict_extra: bool = False,
    all_digests: bool = False,
    cache: Any = True,
    rehash: bool | None = None,
    progress: Callable[[int], None] | None = None,
    max_workers: int | None = None,
) -> VerifyReport:
    """Verify ``directory`` against ``manifest`` and return a frozen report.

    ``manifest`` is a :class:`Manifest`, the path of a manifest file, or a model id with a
    known manifest (``"BAAI/bge-m3"``, see :mod:`modelguard.registry`). Without
    ``directory``, the model's snapshot in the Hugging Face cache is checked. The other
    arguments are those of :func:`modelguard.engine.verify_directory`: ``components``,
    ``strict_extra``, ``all_digests``, ``cache`` (True: the durable digest cache; False:
    re-hash; a folder; or an object with ``lookup``/``store``), ``rehash`` (True: hash every file
    in full whatever the cache holds, and store what verifies; default ``MODELGUARD_REHASH``),
    ``progress``, ``max_workers``.
    """
    resolution = complete_expectations(resolve_verify_target(manifest, directory))
    return verify_directory(
        resolution.manifest, resolution.directory, components=components, strict_extra=strict_extra, all_digests=all_digests,
        cache=cache, rehash=rehash, progress=progress, max_workers=max_workers,
    )
