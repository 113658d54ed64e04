"""SIGKILL in the middle of work: no file that later verifies falsely, no corrupted cache
store, nothing the user owned is lost, and the next run completes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.cli import run_cli
from modelguard.hfcache import repo_folder
from modelguard.manifest import load_manifest
from modelguard.statcache import StatCache
from modelguard.verifying import verify

WEIGHTS = "model.safetensors"


def _wait_for(predicate, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _fetch_and_kill_mid_transfer(hub, repo, *args) -> None:
    """Start `modelguard fetch`, wait until the weights are half sent (the server then
    stalls), SIGKILL the whole process group."""
    hub.misbehave(WEIGHTS, "stall", times=1, stall_s=60)
    weights = hub.file(repo.model, repo.commit, WEIGHTS)
    proc = subprocess.Popen([sys.executable, "-m", "modelguard", "fetch", repo.model, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ),
                            start_new_session=True)
    try:
        _wait_for(lambda: hub.transfers(weights) or proc.poll() is not None, what="the weights transfer")
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)  # half the body is on its way into a file
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    hub.behave()


def _assert_nothing_verifies_falsely(manifest, directory: Path) -> None:
    """Every manifest file present either verifies or is reported broken; the weights,
    cut off mid-transfer, never verify."""
    if not directory.is_dir():
        return
    report = verify(manifest, directory, cache=True)
    for r in report.files:
        path = directory / r.path
        if r.ok:  # what verify calls ok is, read back independently, the manifest's size and sha256
            data = path.read_bytes()
            assert len(data) == manifest.file(r.path).size, r.path
            assert hashlib.sha256(data).hexdigest() == manifest.file(r.path).digests["sha256"], r.path
    assert not report.result(WEIGHTS).ok


def _assert_cache_store_sound(cache_root: Path) -> None:
    entries = cache_root / "digests" / "v1"
    if not entries.is_dir():
        return
    for f in entries.iterdir():
        if f.name.startswith(".tmp-"):
            continue  # a write cut short: never read as an entry
        doc = json.loads(f.read_bytes())  # a whole entry or index: rename is atomic
        if f.suffix == ".idx":  # a folder's index: a verify's records
            assert doc["format"] == 1 and all(len(record) == 7 for record in doc["files"].values())
        else:
            assert doc["format"] == 1 and len(doc["key"]) == 5


def test_sigkill_of_fetch_into_the_hf_cache(repo, hub, isolated_env):
    manifest = load_manifest(repo.manifest_path)
    _fetch_and_kill_mid_transfer(hub, repo)
    snap = repo_folder(repo.model) / "snapshots" / repo.commit
    assert not (snap / WEIGHTS).exists() or not verify(manifest, snap).result(WEIGHTS).ok
    _assert_nothing_verifies_falsely(manifest, snap)
    _assert_cache_store_sound(isolated_env / "mgcache")
    # the next run completes and leaves no partial download behind
    r = run_cli("fetch", repo.model, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    assert verify(manifest, snap).ok
    assert (snap / WEIGHTS).read_bytes() == repo.files[WEIGHTS]
    _assert_cache_store_sound(isolated_env / "mgcache")
    blobs = repo_folder(repo.model) / "blobs"
    partial = [p for p in blobs.iterdir() if p.name.endswith(".incomplete")]
    linked = {os.path.realpath(snap / rel) for rel in repo.files}
    assert not linked & {str(p.resolve()) for p in partial}  # no snapshot file is a partial download
    assert partial == []  # the next run removed the killed run's temporary download


def test_sigkill_of_fetch_repairing_a_local_copy_keeps_the_old_bytes(repo, hub, tmp_path):
    manifest = load_manifest(repo.manifest_path)
    local = tmp_path / "local"
    for rel, data in repo.files.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    damaged = bytearray(repo.files[WEIGHTS])
    damaged[100] ^= 0xFF
    (local / WEIGHTS).write_bytes(bytes(damaged))  # the user's (damaged) copy
    _fetch_and_kill_mid_transfer(hub, repo, "--local-dir", str(local))
    _assert_nothing_verifies_falsely(manifest, local)
    # the user's bytes are not lost: still in place, or kept aside next to it
    kept = [p for p in local.rglob("*") if p.is_file() and p.read_bytes() == bytes(damaged)]
    assert kept, sorted(str(p.relative_to(local)) for p in local.rglob("*"))
    r = run_cli("fetch", repo.model, "--local-dir", str(local))
    assert r.returncode == 0, r.stderr
    assert verify(manifest, local).ok
    assert (local / WEIGHTS).read_bytes() == repo.files[WEIGHTS]
    assert not [p for p in local.rglob("*.incomplete")]


WRITER = """
import os, sys, time
from modelguard.statcache import StatCache
cache = StatCache(sys.argv[1], racy_window_ns=0)
files = sys.argv[2:]
digests = {"sha256": "ab" * 32, "md5": "cd" * 16}
print("ready", flush=True)
while True:
    for f in files:
        cache.store(f, os.stat(f), digests)
"""


def test_sigkill_while_writing_the_digest_cache(tmp_path):
    files = []
    for i in range(20):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(b"x" * (i + 1))
        os.utime(f, ns=(1, 1))
        files.append(str(f))
    root = tmp_path / "cache"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), *files], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _assert_cache_store_sound(root)
    cache = StatCache(root)
    hits = [cache.lookup(f, os.stat(f), ["sha256"]) for f in files]
    assert all(h in (None, {"sha256": "ab" * 32}) for h in hits), hits
    assert any(hits)
