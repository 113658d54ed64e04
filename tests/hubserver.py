"""A small Hugging Face Hub on 127.0.0.1 for tests: real files in the Hub's URL layout.

It answers what the real ``huggingface_hub`` client asks:

- ``HEAD|GET /{repo}/resolve/{revision}/{path}``: small files are served directly
  with ``ETag`` (their git blob sha1), ``X-Repo-Commit`` and ``Content-Length``;
  LFS files answer ``302`` to a second port (the "CDN", another origin, like
  cdn-lfs.hf.co) with ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``.
- ``HEAD|GET /lfs/{sha256}`` on the CDN port, with ``Range`` support (206).
- ``GET /api/models/{repo}[/revision/{rev}]``: model info (``sha``, ``siblings``).
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: the tree listing (``oid``,
  ``size``, ``lfs: {oid, size, pointerSize}``).

Nothing advertises Xet, so the client uses plain HTTP. Errors carry the Hub's
``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound).

``server.misbehave(path, mode, times=N)`` makes the next N transfers of a file go
wrong: ``fail`` (HTTP 500), ``truncate`` (a short body with a matching short
Content-Length), ``drop`` (half the body, then the connection is closed),
``stall`` (half the body, then silence for ``stall_s`` seconds), ``corrupt`` (one
byte flipped), ``wrong`` (other bytes of the same size), ``slow`` (the body in
pieces with pauses; the transfer succeeds).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".h5", ".msgpack", ".ot", ".model",
                ".gguf", ".ckpt")
MODES = ("fail", "truncate", "drop", "stall", "corrupt", "wrong", "slow")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The Git LFS pointer text a clone without LFS leaves in place of ``data``."""
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


@dataclass
class HubFile:
    path: str
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def git_sha1(self) -> str:
        return git_blob_sha1(self.data)

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.data)


@dataclass
class Fault:
    path: str
    mode: str
    times: int | None
    stall_s: float = 3.0


@dataclass
class Request:
    method: str
    path: str
    status: int
    range: str | None = None


