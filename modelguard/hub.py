"""The Hugging Face Hub: fetch and repair a manifest's files, scan the HF cache,
write manifests from Hub metadata.

Downloads use the real ``huggingface_hub`` client (``get_hf_file_metadata`` for the
resolve headers, ``http_get`` for the bytes, ``HfApi`` for listings); huggingface_hub
is imported only inside the functions that need it.

Safety rules: a download goes to a temporary file and replaces nothing until its
size and every digest of the manifest match; bytes that do not match are retried a
bounded number of times, then reported; the old bytes of a file that is replaced are
kept aside (hard link into a quarantine folder) and never deleted; one fetch per
model directory at a time (file lock).
"""

from __future__ import annotations

import os
import re
import time
from shlex import quote
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from . import hfcache
from .errors import DownloadError, OfflineError, UsageError
from .hashing import hash_file
from .manifest import Component, FileEntry, Manifest
from .verify import FAILED, SKIPPED, VerifyReport, human_size, verify

MAX_ATTEMPTS = 3
QUARANTINE_DIR = ".modelguard-quarantine"
DEFAULT_ENDPOINT = "https://huggingface.co"
_COMMIT = re.compile(r"\A[0-9a-f]{40}\Z")
_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
_TRUE = {"1", "ON", "YES", "TRUE"}


# --------------------------------------------------------------------------- settings


def hub_endpoint() -> str:
    """The Hub URL, read from $HF_ENDPOINT at call time (default https://huggingface.co)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """True when $HF_HUB_OFFLINE (or $TRANSFORMERS_OFFLINE) switches the Hub off."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if (os.environ.get(var) or "").upper() in _TRUE:
            return True
    return False


def _retry_backoff(attempt: int) -> float:
    return min(0.2 * 2 ** (attempt - 1), 4.0)


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


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class _Target:
    """Where files go: a Hugging Face cache snapshot (blobs + symlinks) or a plain folder."""

    directory: Path
    cache_repo: Path | None  # models--ORG--NAME when the directory is a cache snapshot
    lock_path: Path
    tmp_dir: Path
    quarantine_root: Path

    @property
    def is_cache(self) -> bool:
        return self.cache_repo is not None


def _cache_target(repo_folder: Path, commit: str) -> _Target:
    return _Target(
        directory=repo_folder / "snapshots" / commit,
        cache_repo=repo_folder,
        lock_path=repo_folder.parent / ".locks" / repo_folder.name / "modelguard-fetch.lock",
        tmp_dir=repo_folder / "blobs",
        quarantine_root=repo_folder / QUARANTINE_DIR,
    )


def _local_target(directory: Path) -> _Target:
    work = directory / ".cache" / "modelguard"
    return _Target(
        directory=directory, cache_repo=None, lock_path=work / "fetch.lock",
        tmp_dir=work / "tmp", quarantine_root=work / "quarantine",
    )


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


