"""The verified-digest cache: an unchanged file costs a stat; nothing odd in the store ever
makes a changed file pass or a verification fail."""

from __future__ import annotations

import hashlib
import json
import os
import stat
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


def store_entries(cache: StatCache, directory: Path, files: dict[str, bytes]) -> None:
    """One entry file per file, as ``lock add`` stores them (StatCache.store); a verify writes
    none (what verifies goes into its folder's index), but reads them where the index has no record."""
    for name, data in files.items():
        path = os.path.realpath(directory / name)
        cache.store(path, os.stat(path), {"sha256": hashlib.sha256(data).hexdigest()})
        assert entry_file(cache, directory / name).is_file()


def index_record(cache: StatCache, directory: Path, name: str) -> list | None:
    """The record a verify stored for ``name`` in its folder's index, or None."""
    indexes = sorted(cache.entries.glob("*.idx")) if cache.entries.is_dir() else []
    assert len(indexes) <= 1, indexes
    if not indexes:
        return None
    return json.loads(indexes[0].read_text())["files"].get(os.path.realpath(directory / name))


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
    assert len(list(entries.glob("*.idx"))) == 1 and list(entries.glob("*.json")) == []  # one index write
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
    assert index_record(cache, directory, "model.bin") is None


def test_failed_file_is_never_stored(tmp_path, model):
    manifest, directory, _ = model
    cache = no_race_cache(tmp_path)
    with open(directory / "head.pt", "r+b") as f:
        f.write(b"\x00\x01\x02")
    report = verify(manifest, directory, cache=cache)
    assert report.result("head.pt").diagnosis == "digest_mismatch"
    assert index_record(cache, directory, "head.pt") is None
    assert index_record(cache, directory, "model.bin") is not None


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
    store_entries(cache, directory, files)
    target = entry_file(cache, directory / "head.pt")
    doc = json.loads(target.read_text())
    doc["digests"]["sha256"] = "0" * 64  # e.g. stored while checking against another manifest
    target.write_text(json.dumps(doc))
    reads.reset()
    report = verify(manifest, directory, cache=cache)
    assert report.ok and not report.result("head.pt").cached
    assert report.result("model.bin").cached and report.result("config.json").cached  # from their entries
    assert reads.total() == len(files["head.pt"])


def test_key_includes_the_path(tmp_path, model):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    link = tmp_path / "hardlink.bin"
    os.link(directory / "model.bin", link)  # (linking changes the ctime: link before storing)
    store_entries(cache, directory, files)
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
    stored = index_record(cache, directory, "model.bin")[6]
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
    store_entries(cache, directory, files)
    target = entry_file(cache, directory / "model.bin")
    _corrupt_entries(kind, target)
    reads.reset()
    report = verify(manifest, directory, cache=cache)
    r = report.result("model.bin")
    assert report.ok and r.status == "ok" and not r.cached
    assert report.result("head.pt").cached
    assert reads.total() == len(files["model.bin"])
    # what the read verified is stored in the folder's index, which answers from then on
    assert index_record(cache, directory, "model.bin")[6] == {"sha256": hashlib.sha256(files["model.bin"]).hexdigest()}
    assert verify(manifest, directory, cache=cache).result("model.bin").cached


