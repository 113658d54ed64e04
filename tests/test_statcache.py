"""The verified-digest cache: an unchanged file costs a stat; nothing odd in the store ever
makes a changed file pass or a verification fail."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modelguard import verify
from modelguard.errors import UsageError
from modelguard.manifest import parse_manifest_text
from modelguard.statcache import FORMAT_VERSION, StatCache, default_cache_dir, resolve_cache

from helpers.cli import REPO, run_cli

MINILM_MANIFEST = REPO / "manifests" / "sentence-transformers" / "all-MiniLM-L6-v2.yaml"


def make_model(directory: Path, files: dict[str, bytes]):
    """Write ``files`` into ``directory`` and a manifest for them (digests from hashlib)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["modelguard: 1", "model: local/tiny", "components:", "  weights: {required: true}", "files:"]
    for name, data in files.items():
        (directory / name).write_bytes(data)
        lines += [
            f"- path: {name}", f"  size: {len(data)}", "  component: weights",
            f"  sha256: {hashlib.sha256(data).hexdigest()}", f"  md5: {hashlib.md5(data).hexdigest()}",
        ]
    return parse_manifest_text("\n".join(lines) + "\n", "tiny.yaml")


@pytest.fixture
def reads(monkeypatch):
    """Bytes read by hashing, through a counting wrapper around the real os.preadv."""
    counted = []
    real_preadv = os.preadv

    def counting_preadv(fd, buffers, offset, *flags):
        n = real_preadv(fd, buffers, offset, *flags)
        counted.append(n)
        return n

    monkeypatch.setattr(os, "preadv", counting_preadv)

    class Reads:
        def total(self) -> int:
            return sum(counted)

        def reset(self) -> None:
            counted.clear()

    return Reads()


@pytest.fixture
def model(tmp_path):
    files = {"model.bin": os.urandom(300_000), "head.pt": os.urandom(5_000), "config.json": b'{"a": 1}\n'}
    manifest = make_model(tmp_path / "model", files)
    return manifest, tmp_path / "model", files


def no_race_cache(tmp_path) -> StatCache:
    # Files made by the test are younger than the default racy window; store them anyway.
    return StatCache(tmp_path / "mgcache", racy_window_ns=0)


def entry_file(cache: StatCache, path: Path) -> Path:
    return Path(cache._entry_file(os.path.realpath(path)))


# --------------------------------------------------------------------------- hits


def test_unchanged_file_is_not_read_again(tmp_path, model, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    first = verify(manifest, directory, cache=cache)
    assert first.ok and not any(r.cached for r in first.files)
    assert reads.total() == sum(len(d) for d in files.values())
    reads.reset()
    second = verify(manifest, directory, cache=cache)
    assert second.ok, second.summary()
    assert all(r.cached for r in second.files)
    assert reads.total() == 0, "a cached, unchanged file was read again"
    assert second.result("model.bin").message == "ok (300.00 KB, sha256, cached)"


def test_default_cache_is_durable_across_processes_and_no_cache_rehashes(minilm_dir, isolated_env):
    def cached_flags(*extra):
        proc = run_cli("verify", str(MINILM_MANIFEST), str(minilm_dir), "--json", *extra)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["ok"] is True
        return {f["path"]: f["cached"] for f in doc["files"]}

    assert cached_flags() == {"config.json": False, "model.safetensors": False, "tokenizer.json": False}
    entries = isolated_env / "mgcache" / "digests" / f"v{FORMAT_VERSION}"
    assert len(list(entries.glob("*.json"))) == 3
    assert cached_flags() == {"config.json": True, "model.safetensors": True, "tokenizer.json": True}
    assert cached_flags("--no-cache") == {"config.json": False, "model.safetensors": False, "tokenizer.json": False}
    proc = run_cli("verify", str(MINILM_MANIFEST), str(minilm_dir))
    assert proc.returncode == 0
    assert "ok (90.87 MB, sha256, cached)" in proc.stdout


def test_cache_false_rehashes_and_stores_nothing(minilm_dir, isolated_env, reads):
    size = sum(f.stat().st_size for f in minilm_dir.iterdir() if f.name in
               ("config.json", "model.safetensors", "tokenizer.json"))
    verify(MINILM_MANIFEST, minilm_dir)  # default: the durable cache
    reads.reset()
    report = verify(MINILM_MANIFEST, minilm_dir, cache=False)
    assert report.ok and not any(r.cached for r in report.files)
    assert reads.total() == size
    reads.reset()
    assert all(r.cached for r in verify(MINILM_MANIFEST, minilm_dir).files)
    assert reads.total() == 0


def test_env_switch_turns_the_default_cache_off(minilm_dir, isolated_env, monkeypatch):
    monkeypatch.setenv("MODELGUARD_NO_CACHE", "1")
    verify(MINILM_MANIFEST, minilm_dir)
    report = verify(MINILM_MANIFEST, minilm_dir)
    assert report.ok and not any(r.cached for r in report.files)
    assert not (isolated_env / "mgcache" / "digests").exists()


def test_just_written_file_is_not_stored(tmp_path, model, reads):
    """A file younger than the racy window could still change within one timestamp tick."""
    manifest, directory, files = model
    assert StatCache(tmp_path / "x").racy_window_ns == 2_000_000_000  # the default
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=3600 * 10**9)  # however slow this machine is
    verify(manifest, directory, cache=cache)
    reads.reset()
    report = verify(manifest, directory, cache=cache)
    assert report.ok and not any(r.cached for r in report.files)
    assert reads.total() == sum(len(d) for d in files.values())
    assert not entry_file(cache, directory / "model.bin").exists()