def _resolve_manifest(model: str | Manifest, revision: str | None) -> Manifest:
    from . import registry
    from .manifest import load_manifest

    if isinstance(model, Manifest):
        manifest = model
    elif model.endswith((".yaml", ".yml")) or os.path.isfile(model):
        manifest = load_manifest(model)
    else:
        manifest = registry.require_manifest(model, revision)
    if revision and manifest.revision and not registry._same_revision(manifest.revision, revision):
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
    cmd = f"modelguard fetch {quote(given if isinstance(given, str) else manifest.model)}"
    rev = manifest.revision or revision
    if rev and not (isinstance(given, str) and given.endswith((".yaml", ".yml"))):
        cmd += f" --revision {quote(rev)}"
    if local_dir is not None:
        cmd += f" --local-dir {quote(os.fspath(local_dir))}"
    elif cache_dir is not None:
        cmd += f" --cache-dir {quote(os.fspath(cache_dir))}"
    return cmd


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

    A :class:`DownloadError` raised here carries the :class:`FetchResult` as ``.result``.
    """
    manifest = _resolve_manifest(model, revision)
    wanted = _wanted(manifest, components)
    rev = manifest.revision or revision or "main"
    endpoint = hub_endpoint()

    if local_dir is not None:
        target = _local_target(Path(local_dir))
        # An unpinned manifest: every file comes from the one commit the branch names now.
        commit = rev if _COMMIT.match(rev) or is_offline() else _resolve_commit(manifest, rev, None, endpoint)
        commit = commit if commit and _COMMIT.match(commit) else None
    elif _snapshot is not None:
        commit = _snapshot.name
        target = _cache_target(_snapshot.parent.parent, commit)
    else:
        repo = hfcache.repo_folder(manifest.model, cache_dir)
        commit = _resolve_commit(manifest, rev, repo, endpoint)
        target = _cache_target(repo, commit)

    from filelock import FileLock

    created = _make_dirs(target.directory, target.lock_path.parent)
    try:
        lock = FileLock(str(target.lock_path))
        with lock:
            _remove_stale_temp_files(target)
            before = verify(manifest, target.directory, components=wanted)
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
            after = verify(manifest, target.directory, components=wanted) if todo else before
    except OfflineError:
        _remove_if_empty(created, lock_file=target.lock_path)
        raise
    except BaseException:
        _remove_empty_target(created, target)
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
        err = DownloadError(
            "\n".join(lines), path=target.directory,
            expected="every file with the manifest's size and digests",
            actual=", ".join(a.path for a in failed) or ", ".join(r.path for r in still),
            remedy=(f"check that {endpoint} serves {manifest.model} at {download_rev} (HF_ENDPOINT, proxy, mirror) "
                    f"and that the manifest ({manifest.source or 'in memory'}) describes that revision; "
                    f"then run `{_fetch_command(manifest, download_rev, local_dir, given=model, cache_dir=cache_dir)}` "
                    "again"),
        )
        err.result = result  # type: ignore[attr-defined]
        _remove_empty_target(created, target)
        raise err
    return result


def _make_dirs(*dirs: Path) -> list[Path]:
    """Create ``dirs`` (and parents); return the folders this call created, deepest first."""
    created: list[Path] = []
    for d in dirs:
        missing = []
        p = d
        while not p.exists():
            missing.append(p)
            p = p.parent
        d.mkdir(parents=True, exist_ok=True)
        created.extend(missing)
    return sorted(set(created), key=lambda p: -len(p.parts))


def _remove_if_empty(created: list[Path], *, lock_file: Path) -> None:
    """Undo :func:`_make_dirs` where nothing else was put in the folders (and drop our lock file)."""
    if lock_file.parent in created:
        lock_file.unlink(missing_ok=True)
    for d in created:
        try:
            d.rmdir()
        except OSError:
            pass


def _remove_empty_target(created: list[Path], target: _Target) -> None:
    """After a failed fetch in which nothing landed, remove the (empty) folders this call made for
    the files, or the next load would take an empty snapshot for one with every file missing and
    hide this failure's cause. The lock file stays: another process may be waiting on it."""
    _remove_if_empty([d for d in created if not target.lock_path.is_relative_to(d)], lock_file=target.lock_path)


def _resolve_commit(manifest: Manifest, rev: str, repo: Path | None, endpoint: str) -> str:
    """The commit a revision names: itself, the cache's refs/<rev> (offline), or the Hub's answer
    (recorded in the cache's refs/<rev> like huggingface_hub does, when ``repo`` is given)."""
    if _COMMIT.match(rev):
        return rev
    if is_offline() and repo is not None:
        commit = hfcache.resolve_ref(manifest.model, rev, repo.parent)
        if commit is None:
            raise OfflineError(
                f"HF_HUB_OFFLINE is set and the cache does not know which commit '{rev}' of {manifest.model} is",
                path=repo, expected=f"{repo}/refs/{rev}", actual="not present",
                remedy=f"unset HF_HUB_OFFLINE, or pass --revision COMMIT",
            )
        return commit
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    first = manifest.files[0].path
    try:
        meta = get_hf_file_metadata(hf_hub_url(manifest.model, first, revision=rev, endpoint=endpoint))
    except Exception as exc:  # noqa: BLE001 - every client error becomes one clear message
        raise _hub_error(exc, manifest.model, rev, first, endpoint) from None
    commit = meta.commit_hash
    if not commit or not _COMMIT.match(commit):
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


