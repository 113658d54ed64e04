"""Fetch and repair: download exactly the files a manifest lists, at its pinned revision,
verify each before it replaces anything, retry a bounded number of times, report per file.

Downloads use the real ``huggingface_hub`` client (``get_hf_file_metadata`` for the resolve
headers, ``http_get`` for the bytes), imported only inside the functions that need it. One
fetch per model directory at a time (file lock).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
import re
from shlex import quote
from typing import Any, Iterable

from .. import hfcache, hflisting, registry
from ..engine import verify_directory
from ..env import hub_endpoint, is_offline
from ..errors import DownloadError, ManifestNotFoundError, OfflineError, UsageError
from ..fs import human_size
from ..hashing import hash_file
from ..pieces import CHUNKED
from ..manifest import FileEntry, Manifest
from ..remedy import fetch_command
from ..report import FAILED, SKIPPED, VerifyReport
from ..resolve import looks_like_manifest_file, resolve_manifest
from .client import COMMIT, SHA256, hub_error, resolve_commit, retry_backoff, same_origin_key
from .metadata import complete_manifest
from .place import (Target, cache_target, install_file, local_target, make_dirs, remove_empty_target, remove_if_empty,
                    remove_stale_temp_files, safe_name)

MAX_ATTEMPTS = 3


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FileAction:
    """What fetch did for one manifest file.

    ``action``: ``kept`` (already verified), ``downloaded`` (was missing),
    ``repaired`` (was broken; old bytes kept at ``kept_aside``), ``failed``.
    """

    path: str
    component: str
    action: str
    diagnosis: str
    attempts: int = 0
    size: int = 0
    kept_aside: str | None = None
    message: str = ""
    errors: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "component": self.component, "action": self.action,
            "diagnosis": self.diagnosis, "attempts": self.attempts, "size": self.size,
            "kept_aside": self.kept_aside, "message": self.message, "errors": list(self.errors),
        }


@dataclass(frozen=True)
class FetchResult:
    """The verification after fetching, and what was done per file."""

    report: VerifyReport
    actions: tuple[FileAction, ...]
    revision: str | None
    endpoint: str

    @property
    def ok(self) -> bool:
        return self.report.ok and not any(a.action == "failed" for a in self.actions)

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out["ok"] = self.ok
        out["fetched_revision"] = self.revision
        out["endpoint"] = self.endpoint
        out["actions"] = [a.to_dict() for a in self.actions]
        return out


# --------------------------------------------------------------------------- fetch


def fetch(
    model: str | Manifest,
    revision: str | None = None,
    *,
    components: Iterable[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> VerifyReport:
    """Download the manifest's files of ``model`` (a model id with a known manifest,
    a manifest file, or a :class:`Manifest`), verify each, repair what is broken.

    Files go into the Hugging Face cache (``cache_dir`` or the default one) unless
    ``local_dir`` is given. Returns the verification after the fetch; raises
    :class:`DownloadError` when a file could not be obtained with the right bytes,
    :class:`OfflineError` when a download is needed and HF_HUB_OFFLINE is set.
    """
    return fetch_files(model, revision, components=components, local_dir=local_dir,
                       cache_dir=cache_dir).report


def repair_files(
    manifest: Manifest,
    directory: str | os.PathLike[str] | None,
    *,
    components: Iterable[str] | None = None,
) -> VerifyReport:
    """Download what is missing or broken of ``manifest``'s files in ``directory``.

    ``directory`` is a Hugging Face cache snapshot (repaired in the cache layout), a
    plain model folder, or None for the model's snapshot in the default cache.
    Returns the verification afterwards; raises like :func:`fetch`.
    """
    if directory is None:
        return fetch_files(manifest, components=components).report
    path = Path(directory)
    snap = hfcache.snapshot_root(path)
    if snap is not None and snap.parent.parent.name.startswith("models--"):
        return fetch_files(manifest, manifest.revision or snap.name, components=components,
                           _snapshot=snap).report
    return fetch_files(manifest, components=components, local_dir=path).report


def complete_snapshot(manifest: Manifest, directory: str | os.PathLike[str], components: Iterable[str] | None = None
                      ) -> None:
    """Download the files of a partial snapshot (an auto class fetched config.json first), as
    the library would next; files already there are left alone, for the caller to verify."""
    wanted = set(components) if components is not None else None
    absent = tuple(e for e in manifest.files if (wanted is None or e.component in wanted)
                   and not os.path.lexists(os.path.join(directory, e.path)))
    if absent:
        repair_files(replace(manifest, files=absent), directory, components=sorted({e.component for e in absent}))


def _fetchable_manifest(model: str | Manifest, revision: str | None) -> Manifest:
    """The manifest named by ``model`` (see :func:`modelguard.resolve.resolve_manifest`), checked
    to pin ``revision`` (when both say one) and to name a Hub model."""
    manifest = resolve_manifest(model, revision)
    if revision and manifest.revision and not registry.same_revision(manifest.revision, revision):
        raise UsageError(
            f"the manifest of {manifest.model} pins revision {manifest.revision}, not {revision}",
            path=manifest.source, expected=manifest.revision, actual=revision,
            remedy=f"drop --revision, or use a manifest built for {quote(revision)}: "
                   f"modelguard build --from-hub {quote(manifest.model)} --revision {quote(revision)} -o FILE",
        )
    if "/" not in manifest.model:
        raise UsageError(
            f"manifest model '{manifest.model}' is not a Hub model id, so it cannot be fetched",
            path=manifest.source, expected="ORG/NAME, e.g. BAAI/bge-m3", actual=manifest.model,
        )
    return manifest


def _manifest_or_listing(model: str | Manifest, revision: str | None, cache_dir: Any,
                         local_dir: Any) -> tuple[Manifest, Path | None]:
    """The manifest (or lock entry) named by ``model``; with none, for a model id in the Hugging
    Face cache, the Hub's listing of its snapshot's commit: the one saved at download, else
    fetched now (online). Returns it and the snapshot it describes (None for a manifest)."""
    try:
        return _fetchable_manifest(model, revision), None
    except ManifestNotFoundError:
        if not isinstance(model, str) or local_dir is not None or looks_like_manifest_file(model):
            raise
        found = hflisting.model_expectations(model, revision, cache_dir)
        if found is None:
            raise
        listed, snap = complete_manifest(found[0]), found[1]
        if listed.lists_every_file:
            return listed, snap
    # Content addresses alone carry no sizes and miss absent files: not enough to download by.
    why = ("HF_HUB_OFFLINE is set" if is_offline()
           else listed.source.rpartition("; ")[2] if "could not be fetched" in (listed.source or "")
           else "the Hub gave no listing")
    raise ManifestNotFoundError(
        f"no manifest or lock entry describes {model}, and its snapshot {snap} has no listing saved at "
        f"download to fetch by ({why})",
        path=snap, expected="a manifest, a lock entry, or the Hub's listing of the snapshot's commit",
        actual=f"{snap.parent.parent / 'trees' / (snap.name + '.json')} absent",
        remedy=(f"unset HF_HUB_OFFLINE, then run `modelguard fetch {quote(model)}` (the Hub's listing of commit "
                f"{snap.name} is used)" if is_offline() else
                f"check that {hub_endpoint()} serves {model}, or pin it: modelguard lock add {quote(model)}"),
    )


def _wanted(manifest: Manifest, components: Iterable[str] | None) -> list[str] | None:
    if components is None:
        return None
    wanted = list(dict.fromkeys(c.strip() for c in components if c and c.strip()))
    unknown = [c for c in wanted if c not in manifest.components]
    if unknown:
        raise UsageError(
            f"unknown component(s) {', '.join(unknown)} for {manifest.model}",
            expected="one of: " + ", ".join(manifest.components), actual=", ".join(unknown),
        )
    return wanted


def _fetch_command(manifest: Manifest, revision: str | None, local_dir: Any, *, given: Any = None,
                   cache_dir: Any = None) -> str:
    """The fetch command line that repeats this fetch (``given``: what the user named, id or file)."""
    rev = manifest.revision or revision
    named_file = isinstance(given, str) and given.endswith((".yaml", ".yml"))  # the file pins its revision
    return fetch_command(given if isinstance(given, str) else manifest.model, None if named_file else rev,
                         local_dir=local_dir, cache_dir=cache_dir)


def fetch_files(
    model: str | Manifest,
    revision: str | None = None,
    *,
    components: Iterable[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    attempts: int = MAX_ATTEMPTS,
    _snapshot: Path | None = None,
) -> FetchResult:
    """Like :func:`fetch`, but returns what was done per file as well.

    A :class:`DownloadError` raised here carries the :class:`FetchResult` as ``.result``. A model
    id no manifest or lock describes, in the Hugging Face cache, is fetched by the Hub's listing
    of its snapshot's commit (saved at download, else fetched now).
    """
    manifest, listed_snapshot = _manifest_or_listing(model, revision, cache_dir, local_dir)
    _snapshot = _snapshot or listed_snapshot
    wanted = _wanted(manifest, components)
    rev = manifest.revision or revision or "main"
    endpoint = hub_endpoint()

    if local_dir is not None:
        target = local_target(Path(local_dir))
        # An unpinned manifest: every file comes from the one commit the branch names now.
        commit = rev if COMMIT.match(rev) or is_offline() else resolve_commit(manifest, rev, None, endpoint)
        commit = commit if commit and COMMIT.match(commit) else None
    elif _snapshot is not None:
        commit = _snapshot.name
        target = cache_target(_snapshot.parent.parent, commit)
    else:
        repo = hfcache.repo_folder(manifest.model, cache_dir)
        commit = resolve_commit(manifest, rev, repo, endpoint)
        target = cache_target(repo, commit)

    from filelock import FileLock

    created = make_dirs(target.directory, target.lock_path.parent)
    try:
        lock = FileLock(str(target.lock_path))
        with lock:
            remove_stale_temp_files(target)
            before = verify_directory(manifest, target.directory, components=wanted)
            todo = [r for r in before.files if r.status == FAILED
                    or (r.status == SKIPPED and wanted is not None and r.component in wanted)]
            actions = {r.path: FileAction(r.path, r.component, "kept", r.diagnosis, size=manifest.file(r.path).size,
                                          message=r.message)
                       for r in before.files if r.ok}
            if todo and is_offline():
                listed = ", ".join(f"{r.path} ({r.diagnosis})" for r in todo)
                raise OfflineError(
                    f"HF_HUB_OFFLINE is set, but {len(todo)} file(s) of {manifest.model} need downloading: {listed}",
                    path=target.directory, expected="files present and verified, or the Hub reachable",
                    actual=f"{len(todo)} file(s) missing or broken",
                    remedy=f"unset HF_HUB_OFFLINE and run "
                           f"`{_fetch_command(manifest, commit or rev, local_dir, given=model, cache_dir=cache_dir)}`, "
                           "or copy the files in from a machine that has them",
                )
            download_rev = commit or rev
            for r in todo:
                entry = manifest.file(r.path)
                assert entry is not None
                actions[r.path] = _download_entry(manifest, entry, r.diagnosis, download_rev, endpoint, target,
                                                  attempts=attempts)
            after = verify_directory(manifest, target.directory, components=wanted) if todo else before
    except OfflineError:
        remove_if_empty(created, lock_file=target.lock_path)
        raise
    except BaseException:
        remove_empty_target(created, target)
        raise
    ordered = tuple(actions[r.path] for r in after.files if r.path in actions)
    result = FetchResult(report=after, actions=ordered, revision=commit or rev, endpoint=endpoint)
    if not result.ok:
        failed = [a for a in ordered if a.action == "failed"]
        still = [r for r in after.failures if r.path not in {a.path for a in failed}]
        lines = [f"fetch of {manifest.model} @ {download_rev} did not end with verified files "
                 f"({len(failed) + len(still)} file(s)):"]
        for a in failed:
            lines.append(f"  {a.path} [{a.component}]: {a.message}")
        for r in still:
            lines.append(f"  {r.path} [{r.component}]: {r.message}")
        error = DownloadError(
            "\n".join(lines), result=result, path=target.directory,
            expected="every file with the manifest's size and digests",
            actual=", ".join(a.path for a in failed) or ", ".join(r.path for r in still),
            remedy=(f"check that {endpoint} serves {manifest.model} at {download_rev} (HF_ENDPOINT, proxy, mirror) "
                    f"and that the manifest ({manifest.source or 'in memory'}) describes that revision; "
                    f"then run `{_fetch_command(manifest, download_rev, local_dir, given=model, cache_dir=cache_dir)}` "
                    "again"),
        )
        remove_empty_target(created, target)
        raise error
    return result



def _download_entry(manifest: Manifest, entry: FileEntry, diagnosis: str, rev: str, endpoint: str,
                    target: Target, *, attempts: int) -> FileAction:
    """Download one file to a temporary file, verify it, then put it in place; bounded retries."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    algorithms = tuple(entry.digests) + ((CHUNKED,) if entry.chunks is not None else ())
    strongest = entry.strongest_digest[0]
    errors: list[str] = []
    expected_text = f"{entry.size} bytes, {strongest} {entry.digests[strongest]}"
    url = hf_hub_url(manifest.model, entry.path, revision=rev, endpoint=endpoint)
    target.tmp_dir.mkdir(parents=True, exist_ok=True)
    was_present = diagnosis not in ("missing", "optional_missing")

    def failed(message: str, n: int) -> FileAction:
        state = ("the existing file was left untouched" if was_present else "nothing was written")
        first, _, rest = message.partition("\n")
        return FileAction(entry.path, entry.component, "failed", diagnosis, attempts=n, size=entry.size,
                          message=f"{first}; {state}" + (f"\n{rest}" if rest else ""), errors=tuple(errors))

    for attempt in range(1, attempts + 1):
        if attempt > 1:
            time.sleep(retry_backoff(attempt - 1))
        try:
            meta = get_hf_file_metadata(url)
        except Exception as exc:  # noqa: BLE001
            err = hub_error(exc, manifest.model, rev, entry.path, endpoint)
            errors.append(f"attempt {attempt}: {err.message}")
            if type(exc).__name__ in ("RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError",
                                      "RemoteEntryNotFoundError"):
                return failed(err.message, attempt)
            continue
        if meta.size is not None and meta.size != entry.size:
            errors.append(f"attempt {attempt}: the Hub says {meta.size} bytes")
            return failed(
                f"the Hub's {entry.path} at {rev} is {meta.size} bytes, the manifest says {entry.size}: "
                "the manifest does not describe this revision (not downloaded)", attempt)
        etag = (meta.etag or "").lower()
        if SHA256.match(etag) and "sha256" in entry.digests and etag != entry.digests["sha256"]:
            errors.append(f"attempt {attempt}: the Hub's sha256 is {etag}")
            return failed(
                f"the Hub's {entry.path} at {rev} has sha256 {etag}, the manifest says {entry.digests['sha256']}: "
                "the manifest does not describe this revision (not downloaded)", attempt)
        headers = build_hf_headers()
        if same_origin_key(meta.location) != same_origin_key(url):
            headers.pop("authorization", None)  # a CDN or storage host never gets the token
        tmp = target.tmp_dir / f"{safe_name(etag or entry.path)}.modelguard-{uuid.uuid4().hex[:8]}.incomplete"
        try:
            try:
                with open(tmp, "wb") as fh:
                    http_get(meta.location, fh, headers=headers, expected_size=meta.size,
                             displayed_filename=entry.path)
            except Exception as exc:  # noqa: BLE001 - a failed transfer is one failed attempt
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                errors.append(f"attempt {attempt}: transfer failed: {type(exc).__name__}: {detail}")
                continue
            size = tmp.stat().st_size
            digests = hash_file(tmp, algorithms, piece_size=entry.piece_size)
            bad = {a: v for a, v in digests.items() if v != entry.expected_digest(a)}
            if size != entry.size or bad:
                pieces = ", pieces differ from the manifest's chunks" if CHUNKED in bad else ""
                errors.append(f"attempt {attempt}: wrong bytes: {size} bytes, {strongest} {digests[strongest]}{pieces}")
                continue
            kept = install_file(target, entry, tmp, etag or digests.get("sha256") or safe_name(entry.path))
        finally:
            tmp.unlink(missing_ok=True)
        action = "repaired" if was_present else "downloaded"
        msg = f"{action} ({human_size(entry.size)}" + (f", after {attempt} attempts" if attempt > 1 else "") + ")"
        if kept:
            msg += f"; the old bytes ({diagnosis}) are kept at {kept}"
        return FileAction(entry.path, entry.component, action, diagnosis, attempts=attempt, size=entry.size,
                          kept_aside=kept, message=msg, errors=tuple(errors))
    return failed(
        f"no download of {attempts} attempt(s) delivered the right bytes\n"
        f"      expected: {expected_text}\n      got:      " + "\n                ".join(_group_attempts(errors)),
        attempts)


def _group_attempts(errors: list[str]) -> list[str]:
    """'attempt 1: X', 'attempt 2: X', 'attempt 3: Y' -> ['attempts 1-2: X', 'attempt 3: Y']."""
    groups: list[tuple[int, int, str]] = []
    for text in errors:
        m = re.match(r"attempt (\d+): (.*)\Z", text, re.S)
        if not m:
            groups.append((0, 0, text))
            continue
        n, what = int(m.group(1)), m.group(2)
        if groups and groups[-1][2] == what and groups[-1][1] == n - 1:
            groups[-1] = (groups[-1][0], n, what)
        else:
            groups.append((n, n, what))
    return [what if a == 0 else (f"attempt {a}: {what}" if a == b else f"attempts {a}-{b}: {what}")
            for a, b, what in groups]