@dataclass
class _State:
    repos: dict[str, dict[str, dict[str, HubFile]]] = field(default_factory=dict)  # repo -> commit -> path -> file
    refs: dict[str, dict[str, str]] = field(default_factory=dict)  # repo -> branch/tag -> commit
    faults: list[Fault] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class HubServer:
    """``with HubServer() as hub: hub.add_repo(...); os.environ["HF_ENDPOINT"] = hub.endpoint``."""

    def __init__(self) -> None:
        self.state = _State()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.endpoint = ""
        self.cdn = ""

    # ------------------------------------------------------------------ content

    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], *, branch: str = "main",
                 tags: Iterable[str] = (), lfs: Iterable[str] | None = None) -> str:
        """Publish a commit of ``repo_id`` with ``files``; point ``branch`` (and ``tags``) at it.

        A file is LFS when its path is in ``lfs``, or (``lfs`` None) when its suffix is a weights suffix.
        Returns the commit id (40 hex digits, derived from the content).
        """
        contents = {p: (v.read_bytes() if isinstance(v, Path) else bytes(v)) for p, v in files.items()}
        lfs_set = set(lfs) if lfs is not None else {p for p in contents if p.endswith(LFS_SUFFIXES)}
        tree = {p: HubFile(p, d, p in lfs_set) for p, d in sorted(contents.items())}
        parent = self.state.refs.get(repo_id, {}).get(branch, "")
        h = hashlib.sha1(f"{repo_id}\n{parent}\n".encode())
        for p, f in tree.items():
            h.update(f"{p} {f.git_sha1}\n".encode())
        commit = h.hexdigest()
        with self.state.lock:
            self.state.repos.setdefault(repo_id, {})[commit] = tree
            refs = self.state.refs.setdefault(repo_id, {})
            refs[branch] = commit
            for tag in tags:
                refs[tag] = commit
        return commit

    def add_directory(self, repo_id: str, directory: Path, **kwargs) -> str:
        files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
        return self.add_repo(repo_id, files, **kwargs)

    def file(self, repo_id: str, commit: str, path: str) -> HubFile:
        return self.state.repos[repo_id][commit][path]

    # ------------------------------------------------------------------ misbehaviour

    def misbehave(self, path: str, mode: str, *, times: int | None = 1, stall_s: float = 3.0) -> None:
        """Make the next ``times`` transfers of ``path`` (None: all) go wrong in ``mode``."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        with self.state.lock:
            self.state.faults.append(Fault(path, mode, times, stall_s))

    def behave(self) -> None:
        with self.state.lock:
            self.state.faults.clear()

    def requests(self, method: str | None = None, path_contains: str | None = None) -> list[Request]:
        with self.state.lock:
            return [r for r in self.state.log if (method is None or r.method == method)
                    and (path_contains is None or path_contains in r.path)]

    def transfers(self, hub_file: HubFile) -> list[Request]:
        """GET requests that carried (part of) the bytes of ``hub_file``."""
        if hub_file.lfs:
            return self.requests("GET", f"/lfs/{hub_file.sha256}")
        own = re.compile(r"\A/[^/]+/[^/]+/resolve/[^/]+/" + re.escape(hub_file.path) + r"\Z")
        return [r for r in self.requests("GET", "/resolve/") if own.match(r.path)]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "HubServer":
        for role in ("hub", "cdn"):
            handler = type(f"{role.title()}Handler", (_Handler,), {"hub": self, "role": role})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        self.endpoint = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ lookups

    def _resolve(self, repo_id: str, revision: str) -> str | None:
        with self.state.lock:
            commits = self.state.repos.get(repo_id, {})
            if revision in commits:
                return revision
            return self.state.refs.get(repo_id, {}).get(revision)

    def _take_fault(self, path: str) -> Fault | None:
        with self.state.lock:
            for fault in self.state.faults:
                if fault.path == path and (fault.times is None or fault.times > 0):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def _find_lfs(self, sha256: str) -> HubFile | None:
        with self.state.lock:
            for commits in self.state.repos.values():
                for tree in commits.values():
                    for f in tree.values():
                        if f.lfs and f.sha256 == sha256:
                            return f
        return None


_RESOLVE = re.compile(r"\A/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)\Z")
_INFO = re.compile(r"\A/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?\Z")
_TREE = re.compile(r"\A/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?\Z")
_LFS = re.compile(r"\A/lfs/(?P<sha>[0-9a-f]{64})\Z")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer
    role: str

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing

    def _log(self, status: int) -> None:
        with self.hub.state.lock:
            self.hub.state.log.append(Request(self.command, urlparse(self.path).path, status, self.headers.get("Range")))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})})

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlparse(self.path)
        path = url.path
        query = parse_qs(url.query)
        try:
            if self.role == "cdn":
                m = _LFS.match(path)
                if not m:
                    return self._error(404, "EntryNotFound", "no such object")
                f = self.hub._find_lfs(m.group("sha"))
                if f is None:
                    return self._error(404, "EntryNotFound", "no such object")
                return self._serve_bytes(f, {"ETag": f'"{f.sha256}"'})
            if m := _RESOLVE.match(path):
                return self._resolve_file(unquote(m.group("repo")), unquote(m.group("rev")), unquote(m.group("path")))
            if m := _TREE.match(path):
                return self._tree(unquote(m.group("repo")), unquote(m.group("rev")), unquote(m.group("path") or ""),
                                  query.get("recursive", ["false"])[0].lower() == "true")
            if m := _INFO.match(path):
                return self._info(unquote(m.group("repo")), unquote(m.group("rev") or "main"),
                                  query.get("blobs", ["false"])[0].lower() == "true")
            return self._error(404, "NotFound", f"no route for {path}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ------------------------------------------------------------------ endpoints

    def _repo_commit(self, repo_id: str, rev: str) -> str | None:
        if repo_id not in self.hub.state.repos:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        commit = self.hub._resolve(repo_id, rev)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            return None
        return commit

    def _resolve_file(self, repo_id: str, rev: str, path: str) -> None:
        commit = self._repo_commit(repo_id, rev)
        if commit is None:
            return
        f = self.hub.state.repos[repo_id][commit].get(path)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
        if f.lfs:
            headers = {
                "X-Repo-Commit": commit,
                "ETag": f'"{git_blob_sha1(f.pointer)}"',
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(len(f.data)),
                "Location": f"{self.hub.cdn}/lfs/{f.sha256}",
            }
            return self._send(302, b"", headers, content_type="text/plain")
        return self._serve_bytes(f, {"X-Repo-Commit": commit, "ETag": f'"{f.git_sha1}"'})

    def _serve_bytes(self, f: HubFile, headers: dict[str, str]) -> None:
        data = f.data
        total = len(data)
        start = 0
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"bytes=(\d+)-(\d*)\Z", rng.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) + 1 if m.group(2) else total
                if start >= total:
                    return self._send(416, b"", {"Content-Range": f"bytes */{total}"})
                data = data[start:end]
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}"}
        headers = {**headers, "Accept-Ranges": "bytes"}
        fault = self.hub._take_fault(f.path) if self.command == "GET" else None
        if fault is None:
            return self._send(status, data, headers, content_type="application/octet-stream")
        mode = fault.mode
        if mode == "fail":
            return self._error(500, "InternalError", "Internal Server Error (injected)")
        if mode == "corrupt":
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0xFF
            return self._send(status, bytes(flipped), headers, content_type="application/octet-stream")
        if mode == "wrong":
            other = hashlib.sha256(data).digest() * (len(data) // 32 + 1)
            return self._send(status, other[:len(data)], headers, content_type="application/octet-stream")
        if mode == "truncate":
            short = data[: len(data) // 2]
            if "Content-Range" in headers:
                headers["Content-Range"] = f"bytes {start}-{start + len(short) - 1}/{start + len(short)}"
            return self._send(status, short, headers, content_type="application/octet-stream")
        # drop, stall, slow: announce the full length, then misbehave mid-body.
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        half = len(data) // 2
        if mode == "slow":
            step = max(1, len(data) // 4)
            for i in range(0, len(data), step):
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(fault.stall_s / 4)
            return
        self.wfile.write(data[:half])
        self.wfile.flush()
        if mode == "stall":
            time.sleep(fault.stall_s)
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _entries(self, repo_id: str, commit: str) -> dict[str, HubFile]:
        return self.hub.state.repos[repo_id][commit]

    def _info(self, repo_id: str, rev: str, blobs: bool) -> None:
        commit = self._repo_commit(repo_id, rev)
        if commit is None:
            return
        siblings = []
        for f in self._entries(repo_id, commit).values():
            s: dict = {"rfilename": f.path}
            if blobs:
                s["size"] = len(f.data)
                s["blobId"] = git_blob_sha1(f.pointer) if f.lfs else f.git_sha1
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
            siblings.append(s)
        body = {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                "disabled": False, "gated": False, "tags": [], "siblings": siblings}
        self._send(200, json.dumps(body).encode())

    def _tree(self, repo_id: str, rev: str, prefix: str, recursive: bool) -> None:
        commit = self._repo_commit(repo_id, rev)
        if commit is None:
            return
        prefix = prefix.strip("/")
        out: list[dict] = []
        dirs: set[str] = set()
        for f in self._entries(repo_id, commit).values():
            if prefix and not f.path.startswith(prefix + "/"):
                continue
            rest = f.path[len(prefix) + 1:] if prefix else f.path
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = "/".join(([prefix] if prefix else []) + parts[:i])
                if recursive or i == 1:
                    dirs.add(d)
            if len(parts) > 1 and not recursive:
                continue
            item = {"type": "file", "path": f.path, "size": len(f.data),
                    "oid": git_blob_sha1(f.pointer) if f.lfs else f.git_sha1}
            if f.lfs:
                item["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
            out.append(item)
        for d in sorted(dirs):
            out.append({"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()})
        out.sort(key=lambda x: x["path"])
        self._send(200, json.dumps(out).encode())


# --------------------------------------------------------------------------- fixtures for the hub tests

TINY_MODEL = "org/tiny"


def tiny_model_files(seed: int = 0) -> dict[str, bytes]:
    """A small sentence-transformers-shaped model: real safetensors weights (LFS), JSON configs."""
    import numpy as np
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    weights = save({
        "embeddings.weight": rng.standard_normal((128, 192)).astype(np.float32),
        "pooler.bias": rng.standard_normal((192,)).astype(np.float32),
    })
    vocab = {f"tok{i}": i for i in range(200)}
    return {
        "config.json": json.dumps({"model_type": "bert", "hidden_size": 192, "seed": seed}, indent=2).encode(),
        "model.safetensors": weights,
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab}}).encode(),
        "1_Pooling/config.json": b'{"word_embedding_dimension": 192, "pooling_mode_mean_tokens": true}\n',
    }


@dataclass
class PublishedModel:
    hub: HubServer
    model: str
    commit: str
    files: dict[str, bytes]
    manifest_path: Path
    manifest_dir: Path


def publish(hub: HubServer, tmp_path: Path, model: str = TINY_MODEL, files: dict[str, bytes] | None = None,
            manifest_files: dict[str, bytes] | None = None) -> PublishedModel:
    """Serve ``files`` as ``model`` and write its manifest (built from ``manifest_files``, default the same
    files) with modelguard's own directory builder into ``tmp_path/manifests``."""
    from modelguard.build import build_manifest
    from modelguard.manifest import save_manifest

    files = files or tiny_model_files()
    commit = hub.add_repo(model, files)
    src = tmp_path / "manifest-source"
    for rel, data in (manifest_files or files).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    manifest = build_manifest(src, model, commit)
    mdir = tmp_path / "manifests"
    path = save_manifest(manifest, mdir / f"{model}.yaml")
    return PublishedModel(hub, model, commit, files, path, mdir)