def _hub_error(exc: BaseException, model: str, rev: str, path: str | None, endpoint: str) -> DownloadError:
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


def _download_entry(manifest: Manifest, entry: FileEntry, diagnosis: str, rev: str, endpoint: str,
                    target: _Target, *, attempts: int) -> FileAction:
    """Download one file to a temporary file, verify it, then put it in place; bounded retries."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    algorithms = tuple(entry.digests)
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
            time.sleep(_retry_backoff(attempt - 1))
        try:
            meta = get_hf_file_metadata(url)
        except Exception as exc:  # noqa: BLE001
            err = _hub_error(exc, manifest.model, rev, entry.path, endpoint)
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
        if _SHA256.match(etag) and "sha256" in entry.digests and etag != entry.digests["sha256"]:
            errors.append(f"attempt {attempt}: the Hub's sha256 is {etag}")
            return failed(
                f"the Hub's {entry.path} at {rev} has sha256 {etag}, the manifest says {entry.digests['sha256']}: "
                "the manifest does not describe this revision (not downloaded)", attempt)
        headers = build_hf_headers()
        if _origin(meta.location) != _origin(url):
            headers.pop("authorization", None)  # a CDN or storage host never gets the token
        tmp = target.tmp_dir / f"{_safe_name(etag or entry.path)}.modelguard-{uuid.uuid4().hex[:8]}.incomplete"
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
            digests = hash_file(tmp, algorithms)
            bad = {a: v for a, v in digests.items() if v != entry.digests[a]}
            if size != entry.size or bad:
                errors.append(f"attempt {attempt}: wrong bytes: {size} bytes, {strongest} {digests[strongest]}")
                continue
            kept = _install(target, entry, tmp, etag or digests.get("sha256") or _safe_name(entry.path))
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


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlparse

    p = urlparse(url)
    return (p.scheme, (p.hostname or "").lower(), p.port)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[-80:]


def _keep_aside(target: _Target, entry: FileEntry, source: Path) -> str:
    """Hard-link (or copy) the bytes at ``source`` into the quarantine folder; returns where."""
    import shutil

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    dest = target.quarantine_root / stamp / entry.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
    return str(dest)


def _install(target: _Target, entry: FileEntry, verified: Path, blob_name: str) -> str | None:
    """Put the verified temporary file in place atomically; old bytes are kept aside first."""
    dest = target.directory / entry.path
    _refuse_escaping_folder(target, dest)  # before mkdir: it would follow the link too
    dest.parent.mkdir(parents=True, exist_ok=True)
    _refuse_escaping_folder(target, dest)
    kept: str | None = None
    if dest.is_dir() and not dest.is_symlink():
        raise DownloadError(
            f"{dest} is a directory where the file {entry.path} belongs; not replaced", path=dest,
            remedy=f"move {dest} away, then fetch again",
        )
    if target.is_cache:
        assert target.cache_repo is not None
        blobs = target.cache_repo / "blobs"
        blob = blobs / blob_name
        if dest.is_symlink():
            # Re-pointing a link changes no bytes; only the blob about to be overwritten is kept aside.
            if dest.resolve() == blob.resolve() and blob.exists():
                kept = _keep_aside(target, entry, blob)
        elif os.path.lexists(dest):
            kept = _keep_aside(target, entry, dest)
        elif blob.exists():
            kept = _keep_aside(target, entry, blob)
        _chmod_like_umask(verified)
        os.replace(verified, blob)
        link_tmp = dest.with_name(f".{dest.name}.modelguard-{uuid.uuid4().hex[:8]}")
        try:
            os.symlink(os.path.relpath(blob, dest.parent), link_tmp)
        except OSError:
            os.link(blob, link_tmp)
        os.replace(link_tmp, dest)
        return kept
    if os.path.lexists(dest):
        kept = _keep_aside(target, entry, dest)
    _chmod_like_umask(verified)
    os.replace(verified, dest)
    return kept


def _remove_stale_temp_files(target: _Target) -> None:
    """Remove the temporary downloads of a fetch that was killed. Called holding the fetch
    lock, so no other fetch of this model is writing one; only modelguard's own temporary
    files are touched (the Hugging Face client's ``*.incomplete`` files are left alone)."""
    try:
        names = os.listdir(target.tmp_dir)
    except OSError:
        return
    for name in names:
        if ".modelguard-" in name and name.endswith(".incomplete"):
            try:
                os.unlink(target.tmp_dir / name)
            except OSError:
                pass


def _refuse_escaping_folder(target: _Target, dest: Path) -> None:
    """A folder on the way to ``dest`` that is a link out of the model directory is never written through."""
    from .verify import _within

    root = Path(target.directory).resolve()
    parent = dest.parent.resolve()
    if not _within(parent, [root]):
        raise DownloadError(
            f"{dest} is reached through a link out of {target.directory} (to {parent}); nothing was written",
            path=dest, expected=f"a folder inside {target.directory}", actual=str(parent),
            remedy="replace the linked folder with a real one (modelguard writes only inside the model "
                   "directory), then fetch again",
        )


def _chmod_like_umask(path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


# --------------------------------------------------------------------------- scan


@dataclass(frozen=True)
class ScanProblem:
    """One broken thing found in the cache."""

    path: str  # file path in the snapshot, or blobs/<name>
    diagnosis: str
    message: str
    blob: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "diagnosis": self.diagnosis, "message": self.message, "blob": self.blob}


@dataclass(frozen=True)
class RevisionScan:
    """The outcome for one snapshot (revision) of one repo."""

    revision: str
    refs: tuple[str, ...]
    files: int
    manifest: str | None
    status: str  # ok | corrupt | incomplete
    problems: tuple[ScanProblem, ...] = ()
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision, "refs": list(self.refs), "files": self.files, "manifest": self.manifest,
            "status": self.status, "problems": [p.to_dict() for p in self.problems], "missing": list(self.missing),
        }