def test_store_from_a_newer_format_version_is_a_miss(tmp_path, model, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    store_entries(cache, directory, files)
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


# --------------------------------------------------------------------------- trust: what the cache believes


def _set_entry_age(cache: StatCache, path: Path, age_s: float) -> None:
    """Make what the cache holds for ``path`` (its record in the folder's index, where a verify
    stored it, else its entry file) ``age_s`` seconds old."""
    stored_at = time.time_ns() - int(age_s * 1e9)
    for index in cache.entries.glob("*.idx"):
        doc = json.loads(index.read_text())
        record = doc["files"].get(os.path.realpath(path))
        if record is not None:
            record[5] = stored_at
            index.write_text(json.dumps(doc))
            return
    target = entry_file(cache, path)
    doc = json.loads(target.read_text())
    doc["stored_at_ns"] = stored_at
    target.write_text(json.dumps(doc))


def _stored_at(cache: StatCache, path: Path) -> int:
    return index_record(cache, path.parent, path.name)[5]


def _walk_modes(top: Path):
    for folder, dirs, files in os.walk(top):
        yield Path(folder), os.lstat(folder)
        for name in files:
            yield Path(folder) / name, os.lstat(Path(folder) / name)


@pytest.mark.parametrize("umask", [0o000, 0o777])
def test_cache_folders_are_private_whatever_the_umask(tmp_path, model, umask, reads):
    manifest, directory, files = model
    top = tmp_path / "a"
    cache = StatCache(top / "b" / "mgcache", racy_window_ns=0)  # a, b and mgcache do not exist yet
    old = os.umask(umask)
    try:
        assert verify(manifest, directory, cache=cache).ok
    finally:
        os.umask(old)
    seen = dict(_walk_modes(top))
    assert top / "b" / "mgcache" / "digests" / "v1" in seen
    for path, st in seen.items():
        if stat.S_ISDIR(st.st_mode):
            assert stat.S_IMODE(st.st_mode) == 0o700, (path, oct(st.st_mode))
        else:
            assert stat.S_IMODE(st.st_mode) == 0o600, (path, oct(st.st_mode))
    assert len([p for p in seen if p.suffix == ".idx"]) == 1 and not [p for p in seen if p.suffix == ".json"]
    reads.reset()
    assert all(r.cached for r in verify(manifest, directory, cache=StatCache(cache.root)).files)
    assert reads.total() == 0


@pytest.mark.parametrize("component", ["root", "digests", "v1"])
def test_any_store_folder_writable_by_others_is_not_trusted(tmp_path, model, component):
    manifest, directory, _ = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    folder = {"root": cache.root, "digests": cache.root / "digests", "v1": cache.entries}[component]
    os.chmod(folder, 0o757)
    report = verify(manifest, directory, cache=StatCache(cache.root, racy_window_ns=0))
    assert report.ok and not any(r.cached for r in report.files)
    os.chmod(folder, 0o700)
    assert all(r.cached for r in verify(manifest, directory, cache=StatCache(cache.root)).files)


def test_store_folder_reached_through_a_link_below_the_root_is_not_trusted(tmp_path, model):
    manifest, directory, _ = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    elsewhere = tmp_path / "elsewhere"
    os.rename(cache.root / "digests", elsewhere)
    (cache.root / "digests").symlink_to(elsewhere)
    report = verify(manifest, directory, cache=StatCache(cache.root, racy_window_ns=0))
    assert report.ok and not any(r.cached for r in report.files)


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
def test_odd_entry_is_a_miss_and_never_hangs(tmp_path, model, isolated_env, kind):
    """A FIFO planted as an entry would block a plain open() forever; a link would lead the
    read anywhere; a device is not an entry either. Each is a miss, in a CLI run with a timeout."""
    manifest, directory, files = model
    manifest_path = tmp_path / "tiny.yaml"
    manifest_path.write_text(_manifest_text(files))
    cache = StatCache(isolated_env / "mgcache", racy_window_ns=0)
    store_entries(cache, directory, files)
    target = entry_file(cache, directory / "model.bin")
    valid = target.read_bytes()
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target, 0o600)
    elif kind == "symlink":
        decoy = tmp_path / "decoy.json"
        decoy.write_bytes(valid)
        os.chmod(decoy, 0o600)
        target.symlink_to(decoy)
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero: an endless read
    started = time.monotonic()
    proc = run_cli("verify", str(manifest_path), str(directory), "--json", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    flags = {f["path"]: f["cached"] for f in json.loads(proc.stdout)["files"]}
    assert flags == {"model.bin": False, "head.pt": True, "config.json": True}
    assert cache.lookup(directory / "model.bin", os.stat(directory / "model.bin"), ["sha256"]) is None


def _manifest_text(files: dict[str, bytes]) -> str:
    lines = ["modelguard: 1", "model: local/tiny", "components:", "  weights: {required: true}", "files:"]
    for name, data in files.items():
        lines += [f"- path: {name}", f"  size: {len(data)}", "  component: weights",
                  f"  sha256: {hashlib.sha256(data).hexdigest()}", f"  md5: {hashlib.md5(data).hexdigest()}"]
    return "\n".join(lines) + "\n"


def test_expired_entry_is_rehashed_then_stored_again(tmp_path, model, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    assert cache.max_age_s == 7 * 24 * 3600  # the default: a week
    verify(manifest, directory, cache=cache)
    _set_entry_age(cache, directory / "model.bin", 7 * 24 * 3600 + 60)
    _set_entry_age(cache, directory / "head.pt", 6 * 24 * 3600)
    reads.reset()
    report = verify(manifest, directory, cache=cache)
    assert report.ok
    assert not report.result("model.bin").cached and report.result("head.pt").cached
    assert reads.total() == len(files["model.bin"])
    assert time.time_ns() - _stored_at(cache, directory / "model.bin") < 60 * 10**9  # stored afresh
    reads.reset()
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)
    assert reads.total() == 0


def test_entry_from_the_future_is_a_miss(tmp_path, model):
    manifest, directory, _ = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    _set_entry_age(cache, directory / "model.bin", -3600)  # a clock that was set back
    assert not verify(manifest, directory, cache=cache).result("model.bin").cached


@pytest.mark.parametrize("text, seconds", [("604800", 604800), ("90s", 90), ("30m", 1800), ("12h", 43200),
                                           ("7d", 604800), ("2w", 1209600), (" 1.5h ", 5400), ("0", 0)])
def test_max_age_from_environment(monkeypatch, tmp_path, text, seconds):
    monkeypatch.setenv("MODELGUARD_CACHE_MAX_AGE", text)
    assert StatCache(tmp_path).max_age_s == seconds


def test_max_age_zero_makes_every_entry_expired(tmp_path, model, monkeypatch):
    manifest, directory, _ = model
    verify(manifest, directory, cache=no_race_cache(tmp_path))
    monkeypatch.setenv("MODELGUARD_CACHE_MAX_AGE", "0")
    report = verify(manifest, directory, cache=tmp_path / "mgcache")
    assert report.ok and not any(r.cached for r in report.files)


@pytest.mark.parametrize("text", ["soon", "-5", "7y", "nan", "inf", "d"])
def test_bad_max_age_is_a_clear_error(monkeypatch, tmp_path, model, text):
    manifest, directory, _ = model
    monkeypatch.setenv("MODELGUARD_CACHE_MAX_AGE", text)
    with pytest.raises(UsageError, match=r"\$MODELGUARD_CACHE_MAX_AGE=.* is not a cache lifetime") as info:
        verify(manifest, directory)
    assert info.value.remedy == "export MODELGUARD_CACHE_MAX_AGE=7d  (or unset it for the default, a week)"
    assert verify(manifest, directory, cache=False).ok  # no cache, nothing to configure


def test_bad_max_age_in_the_cli_exits_2_without_traceback(tmp_path, model, isolated_env):
    manifest, directory, files = model
    manifest_path = tmp_path / "tiny.yaml"
    manifest_path.write_text(_manifest_text(files))
    proc = run_cli("verify", str(manifest_path), str(directory), env={"MODELGUARD_CACHE_MAX_AGE": "a while"})
    assert proc.returncode == 2
    assert "$MODELGUARD_CACHE_MAX_AGE='a while' is not a cache lifetime" in proc.stderr
    assert "export MODELGUARD_CACHE_MAX_AGE=7d" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cache_dir_naming_an_unknown_home_is_a_clear_error(tmp_path, model, isolated_env):
    manifest, directory, files = model
    manifest_path = tmp_path / "tiny.yaml"
    manifest_path.write_text(_manifest_text(files))
    env = {"MODELGUARD_CACHE_DIR": "~nosuchuser/x"}
    proc = run_cli("verify", str(manifest_path), str(directory), env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "$MODELGUARD_CACHE_DIR='~nosuchuser/x' names a home directory that does not exist" in proc.stderr
    assert "export MODELGUARD_CACHE_DIR=/path/to/folder" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("verify", str(manifest_path), str(directory), "--no-cache", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr


def test_no_home_directory_turns_the_cache_off_with_a_warning(monkeypatch, tmp_path, model):
    manifest, directory, _ = model
    for name in ("MODELGUARD_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError("no home"))))
    with pytest.warns(RuntimeWarning, match="no home directory for this user, so the verified-digest cache is off"):
        report = verify(manifest, directory)
    assert report.ok and not any(r.cached for r in report.files)


def test_rehash_reads_every_file_and_refreshes_the_store(tmp_path, model, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    _set_entry_age(cache, directory / "model.bin", 3 * 24 * 3600)
    reads.reset()
    report = verify(manifest, directory, cache=cache, rehash=True)
    assert report.ok and not any(r.cached for r in report.files)
    assert reads.total() == sum(len(d) for d in files.values())
    assert time.time_ns() - _stored_at(cache, directory / "model.bin") < 60 * 10**9


def test_rehash_from_the_environment(tmp_path, model, monkeypatch, reads):
    manifest, directory, files = model
    cache = no_race_cache(tmp_path)
    verify(manifest, directory, cache=cache)
    monkeypatch.setenv("MODELGUARD_REHASH", "1")
    reads.reset()
    assert not any(r.cached for r in verify(manifest, directory, cache=cache).files)
    assert reads.total() == sum(len(d) for d in files.values())
    monkeypatch.setenv("MODELGUARD_REHASH", "0")
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)


def test_guard_rehash_setting(tmp_path, isolated_env, monkeypatch, reads):
    """install(rehash=True) and MODELGUARD_REHASH=1 make the guard hash every file before a load."""
    import modelguard
    from modelguard import guard

    files = {"model.bin": os.urandom(50_000), "config.json": b"{}\n"}
    directory = tmp_path / "local-model"
    make_model(directory, files)
    (directory / "modelguard.yaml").write_text(_manifest_text(files))
    from modelguard.manifest import load_manifest

    verify(load_manifest(directory / "modelguard.yaml"), directory,
           cache=StatCache(isolated_env / "mgcache", racy_window_ns=0))
    total = sum(len(d) for d in files.values())

    def bytes_read_by_a_guarded_check():
        reads.reset()
        with guard.verified_scope():
            guard.check_before_load(directory)
        return reads.total()

    modelguard.install()
    try:
        assert bytes_read_by_a_guarded_check() == 0
        modelguard.install(rehash=True)
        assert guard.current_policy().rehash is True
        assert bytes_read_by_a_guarded_check() == total
        modelguard.uninstall()
        modelguard.install()
        monkeypatch.setenv("MODELGUARD_REHASH", "1")
        assert bytes_read_by_a_guarded_check() == total
        # a rehash believes no record and drops those it read; the files are younger than the
        # guard's racy window, so it stored none afresh: store them again, as above
        verify(load_manifest(directory / "modelguard.yaml"), directory,
               cache=StatCache(isolated_env / "mgcache", racy_window_ns=0))
        modelguard.install(rehash=False)
        assert bytes_read_by_a_guarded_check() == 0
    finally:
        modelguard.uninstall()


def test_memory_map_write_is_caught_with_rehash_and_after_expiry(tmp_path, model, isolated_env):
    """Bytes changed through a writable shared map whose page is already dirty leave the
    stat key as it was: the cache cannot see it. --rehash and expiry catch it."""
    import mmap

    manifest, directory, files = model
    manifest_path = tmp_path / "tiny.yaml"
    manifest_path.write_text(_manifest_text(files))
    path = directory / "model.bin"
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mapped:
        mapped[0] = mapped[0]  # first write fault: the kernel stamps mtime/ctime now
        cache = StatCache(isolated_env / "mgcache", racy_window_ns=0)
        assert verify(manifest, directory, cache=cache).ok  # stored under the current key
        before = os.stat(path)
        mapped[0] = (mapped[0] + 1) % 256  # the page is dirty already: no new time stamp
        mapped.flush()  # msync
    after = os.stat(path)
    assert path.read_bytes() != files["model.bin"]
    blind = (after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ctime_ns,
                                                                    before.st_ino)
    plain = run_cli("verify", str(manifest_path), str(directory))
    if blind:  # what the cache cannot see (ext4, tmpfs): the changed file passes from the cache
        assert plain.returncode == 0 and "model.bin" in plain.stdout and "cached" in plain.stdout
    else:  # this file system stamped the write: the key changed and the file is read
        assert plain.returncode == 1
    if blind:  # once the record has expired, caught too
        index = next(cache.entries.glob("*.idx"))
        kept = index.read_bytes()
        _set_entry_age(cache, path, 8 * 24 * 3600)
        expired = run_cli("verify", str(manifest_path), str(directory))
        assert expired.returncode == 1, expired.stdout
        assert "right size, wrong content: sha256: expected" in expired.stdout
        index.write_bytes(kept)  # the record as it was before it expired
        assert run_cli("verify", str(manifest_path), str(directory)).returncode == 0
    rehashed = run_cli("verify", str(manifest_path), str(directory), "--rehash")
    assert rehashed.returncode == 1, rehashed.stdout
    assert "model.bin" in rehashed.stdout and "right size, wrong content: sha256: expected" in rehashed.stdout
    # the failure is not stored, and the record the rehash found wrong is dropped: caught from then on
    after = run_cli("verify", str(manifest_path), str(directory))
    assert after.returncode == 1, after.stdout
    assert "right size, wrong content: sha256: expected" in after.stdout


# --------------------------------------------------------------------------- trust: another user


FORGER = r"""
set -e
cd "$1"
# the victim's cache sits in a folder this user may write (no sticky bit): move it away and
# put forged entries where it was, made private and owned by this user
mv mgcache mgcache.victim
mkdir -p mgcache/digests/v1
printf '%s' "$3" > "mgcache/digests/v1/$2"
chmod 700 mgcache mgcache/digests mgcache/digests/v1
chmod 600 "mgcache/digests/v1/$2"
echo forged
"""


def _second_user() -> tuple[int, int]:
    import pwd

    name = "mgforger"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        proc = subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot create a second user: {proc.stderr.strip()}")
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="creating a second user to attack the cache needs root")
@pytest.mark.parametrize("attack", ["swap_folder", "squat_before_first_use", "link_root_to_forged"])
def test_another_user_cannot_make_a_corrupt_file_pass(model, attack):
    import shutil
    import tempfile

    manifest, directory, files = model
    uid, gid = _second_user()
    shared = Path(tempfile.mkdtemp(prefix="mg-shared-"))
    try:
        os.chmod(shared, 0o777)  # writable by everyone, no sticky bit
        root = shared / "mgcache"
        path = directory / "model.bin"
        with open(path, "r+b") as f:
            f.write(b"\x00" * 64)  # the corrupt file
        corrupt = os.stat(path)
        real = os.path.abspath(path)
        forged = json.dumps({
            "format": FORMAT_VERSION, "path": real, "key": [corrupt.st_dev, corrupt.st_ino, corrupt.st_size,
                                                            corrupt.st_mtime_ns, corrupt.st_ctime_ns],
            "digests": {"sha256": hashlib.sha256(files["model.bin"]).hexdigest()}, "stored_at_ns": time.time_ns(),
        })
        name = StatCache._entry_name(real)
        if attack == "squat_before_first_use":
            script = FORGER.replace("mv mgcache mgcache.victim\n", "")
        elif attack == "link_root_to_forged":
            script = FORGER.replace("mkdir -p mgcache/", "mkdir -p forged/").replace(
                "> \"mgcache/digests", "> \"forged/digests").replace(
                "chmod 700 mgcache mgcache/digests mgcache/digests/v1",
                "chmod 700 forged forged/digests forged/digests/v1; ln -s forged mgcache").replace(
                "chmod 600 \"mgcache/", "chmod 600 \"forged/")
        else:
            script = FORGER
        if attack != "squat_before_first_use":
            # the victim's own cache exists first, and is sound
            assert verify(manifest, directory, cache=StatCache(root, racy_window_ns=0)).result("head.pt").status == "ok"
        proc = subprocess.run(["sh", "-c", script, "forger", str(shared), name, forged],
                              user=uid, group=gid, extra_groups=[], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == "forged", proc.stderr
        forged_entry = (shared / ("forged" if attack == "link_root_to_forged" else "mgcache")
                        / "digests" / "v1" / name)
        assert os.stat(forged_entry).st_uid == uid
        for _ in range(5):
            report = verify(manifest, directory, cache=StatCache(root, racy_window_ns=0))
            r = report.result("model.bin")
            assert not report.ok and r.diagnosis == "digest_mismatch" and not r.cached, r.message
    finally:
        shutil.rmtree(shared, ignore_errors=True)