def test_failed_file_is_never_stored(tmp_path, model):
    manifest, directory, _ = model
    cache = no_race_cache(tmp_path)
    with open(directory / "head.pt", "r+b") as f:
        f.write(b"\x00\x01\x02")
    report = verify(manifest, directory, cache=cache)
    assert report.result("head.pt").diagnosis == "digest_mismatch"
    assert not entry_file(cache, directory / "head.pt").exists()
    assert entry_file(cache, directory / "model.bin").exists()


# --------------------------------------------------------------------------- changed files


def _wait_for_next_timestamp_tick():
    # ctime comes from a coarse clock (one tick: a few ms); step past it so the rewrite
    # below is not "racily" in the same tick as the first write.
    time.sleep(0.05)


def test_rewrite_in_place_with_size_and_mtime_restored_fails(tmp_path, model):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    assert verify(manifest, directory, cache=cache).ok
    path = directory / "model.bin"
    before = os.stat(path)
    _wait_for_next_timestamp_tick()
    with open(path, "r+b") as f:
        f.seek(1000)
        f.write(os.urandom(16))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert after.st_ctime_ns != before.st_ctime_ns
    report = verify(manifest, directory, cache=cache)
    r = report.result("model.bin")
    assert not report.ok and r.status == "failed" and not r.cached
    assert r.diagnosis == "digest_mismatch"
    assert r.message.startswith("right size, wrong content: sha256: expected ")
    assert report.result("head.pt").cached


def test_replaced_file_with_size_and_mtime_restored_fails(tmp_path, model):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    assert verify(manifest, directory, cache=cache).ok
    path = directory / "head.pt"
    before = os.stat(path)
    _wait_for_next_timestamp_tick()
    new = directory / "head.pt.new"
    new.write_bytes(os.urandom(len(files["head.pt"])))
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(new, path)
    report = verify(manifest, directory, cache=cache)
    r = report.result("head.pt")
    assert r.diagnosis == "digest_mismatch" and not r.cached
    assert "right size, wrong content" in r.message