@dataclass(frozen=True)
class RepoScan:
    repo_id: str
    repo_type: str
    folder: str
    revisions: tuple[RevisionScan, ...]
    blobs_checked: int
    blobs_unchecked: int
    corrupt_blobs: tuple[ScanProblem, ...] = ()
    incomplete_downloads: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.corrupt_blobs and all(r.status != "corrupt" for r in self.revisions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo_id, "type": self.repo_type, "folder": self.folder, "ok": self.ok,
            "revisions": [r.to_dict() for r in self.revisions],
            "blobs": {"checked": self.blobs_checked, "unchecked": self.blobs_unchecked,
                      "corrupt": [p.to_dict() for p in self.corrupt_blobs]},
            "incomplete_downloads": list(self.incomplete_downloads),
        }


@dataclass(frozen=True)
class ScanReport:
    cache_dir: str
    repos: tuple[RepoScan, ...]
    elapsed_s: float = 0.0
    cache_exists: bool = True  # False: no cache folder at the default location, so nothing to scan

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.repos)

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return {
            "modelguard": __version__, "ok": self.ok, "cache_dir": self.cache_dir, "cache_exists": self.cache_exists,
            "summary": {
                "repos": len(self.repos),
                "revisions": sum(len(r.revisions) for r in self.repos),
                "corrupt_repos": sum(not r.ok for r in self.repos),
                "blobs_checked": sum(r.blobs_checked for r in self.repos),
                "blobs_unchecked": sum(r.blobs_unchecked for r in self.repos),
            },
            "repos": [r.to_dict() for r in self.repos],
            "elapsed_s": round(self.elapsed_s, 4),
        }


