"""Manifests from the Hub's metadata: the tree listing of a commit gives every file's size and
sha256 (LFS) or git blob sha1 (small files), so no weights are downloaded."""

from __future__ import annotations

from typing import Any, Iterable

from .. import registry
from ..build import filter_paths, resolve_rules
from ..env import hub_endpoint
from ..errors import DownloadError, UsageError
from ..hashing import hash_bytes
from ..manifest import Component, FileEntry, Manifest, check_relative_path
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
    try:
        tree = [item for item in api.list_repo_tree(model, revision=commit, recursive=True)
                if type(item).__name__ == "RepoFile"]
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, model, commit, None, endpoint) from None
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
