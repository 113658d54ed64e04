"""A file that changes while it is hashed is never reported as verified and never cached."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hostile import GROWER_SCRIPT, WriterDuringHashing, append_bytes, overwrite_at, replace_with
from modelguard.manifest import Component, FileEntry, Manifest
from modelguard.statcache import StatCache
from modelguard.verifying import verify

SIZE = 3 * (1 << 20) + 123  # several read chunks, so a write can land between two reads


def _content(seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (SIZE // 32) + b"x" * (SIZE % 32)


def _manifest(name: str, data: bytes) -> Manifest:
    return Manifest(
        model="org/race", revision=None, components={"model": Component("model", True)},
        files=(FileEntry(path=name, size=len(data), component="model",
                         digests={"sha256": hashlib.sha256(data).hexdigest()}),),
    )


@pytest.fixture
def cache(tmp_path):
    # racy window 0: only change detection can keep a changed file out of the cache
    return StatCache(tmp_path / "cache", racy_window_ns=0)


def _cache_entries(cache: StatCache) -> list[str]:
    return sorted(os.listdir(cache.entries)) if cache.entries.is_dir() else []


def _verify(model: Path, manifest: Manifest, cache, hook=None):
    return verify(manifest, model, cache=cache, progress=hook, max_workers=1).result(manifest.files[0].path)


def test_control_unchanged_file_verifies_and_is_cached(tmp_path, cache):
    data = _content()
    (tmp_path / "w.bin").write_bytes(data)
    r = _verify(tmp_path, _manifest("w.bin", data), cache)
    assert r.ok and not r.cached
    assert len(_cache_entries(cache)) == 1
    assert _verify(tmp_path, _manifest("w.bin", data), cache).cached


def test_append_while_hashing(tmp_path, cache):
    data = _content()
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    hook = WriterDuringHashing(path, append_bytes(b"more" * 1024))
    r = _verify(tmp_path, _manifest("w.bin", data), cache, hook)
    assert hook.fired == 1
    assert not r.ok and r.diagnosis == "changed_while_reading"
    assert "file changed while it was read" in r.message and "not verified" in r.message
    assert "wait until whatever is writing the file has finished" in r.remedy
    assert _cache_entries(cache) == []


def test_download_finishing_while_hashing_is_not_verified(tmp_path, cache):
    """The tail is written with the RIGHT bytes during the read: the digest matches the
    manifest, yet the file changed under the reader, so it is not reported verified."""
    data = _content()
    path = tmp_path / "w.bin"
    cut = SIZE - (1 << 20)
    path.write_bytes(data[:cut] + b"\0" * (SIZE - cut))  # preallocated, not finished
    hook = WriterDuringHashing(path, overwrite_at(cut, data[cut:]))
    r = _verify(tmp_path, _manifest("w.bin", data), cache, hook)
    assert path.read_bytes() == data  # the file is right by now ...
    assert r.diagnosis == "changed_while_reading" and not r.ok  # ... but was not while it was read
    assert _cache_entries(cache) == []
    again = _verify(tmp_path, _manifest("w.bin", data), cache)
    assert again.ok and not again.cached


def test_file_replaced_by_rename_while_hashing(tmp_path, cache):
    good, bad = _content(1), _content(2)
    path = tmp_path / "w.bin"
    path.write_bytes(good)
    hook = WriterDuringHashing(path, replace_with(bad), next_tick=False)
    r = _verify(tmp_path, _manifest("w.bin", good), cache, hook)
    assert r.diagnosis == "changed_while_reading" and not r.ok  # (the old inode's ctime moved)
    assert _cache_entries(cache) == []
    assert _verify(tmp_path, _manifest("w.bin", good), cache).diagnosis == "digest_mismatch"


def test_link_retargeted_while_hashing(tmp_path, cache):
    """HF-cache style: the path is a link to a blob; it is pointed at another blob while the
    first is read. The blob that was read did not change, but the path no longer names it."""
    good, bad = _content(1), _content(2)
    (tmp_path / "blob-good").write_bytes(good)
    (tmp_path / "blob-bad").write_bytes(bad)
    path = tmp_path / "w.bin"
    os.symlink("blob-good", path)

    def retarget(p: Path) -> None:
        os.symlink("blob-bad", tmp_path / "w.bin.new")
        os.replace(tmp_path / "w.bin.new", p)

    hook = WriterDuringHashing(path, retarget, next_tick=False)
    r = _verify(tmp_path, _manifest("w.bin", good), cache, hook)
    assert r.diagnosis == "changed_while_reading" and not r.ok
    assert "replaced or removed while it was read" in r.message
    assert _cache_entries(cache) == []


def test_file_removed_while_hashing(tmp_path, cache):
    data = _content()
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    hook = WriterDuringHashing(path, os.unlink, next_tick=False)
    r = _verify(tmp_path, _manifest("w.bin", data), cache, hook)
    assert r.diagnosis == "changed_while_reading" and not r.ok
    assert _cache_entries(cache) == []


def test_writer_process_growing_the_file(tmp_path, cache):
    """A separate process keeps appending while verify runs again and again."""
    data = _content()
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    writer = subprocess.Popen([sys.executable, "-c", GROWER_SCRIPT, str(path), "30"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "started"
        manifest = _manifest("w.bin", data)
        diagnoses = [_verify(tmp_path, manifest, cache).diagnosis for _ in range(5)]
    finally:
        writer.kill()
        writer.wait()
    assert all(d in ("changed_while_reading", "oversized") for d in diagnoses), diagnoses
    assert _cache_entries(cache) == []