def test_stale_entry_with_other_digest_makes_the_file_read_again(tmp_path, model, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    target = entry_file(cache, directory / "head.pt")
    doc = json.loads(target.read_text())
    doc["digests"]["sha256"] = "0" * 64  # e.g. stored while checking against another manifest
    target.write_text(json.dumps(doc))
    reads.reset()
    report = verify(manifest, directory, cache=cache)
    assert report.ok and not report.result("head.pt").cached
    assert reads.total() == len(files["head.pt"])


def test_key_includes_the_path(tmp_path, model):
    manifest, directory, _ = model
    cache = no_race_cache(tmp_path)
    link = tmp_path / "hardlink.bin"
    os.link(directory / "model.bin", link)  # (linking changes the ctime: link before verifying)
    verify(manifest, directory, cache=cache)
    st = os.stat(link)
    assert st == os.stat(directory / "model.bin")
    assert cache.lookup(directory / "model.bin", st, ["sha256"]) is not None  # same inode, same stat
    assert cache.lookup(link, st, ["sha256"]) is None


def test_retargeted_link_is_a_miss(tmp_path):
    """Entries are keyed on the path as given; the stat of what it leads to pins the content."""
    cache = no_race_cache(tmp_path)
    first, second = tmp_path / "blob-a", tmp_path / "blob-b"
    first.write_bytes(b"A" * 4096)
    second.write_bytes(b"B" * 4096)
    os.utime(second, ns=(os.stat(first).st_atime_ns, os.stat(first).st_mtime_ns))
    link = tmp_path / "model.bin"
    link.symlink_to(first)
    cache.store(link, os.stat(link), {"sha256": hashlib.sha256(b"A" * 4096).hexdigest()})
    assert cache.lookup(link, os.stat(link), ["sha256"]) == {"sha256": hashlib.sha256(b"A" * 4096).hexdigest()}
    link.unlink()
    link.symlink_to(second)
    assert cache.lookup(link, os.stat(link), ["sha256"]) is None


def test_all_digests_needs_every_digest_then_hits(tmp_path, model, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)  # stores sha256 only
    reads.reset()
    report = verify(manifest, directory, cache=cache, all_digests=True)
    assert report.ok and not any(r.cached for r in report.files)
    assert reads.total() == sum(len(d) for d in files.values())
    stored = json.loads(entry_file(cache, directory / "model.bin").read_text())["digests"]
    assert stored == {"md5": hashlib.md5(files["model.bin"]).hexdigest(),
                      "sha256": hashlib.sha256(files["model.bin"]).hexdigest()}
    reads.reset()
    report = verify(manifest, directory, cache=cache, all_digests=True)
    assert all(r.cached for r in report.files) and reads.total() == 0
    assert report.result("model.bin").message == "ok (300.00 KB, sha256+md5, cached)"


# --------------------------------------------------------------------------- a damaged store


def _corrupt_entries(kind: str, target: Path) -> None:
    valid = target.read_bytes()
    doc = json.loads(valid)
    if kind == "garbage":
        target.write_bytes(os.urandom(300))
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "truncated":
        target.write_bytes(valid[: len(valid) // 2])
    elif kind == "not_an_object":
        target.write_text("[1, 2, 3]")
    elif kind == "wrong_types":
        doc["key"] = "inode"
        doc["digests"] = ["sha256"]
        target.write_text(json.dumps(doc))
    elif kind == "bad_digest":
        doc["digests"]["sha256"] = "not hex!" * 8
        target.write_text(json.dumps(doc))
    elif kind == "huge":
        target.write_bytes(b" " * (1 << 20) + valid)
    elif kind == "directory":
        target.unlink()
        target.mkdir()
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "not_an_object", "wrong_types",
                                  "bad_digest", "huge", "directory"])
def test_corrupt_store_is_a_miss_and_heals(tmp_path, model, reads, kind):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    target = entry_file(cache, directory / "model.bin")
    _corrupt_entries(kind, target)
    reads.reset()
    report = verify(manifest, directory, cache=cache)
    r = report.result("model.bin")
    assert report.ok and r.status == "ok" and not r.cached
    assert report.result("head.pt").cached
    assert reads.total() == len(files["model.bin"])
    if kind != "directory":  # the next store replaces the damaged entry
        assert json.loads(target.read_text())["digests"]["sha256"] == hashlib.sha256(files["model.bin"]).hexdigest()
        assert verify(manifest, directory, cache=cache).result("model.bin").cached


def test_store_from_a_newer_format_version_is_a_miss(tmp_path, model, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    target = entry_file(cache, directory / "model.bin")
    doc = json.loads(target.read_text())
    doc["format"] = FORMAT_VERSION + 1
    target.write_text(json.dumps(doc))
    # a newer version's own folder is never read either
    newer = cache.root / "digests" / f"v{FORMAT_VERSION + 1}"
    newer.mkdir(mode=0o700)
    doc_newer = dict(doc)
    (newer / target.name).write_text(json.dumps(doc_newer))
    reads.reset()
    report = verify(manifest, directory, cache=cache)
    assert report.ok and not report.result("model.bin").cached
    assert reads.total() == len(files["model.bin"])


def test_store_writable_by_others_is_not_trusted(tmp_path, model, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    os.chmod(cache.entries, 0o777)
    fresh = StatCache(cache.root, racy_window_ns=0)
    st = os.stat(directory / "model.bin")
    assert fresh.lookup(directory / "model.bin", st, ["sha256"]) is None
    reads.reset()
    report = verify(manifest, directory, cache=fresh)
    assert report.ok and not any(r.cached for r in report.files)
    assert reads.total() == sum(len(d) for d in files.values())


def test_unwritable_cache_location_never_fails_verify(tmp_path, model, monkeypatch):
    manifest, directory, _ = model
    blocker = tmp_path / "a-file-not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("MODELGUARD_CACHE_DIR", str(blocker))
    report = verify(manifest, directory)
    assert report.ok
    assert verify(manifest, directory).ok
    assert blocker.read_text() == "x"


# --------------------------------------------------------------------------- several processes

WRITER = textwrap.dedent("""
    import json, os, sys
    from modelguard.statcache import StatCache
    cache_dir, worker, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    files = json.loads(sys.argv[4])
    cache = StatCache(cache_dir, racy_window_ns=0)
    hits = misses = 0
    for r in range(rounds):
        for path, digests in files.items():
            st = os.stat(path)
            # odd workers store md5 too: writers of different shapes race on one entry
            cache.store(path, st, digests if worker % 2 else {"sha256": digests["sha256"]})
            got = cache.lookup(path, st, ["sha256"])
            if got is None:
                misses += 1
            elif got != {"sha256": digests["sha256"]}:
                print("WRONG", path, got)
                sys.exit(3)
            else:
                hits += 1
    print(json.dumps({"hits": hits, "misses": misses}))
""")


def test_concurrent_writers_from_several_processes_leave_a_consistent_store(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    files = {}
    for i in range(8):
        p = data_dir / f"shard-{i}.bin"
        p.write_bytes(os.urandom(2000 + i))
        files[str(p)] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                         "md5": hashlib.md5(p.read_bytes()).hexdigest()}
    cache_dir = tmp_path / "shared-cache"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(cache_dir), str(w), "60", json.dumps(files)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out + err
        counts = json.loads(out.strip().splitlines()[-1])
        assert counts["hits"] + counts["misses"] == 60 * 8
        assert counts["hits"] > 0
    cache = StatCache(cache_dir, racy_window_ns=0)
    names = sorted(os.listdir(cache.entries))
    assert not [n for n in names if n.startswith(".tmp-")], names
    assert len(names) == 8
    for path, digests in files.items():
        doc = json.loads(entry_file(cache, Path(path)).read_text())
        assert doc["format"] == FORMAT_VERSION and doc["path"] == os.path.abspath(path)
        assert doc["digests"]["sha256"] == digests["sha256"]
        assert doc["digests"].get("md5", digests["md5"]) == digests["md5"]
        assert cache.lookup(path, os.stat(path), ["sha256"]) == {"sha256": digests["sha256"]}


# --------------------------------------------------------------------------- configuration


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELGUARD_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("MODELGUARD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "modelguard"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "modelguard"


def test_cache_argument_forms(tmp_path):
    assert resolve_cache(False) is None and resolve_cache(None) is None
    assert isinstance(resolve_cache(True), StatCache)
    assert resolve_cache(tmp_path).root == tmp_path
    with pytest.raises(UsageError, match=r"cache must be True, False, a directory or an object with "
                                         r"lookup\(\) and store\(\), not int") as info:
        resolve_cache(3)
    assert "cache=False" in info.value.remedy


def test_bad_cache_argument_from_verify(model):
    manifest, directory, _ = model
    with pytest.raises(UsageError, match="not list"):
        verify(manifest, directory, cache=[])
