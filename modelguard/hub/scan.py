"""Scan the Hugging Face cache: every blob named by a digest is hashed and compared with its
name, every snapshot with a known manifest is verified against it."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any, Callable

from .. import hfcache, registry
from ..engine import verify_directory
from ..errors import ManifestError, UsageError
from ..hashing import hash_file, run_parallel
from ..manifest import Manifest
from ..remedy import fetch_command
from ..report import FAILED
from ..sniff import LFS_PREFIX, SNIFF_BYTES, parse_lfs_pointer, sniff_error_page
from ..version import __version__
from .client import COMMIT, SHA256


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
    if SHA256.match(name):
        algorithm = "sha256"
    elif COMMIT.match(name):
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
    blob_results = run_parallel(blob_jobs, lambda job: _check_blob(job[1], progress), workers=max(1, workers))
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
        report = verify_directory(manifest, snap)
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
                lines.append(f"          fix: {fetch_command(repo.repo_id, commit)}"
                             if _has_manifest(repo.repo_id, commit) else
                             f"          fix: modelguard build --from-hub {quote(repo.repo_id)} --revision {quote(commit)} "
                             f"-o {saved} && modelguard fetch {saved}")
    n_bad = sum(not r.ok for r in report.repos)
    lines.append(f"FAILED: corruption in {n_bad} of {len(report.repos)} repo(s)" if n_bad
                 else f"clean: {len(report.repos)} repo(s) checked")
    return "\n".join(lines)


def _has_manifest(model: str, revision: str) -> bool:
    try:
        return registry.find_manifest(model, revision) is not None
    except Exception:  # noqa: BLE001
        return False

