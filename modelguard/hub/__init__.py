"""The Hugging Face Hub: fetch and repair a manifest's files, scan the HF cache, write
manifests from Hub metadata. One module per concept:

- :mod:`.download`: ``fetch``, ``fetch_files``, ``repair_files`` and their results;
- :mod:`.place`: where fetched files go and how they replace old ones (kept aside, never deleted);
- :mod:`.client`: which commit a revision names, and one clear error for client failures;
- :mod:`.scan`: ``scan_cache`` over every blob and snapshot of the cache;
- :mod:`.metadata`: ``build_from_hub``, a manifest from the Hub's tree listing; ``complete_expectations``,
  that listing in memory for a cache snapshot whose listing was not saved.

huggingface_hub is imported only inside the functions that need it.
"""

from __future__ import annotations

from ..env import hub_endpoint, is_offline
from .download import MAX_ATTEMPTS, FetchResult, FileAction, complete_snapshot, fetch, fetch_files, repair_files
from .metadata import build_from_hub, commit_listing, complete_expectations, resolve_revision
from .place import QUARANTINE_DIR
from .scan import RepoScan, RevisionScan, ScanProblem, ScanReport, cache_blob_bytes, format_scan, scan_cache

__all__ = [
    "MAX_ATTEMPTS", "QUARANTINE_DIR", "FetchResult", "FileAction", "RepoScan", "RevisionScan", "ScanProblem",
    "ScanReport", "build_from_hub", "cache_blob_bytes", "commit_listing", "complete_expectations", "complete_snapshot", "fetch",
    "fetch_files", "format_scan", "hub_endpoint",
    "is_offline", "repair_files", "resolve_revision", "scan_cache",
]
