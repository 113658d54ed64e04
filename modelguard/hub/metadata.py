"""Manifests from the Hub's metadata: the tree listing of a commit gives every file's size and
sha256 (LFS) or git blob sha1 (small files), so no weights are downloaded.

:func:`complete_expectations` uses the same listing, in memory, for a cache snapshot whose
listing was not saved at download (an older client, ``hf_hub_download`` of single files)."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

from .. import hflisting, registry
from ..build import filter_paths, resolve_rules
from ..env import hub_endpoint, is_offline
from ..errors import DownloadError, ModelGuardError, UsageError
from ..hashing import hash_bytes
from ..manifest import Component, FileEntry, Manifest, check_relative_path
from ..resolve import Resolution
from .client import hub_error, model_info


def resolve_revision(model: str, revision: str | None = None) -> str:
    """The commit a branch, tag or commit of ``model`` names on the Hub."""
    return model_info(model, revision or "main")[0]


def build_from_hub(
    model: str,
    revision: str | None = None,
    *,
    rules: Any = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    hash_small: bool = False,
) -> Manifest:
    """A manifest from the Hub's tree listing of ``model`` at ``revision``, without
    downloading weights: LFS files get their sha256 and size, small files their git
    blob sha1 (plus sha256/md5 when ``hash_small`` downloads them). A branch or tag
    is resolved to its commit, and the commit is pinned.
    """
    registry.validate_model_id(model)
    endpoint = hub_endpoint()
    commit, api = model_info(model, revision or "main")
    tree = _tree(api, model, commit, endpoint)
    paths = filter_paths(sorted(item.path for item in tree), include, exclude)
    if not paths:
        raise UsageError(f"{model} @ {commit} has no files to put in a manifest", remedy="check --exclude")
    rule_set = resolve_rules(rules, model, paths)
    by_path = {item.path: item for item in tree}
    entries = []
    for path in paths:
        item = by_path[path]
        check_relative_path(path, source=f"{endpoint}/{model}")
        digests: dict[str, str] = {}
        if item.lfs is not None:
            digests["sha256"] = item.lfs.sha256
            size = int(item.lfs.size)
        else:
            size = int(item.size)
            digests["git_sha1"] = item.blob_id
            if hash_small:
                digests.update(_hash_small_file(model, path, commit, endpoint, item.blob_id, size))
        entries.append(FileEntry(path=path, size=size, component=rule_set.component_for(path), digests=digests))
    used = {e.component for e in entries}
    components: dict[str, Component] = {n: c for n, c in rule_set.components.items() if n in used}
    return Manifest(model=model, revision=commit, components=components, files=tuple(entries),
                    description=f"Built from {endpoint} metadata of {model} at {commit}"
                                + (f" (asked for '{revision}')" if revision and revision != commit else ""))


def _tree(api: Any, model: str, commit: str, endpoint: str) -> list[Any]:
    """Every file (not folder) of the Hub's recursive tree listing of ``model`` at ``commit``."""
    try:
        return [item for item in api.list_repo_tree(model, revision=commit, recursive=True)
                if type(item).__name__ == "RepoFile"]
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, model, commit, None, endpoint) from None


def commit_listing(model: str, commit: str) -> dict[str, dict[str, object]]:
    """The Hub's listing of ``model`` at ``commit``, in memory, in the form
    :func:`modelguard.hflisting.parse_listing` reads a saved one (``{path: {"size": int,
    "sha256"|"git_sha1": hex}}``). The calls ``build --from-hub`` makes; nothing is written."""
    registry.validate_model_id(model)
    endpoint = hub_endpoint()
    commit, api = model_info(model, commit)
    out: dict[str, dict[str, object]] = {}
    for item in _tree(api, model, commit, endpoint):
        check_relative_path(item.path, source=f"{endpoint}/{model}")
        if item.lfs is not None:
            out[item.path] = {"size": int(item.lfs.size), "sha256": item.lfs.sha256}
        else:
            out[item.path] = {"size": int(item.size), "git_sha1": item.blob_id}
    return out


def complete_expectations(resolution: Resolution, *, all_files: bool = False) -> Resolution:
    """A cache snapshot described only by its blobs' content addresses (no saved listing): when the
    Hub may be reached (:func:`modelguard.env.is_offline`), the Hub's listing of that commit,
    fetched now and kept in memory, so files missing from the snapshot are found. When the Hub
    does not answer, the content addresses stay, and their source says why.

    ``verify`` (CLI and Python) and ``fetch`` ask this; the guard does not (no network call at load
    time): online, a loader downloads whatever the snapshot lacks itself, so a listing would only
    turn a partial cache into a refusal, and offline there is nothing to ask."""
    if resolution.manifest is None:
        return resolution
    return resolution._replace(manifest=complete_manifest(resolution.manifest, all_files=all_files))


def complete_manifest(manifest: Manifest, *, all_files: bool = False) -> Manifest:
    """``manifest`` itself, or for blob addresses the Hub's listing (see :func:`complete_expectations`)."""
    if (manifest.origin != hflisting.BLOBS or not manifest.revision or is_offline()
            or not registry.looks_like_model_id(manifest.model, namespaced=True)):
        return manifest
    try:
        digests = commit_listing(manifest.model, manifest.revision)
    except ModelGuardError as exc:
        why = str(exc).splitlines()[0]
        return dataclasses.replace(manifest, source=f"{manifest.source}; the Hub's listing could not be fetched: {why}")
    return hflisting.listing_manifest(
        digests, model=manifest.model, commit=manifest.revision, all_files=all_files, origin=hflisting.FETCHED,
        source=(f"the Hub's listing of commit {manifest.revision}, fetched from {hub_endpoint()} now "
                "(no listing was saved at download; nothing was written)"))


def _hash_small_file(model: str, path: str, commit: str, endpoint: str, git_sha1: str, size: int) -> dict[str, str]:
    """Download one small file into memory and return its sha256/md5 after checking its git sha1."""
    import io

    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    buf = io.BytesIO()
    url = hf_hub_url(model, path, revision=commit, endpoint=endpoint)
    try:
        http_get(url, buf, headers=build_hf_headers(), expected_size=size, displayed_filename=path)
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, model, commit, path, endpoint) from None
    data = buf.getvalue()
    digests = hash_bytes(data, ("git_sha1", "sha256", "md5"))
    if digests["git_sha1"] != git_sha1:
        raise DownloadError(
            f"{path} of {model} @ {commit} downloaded with git sha1 {digests['git_sha1']}, "
            f"the Hub's listing says {git_sha1}", path=path, expected=git_sha1, actual=digests["git_sha1"],
            remedy="retry; if it persists, the endpoint serves other bytes than it lists (proxy or mirror)",
        )
    return {"sha256": digests["sha256"], "md5": digests["md5"]}
