"""Talking to the Hub: which commit a revision names, and one clear error for whatever the
huggingface_hub client raises. huggingface_hub is imported only inside the functions."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from shlex import quote
from typing import Any

from .. import hfcache
from ..env import hub_endpoint, is_offline
from ..errors import DownloadError, OfflineError
from ..manifest import Manifest

COMMIT = re.compile(r"\A[0-9a-f]{40}\Z")
SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")


def retry_backoff(attempt: int) -> float:
    return min(0.2 * 2 ** (attempt - 1), 4.0)


def resolve_commit(manifest: Manifest, rev: str, repo: Path | None, endpoint: str) -> str:
    """The commit a revision names: itself, the cache's refs/<rev> (offline), or the Hub's answer
    (recorded in the cache's refs/<rev> like huggingface_hub does, when ``repo`` is given)."""
    if COMMIT.match(rev):
        return rev
    if is_offline() and repo is not None:
        commit = hfcache.resolve_ref(manifest.model, rev, repo.parent)
        if commit is None:
            raise OfflineError(
                f"HF_HUB_OFFLINE is set and the cache does not know which commit '{rev}' of {manifest.model} is",
                path=repo, expected=f"{repo}/refs/{rev}", actual="not present",
                remedy="unset HF_HUB_OFFLINE, or pass --revision COMMIT",
            )
        return commit
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    first = manifest.files[0].path
    try:
        meta = get_hf_file_metadata(hf_hub_url(manifest.model, first, revision=rev, endpoint=endpoint))
    except Exception as exc:  # noqa: BLE001 - every client error becomes one clear message
        raise hub_error(exc, manifest.model, rev, first, endpoint) from None
    commit = meta.commit_hash
    if not commit or not COMMIT.match(commit):
        raise DownloadError(
            f"{endpoint} did not say which commit '{rev}' of {manifest.model} is",
            expected="an X-Repo-Commit header with 40 hex digits", actual=repr(commit),
            remedy="check HF_ENDPOINT points at a Hugging Face Hub (or mirror)",
        )
    if repo is None:
        return commit
    refs = repo / "refs" / rev
    refs.parent.mkdir(parents=True, exist_ok=True)
    tmp = refs.with_name(f".{refs.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, refs)
    return commit


def hub_error(exc: BaseException, model: str, rev: str, path: str | None, endpoint: str) -> DownloadError:
    """A clear DownloadError for an exception from huggingface_hub/httpx."""
    name = type(exc).__name__
    where = f"{model} @ {rev}" + (f": {path}" if path else "")
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return DownloadError(
            f"{model} is not on {endpoint}, or you may not read it ({name})", expected="a public or accessible repo",
            actual="repository not found", remedy="check the model id; for a private or gated model log in (hf auth login)",
        )
    if name == "RevisionNotFoundError":
        return DownloadError(f"revision '{rev}' of {model} does not exist on {endpoint}", expected="a branch, tag or commit",
                             actual=rev, remedy="check --revision and the manifest's revision")
    if name in ("RemoteEntryNotFoundError", "EntryNotFoundError"):
        return DownloadError(f"{path} is not in {model} at {rev} on {endpoint}", path=path,
                             remedy="the manifest lists a file the revision does not have: check the manifest's revision")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    return DownloadError(
        f"cannot reach {where} on {endpoint}: {name}{f' (HTTP {status})' if status else ''}: {detail}",
        expected="the Hub answering", actual=detail,
        remedy="check the network, HF_ENDPOINT and proxy settings, then retry; or set HF_HUB_OFFLINE=1 to use only the cache",
    )



def same_origin_key(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlparse

    p = urlparse(url)
    return (p.scheme, (p.hostname or "").lower(), p.port)



def model_info(model: str, revision: str) -> tuple[str, Any]:
    from huggingface_hub import HfApi

    endpoint = hub_endpoint()
    if is_offline():
        raise OfflineError(
            f"HF_HUB_OFFLINE is set; reading {model}'s metadata from the Hub needs the network",
            remedy=f"unset HF_HUB_OFFLINE, or build from a local copy: modelguard build DIR --model {quote(model)}",
        )
    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(model, revision=revision)
    except Exception as exc:  # noqa: BLE001
        raise hub_error(exc, model, revision, None, endpoint) from None
    if not info.sha or not COMMIT.match(info.sha):
        raise DownloadError(f"{endpoint} did not give the commit of {model} @ {revision}",
                            expected="a 40-hex commit id", actual=repr(info.sha))
    return info.sha, api