def _check_blob(blob: Path, progress: Callable[[int], None] | None = None) -> tuple[str, ScanProblem | None]:
    """('checked'|'unchecked', problem). A blob named by 64 hex digits must have that sha256;
    one named by 40 hex digits (a small file's git blob id) that git sha1."""
    name = blob.name
    if _SHA256.match(name):
        algorithm = "sha256"
    elif _COMMIT.match(name):
        algorithm = "git_sha1"
    else:
        return "unchecked", None
    try:
        digest = hash_file(blob, (algorithm,), progress=progress)[algorithm]
    except OSError as exc:
        return "checked", ScanProblem(f"blobs/{name}", "unreadable", f"cannot read: {exc.strerror or exc}", name)
    if digest == name:
        return "checked", None
    size = blob.stat().st_size
    from .verify import LFS_PREFIX, SNIFF_BYTES, parse_lfs_pointer, sniff_error_page

    with open(blob, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if parse_lfs_pointer(head) is not None and head.startswith(LFS_PREFIX):
        diag, what = "lfs_pointer", f"is a Git LFS pointer stub ({size} bytes), not the file"
    elif sniff_error_page(head):
        diag, what = "error_page", f"is an {sniff_error_page(head)} error page ({size} bytes)"
    elif size == 0:
        diag, what = "empty", "is empty (0 bytes)"
    else:
        diag, what = "digest_mismatch", f"content does not match its name ({size} bytes)"
    return "checked", ScanProblem(f"blobs/{name}", diag, f"{what}: {algorithm} is {digest}, the blob name says {name}",
                                  name)


def scan_cache(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    max_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ScanReport:
    """Check every repo in the Hugging Face cache.

    Each blob named by a digest is hashed and compared with its name, so corruption
    is found in any cached model; a snapshot with a known manifest is also verified
    against it (missing manifest files make it ``incomplete``, broken ones ``corrupt``).
    Every blob is read: no digest cache, so bytes that rotted in place are found too.
    ``progress`` is called with the number of bytes hashed as they are.
    No cache folder at the default location (nothing downloaded yet) is an empty, clean
    report; a ``cache_dir`` given that does not exist is a :class:`UsageError`.
    """
    from . import registry
    from .errors import ManifestError

    start = time.perf_counter()
    root = hfcache.hf_cache_dir(cache_dir)
    if not cache_dir and not root.exists() and not root.is_symlink():
        return ScanReport(cache_dir=str(root), repos=(), elapsed_s=time.perf_counter() - start, cache_exists=False)
    if not root.is_dir():
        raise UsageError(
            f"Hugging Face cache {root} does not exist" if not root.exists() else f"{root} is not a directory",
            path=root, expected="the hub cache folder (HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub)",
            remedy="pass --cache-dir DIR",
        )
    repo_dirs = sorted(p for p in root.iterdir()
                       if p.is_dir() and re.match(r"\A(models|datasets|spaces)--", p.name))
    blob_jobs: list[tuple[int, Path]] = []
    for i, repo_dir in enumerate(repo_dirs):
        blobs = repo_dir / "blobs"
        if blobs.is_dir():
            blob_jobs.extend((i, b) for b in sorted(blobs.iterdir())
                             if not b.name.endswith(".incomplete") and b.is_file())
    workers = max_workers or min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        blob_results = list(pool.map(lambda job: _check_blob(job[1], progress), blob_jobs))
    per_repo: dict[int, list[tuple[Path, str, ScanProblem | None]]] = {}
    for (i, blob), (kind, problem) in zip(blob_jobs, blob_results):
        per_repo.setdefault(i, []).append((blob, kind, problem))

    repos = []
    for i, repo_dir in enumerate(repo_dirs):
        kind, _, rest = repo_dir.name.partition("--")
        repo_id = rest.replace("--", "/", 1)
        results = per_repo.get(i, [])
        corrupt = {blob.name: problem for blob, _, problem in results if problem is not None}
        refs = _read_refs(repo_dir)
        revisions = []
        snapshots = repo_dir / "snapshots"
        for snap in sorted(snapshots.iterdir()) if snapshots.is_dir() else ():
            if not snap.is_dir():
                continue
            manifest = None
            if kind == "models":
                try:
                    manifest = registry.find_manifest(repo_id, snap.name)
                except (ManifestError, UsageError):
                    manifest = None
            revisions.append(_scan_snapshot(snap, repo_dir, corrupt, manifest, refs.get(snap.name, ())))
        incomplete = tuple(sorted(b.name for b in (repo_dir / "blobs").glob("*.incomplete"))) \
            if (repo_dir / "blobs").is_dir() else ()
        repos.append(RepoScan(
            repo_id=repo_id, repo_type=kind[:-1], folder=str(repo_dir), revisions=tuple(revisions),
            blobs_checked=sum(k == "checked" for _, k, _ in results),
            blobs_unchecked=sum(k == "unchecked" for _, k, _ in results),
            corrupt_blobs=tuple(corrupt[n] for n in sorted(corrupt)), incomplete_downloads=incomplete,
        ))
    return ScanReport(cache_dir=str(root), repos=tuple(repos), elapsed_s=time.perf_counter() - start)


def _read_refs(repo_dir: Path) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    refs = repo_dir / "refs"
    if refs.is_dir():
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()):
            try:
                commit = ref.read_text().strip()
            except OSError:
                continue
            out.setdefault(commit, []).append(ref.relative_to(refs).as_posix())
    return {k: tuple(v) for k, v in out.items()}


def _scan_snapshot(snap: Path, repo_dir: Path, corrupt: dict[str, ScanProblem], manifest: Manifest | None,
                   refs: tuple[str, ...]) -> RevisionScan:
    problems: list[ScanProblem] = []
    n_files = 0
    blobs_dir = (repo_dir / "blobs").resolve()
    for current, dirs, files in os.walk(snap):
        dirs.sort()
        for name in sorted(files):
            full = Path(current) / name
            rel = full.relative_to(snap).as_posix()
            n_files += 1
            if full.is_symlink():
                target = Path(os.path.realpath(full))
                if not target.exists():
                    problems.append(ScanProblem(rel, "missing", f"dangling link to {os.readlink(full)}: the blob is gone"))
                    continue
                if target.parent == blobs_dir and target.name in corrupt:
                    p = corrupt[target.name]
                    problems.append(ScanProblem(rel, p.diagnosis, p.message, target.name))
    missing: list[str] = []
    source = None
    if manifest is not None:
        source = manifest.source
        report = verify(manifest, snap)
        seen = {p.path for p in problems}
        for r in report.files:
            if r.ok or r.path in seen:
                continue
            if r.diagnosis in ("missing", "optional_missing"):
                if r.status == FAILED:
                    missing.append(r.path)
                continue
            problems.append(ScanProblem(r.path, r.diagnosis, r.message))
    status = "corrupt" if problems else ("incomplete" if missing else "ok")
    return RevisionScan(revision=snap.name, refs=refs, files=n_files, manifest=source, status=status,
                        problems=tuple(problems), missing=tuple(missing))


def cache_blob_bytes(cache_dir: str | os.PathLike[str] | None = None) -> int:
    """Total size of the blobs ``scan_cache`` would hash (for a progress display)."""
    root = hfcache.hf_cache_dir(cache_dir)
    total = 0
    for blobs in root.glob("*--*/blobs") if root.is_dir() else ():
        for blob in blobs.iterdir():
            try:
                total += blob.stat().st_size
            except OSError:
                pass
    return total


def format_scan(report: ScanReport) -> str:
    """Human-readable scan report: one block per repo, one line per revision."""
    if not report.cache_exists:
        return f"no Hugging Face cache at {report.cache_dir}: nothing to scan"
    lines = [f"Hugging Face cache {report.cache_dir}"]
    if not report.repos:
        lines.append("  (no repositories)")
    for repo in report.repos:
        tag = "ok  " if repo.ok else "FAIL"
        lines.append(f"  {tag}  {repo.repo_id} ({repo.repo_type}): {repo.blobs_checked} blob(s) checked"
                     + (f", {repo.blobs_unchecked} not named by a digest" if repo.blobs_unchecked else ""))
        for rev in repo.revisions:
            refs = f" ({', '.join(rev.refs)})" if rev.refs else ""
            via = " manifest" if rev.manifest else ""
            lines.append(f"        {rev.revision[:12]}{refs}: {rev.status}, {rev.files} file(s){via}")
            for p in rev.problems:
                lines.append(f"          FAIL {p.path}: {p.message}")
            if rev.missing:
                lines.append(f"          not downloaded: {', '.join(rev.missing)}")
        referenced = {p.blob for rev in repo.revisions for p in rev.problems}
        for p in repo.corrupt_blobs:
            if p.blob not in referenced:
                lines.append(f"          FAIL {p.path} (no snapshot links to it): {p.message}")
        if repo.incomplete_downloads:
            lines.append(f"          note: {len(repo.incomplete_downloads)} unfinished download(s) in blobs/")
        if not repo.ok and "/" in repo.repo_id and repo.repo_type == "model":
            bad = [rev.revision for rev in repo.revisions if rev.status == "corrupt"]
            for commit in bad:
                saved = quote(repo.repo_id.replace('/', '--') + ".yaml")
                lines.append(f"          fix: modelguard fetch {quote(repo.repo_id)} --revision {quote(commit)}"
                             if _has_manifest(repo.repo_id, commit) else
                             f"          fix: modelguard build --from-hub {quote(repo.repo_id)} --revision {quote(commit)} "
                             f"-o {saved} && modelguard fetch {saved}")
    n_bad = sum(not r.ok for r in report.repos)
    lines.append(f"FAILED: corruption in {n_bad} of {len(report.repos)} repo(s)" if n_bad
                 else f"clean: {len(report.repos)} repo(s) checked")
    return "\n".join(lines)


def _has_manifest(model: str, revision: str) -> bool:
    from . import registry

    try:
        return registry.find_manifest(model, revision) is not None
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------- manifests from Hub metadata


def resolve_revision(model: str, revision: str | None = None) -> str:
    """The commit a branch, tag or commit of ``model`` names on the Hub."""
    return _model_info(model, revision or "main")[0]


def _model_info(model: str, revision: str) -> tuple[str, Any]:
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
        raise _hub_error(exc, model, revision, None, endpoint) from None
    if not info.sha or not _COMMIT.match(info.sha):
        raise DownloadError(f"{endpoint} did not give the commit of {model} @ {revision}",
                            expected="a 40-hex commit id", actual=repr(info.sha))
    return info.sha, api


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
    from . import registry
    from .build import filter_paths, resolve_rules
    from .manifest import check_relative_path

    registry.validate_model_id(model)
    endpoint = hub_endpoint()
    commit, api = _model_info(model, revision or "main")
    try:
        tree = [item for item in api.list_repo_tree(model, revision=commit, recursive=True)
                if type(item).__name__ == "RepoFile"]
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(exc, model, commit, None, endpoint) from None
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

    from .hashing import hash_bytes

    buf = io.BytesIO()
    url = hf_hub_url(model, path, revision=commit, endpoint=endpoint)
    try:
        http_get(url, buf, headers=build_hf_headers(), expected_size=size, displayed_filename=path)
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(exc, model, commit, path, endpoint) from None
    data = buf.getvalue()
    digests = hash_bytes(data, ("git_sha1", "sha256", "md5"))
    if digests["git_sha1"] != git_sha1:
        raise DownloadError(
            f"{path} of {model} @ {commit} downloaded with git sha1 {digests['git_sha1']}, "
            f"the Hub's listing says {git_sha1}", path=path, expected=git_sha1, actual=digests["git_sha1"],
            remedy="retry; if it persists, the endpoint serves other bytes than it lists (proxy or mirror)",
        )
    return {"sha256": digests["sha256"], "md5": digests["md5"]}
