"""A model folder's digest index: a warm verify reads one index instead of one entry per
file, and the index keeps every rule of the cache (stat key, expiry, rehash, private store)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from modelguard import verify
from modelguard.statcache import StatCache

from modelguard.errors import ManifestError
from modelguard.manifest import parse_manifest_text


@pytest.fixture
def model(tmp_path):
    files = {f"part-{i}.bin": os.urandom(3000 + i) for i in range(6)}
    files["sub/dir/tokenizer.json"] = b'{"model": "x"}\n'
    for name, data in files.items():
        (tmp_path / "model" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "model" / name).write_bytes(data)
    return parse_manifest_text(manifest_text(files), "tiny.yaml"), tmp_path / "model", files


def manifest_text(files: dict[str, bytes]) -> str:
    lines = ["modelguard: 1", "model: local/tiny", "components:", "  weights: {required: true}", "files:"]
    for name, data in files.items():
        lines += [f"- path: {name}", f"  size: {len(data)}", "  component: weights",
                  f"  sha256: {hashlib.sha256(data).hexdigest()}"]
    return "\n".join(lines) + "\n"


def settled_cache(tmp_path, **kw) -> StatCache:
    return StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=0, **kw)


@pytest.fixture
def opened(monkeypatch):
    """Names of cache files opened (entries ``*.json``, indexes ``*.idx``), through the real os.open."""
    names: list[str] = []
    real_open = os.open

    def counting_open(path, flags, mode=0o777, *, dir_fd=None):
        text = os.fspath(path)
        if text.endswith((".json", ".idx")) and dir_fd is not None:
            names.append(text)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", counting_open)
    return names


def index_files(cache: StatCache) -> list[Path]:
    return sorted(cache.entries.glob("*.idx"))


def fill(manifest, directory, cache) -> None:
    """Cold verify (writes the folder's index), then a warm one that every record answers."""
    assert verify(manifest, directory, cache=cache).ok
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)
    assert len(index_files(cache)) == 1


def test_warm_verify_reads_the_index_once_and_no_entry(tmp_path, model, opened):
    manifest, directory, files = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    opened.clear()
    report = verify(manifest, directory, cache=StatCache(cache.root))
    assert report.ok and all(r.cached for r in report.files), report.summary()
    assert [n for n in opened if n.endswith(".json")] == []
    assert len([n for n in opened if n.endswith(".idx")]) == 1
    assert report.result("part-0.bin").message == "ok (3.00 KB, sha256, cached)"
    assert report.result("sub/dir/tokenizer.json").cached
    assert os.stat(index_files(cache)[0]).st_mode & 0o777 == 0o600


def test_a_verify_writes_its_records_in_one_index_and_young_entries_stay_out(tmp_path, model, opened):
    # A cold verify creates no entry file per file (creating files costs far more than hashing
    # small ones): what verified goes into the folder's index in one write at the end.
    manifest, directory, files = model
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=3600 * 10**9)
    report = verify(manifest, directory, cache=cache)
    assert report.ok and not any(r.cached for r in report.files)
    assert list(cache.entries.glob("*.json")) == [] and len(index_files(cache)) == 1
    assert len([n for n in opened if n.endswith(".idx") and n.startswith(".tmp-")]) == 1  # one write
    opened.clear()
    report = verify(manifest, directory, cache=StatCache(cache.root))
    assert report.ok and all(r.cached for r in report.files), report.summary()
    assert [n for n in opened if n.endswith(".json")] == [] and len(opened) == 1
    # Entries another part of modelguard stored (lock add hashes a snapshot through the cache
    # itself) are read when the index has no record, and copied into it only once settled.
    for index in index_files(cache):
        index.unlink()
    for name in files:
        path = os.path.realpath(directory / name)
        cache.store(path, os.stat(path), {"sha256": hashlib.sha256(files[name]).hexdigest()})
    assert len(list(cache.entries.glob("*.json"))) == len(files)
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)  # from the entries
    assert index_files(cache) == []
    settled = StatCache(cache.root, racy_window_ns=0, index_settle_ns=0)
    assert all(r.cached for r in verify(manifest, directory, cache=settled).files)
    assert len(json.loads(index_files(cache)[0].read_text())["files"]) == len(files)  # copied in
    opened.clear()
    assert all(r.cached for r in verify(manifest, directory, cache=settled).files)
    assert [n for n in opened if n.endswith(".json")] == []


def test_a_file_modified_within_the_racy_window_gets_no_record(tmp_path, model):
    # A write later in the same timestamp tick would leave the stat key unchanged: a file
    # modified that recently is verified but not remembered, by the one-call read and the
    # general read alike (sub/dir/tokenizer.json is not straight in the folder).
    manifest, directory, files = model
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=3600 * 10**9, index_settle_ns=0)
    assert verify(manifest, directory, cache=cache).ok
    assert index_files(cache) == []
    report = verify(manifest, directory, cache=cache)
    assert report.ok and not any(r.cached for r in report.files)
    old = time.time_ns() - 7200 * 10**9
    for name in ("part-0.bin", "sub/dir/tokenizer.json"):
        os.utime(directory / name, ns=(old, old))  # the ctime stays young: still not remembered
    assert not any(r.cached for r in verify(manifest, directory, cache=cache).files)


def test_a_file_modified_just_before_its_read_gets_no_record_however_long_the_read(tmp_path, model):
    # The racy window counts from when the file's read began, not from when its digests are
    # stored: a write in the same timestamp tick as the file's last one, made while the read is
    # under way (after its stat key was taken), leaves the key unchanged. A read that outlasts
    # the window (a large file, a slow disk, a stalled thread; here a progress callback that
    # waits) must not make a just-modified file's record stand.
    manifest, directory, files = model
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=1_000_000_000, index_settle_ns=0)
    name = "sub/dir/tokenizer.json"  # not straight in the folder: the general read, progress during it
    (directory / name).write_bytes(files[name])  # modified just now

    def slow(n: int) -> None:
        if n == len(files[name]):
            time.sleep(1.1)  # the read of the young file outlasts the window

    report = verify(manifest, directory, cache=cache, progress=slow, max_workers=1)
    assert report.ok and not report.result(name).cached
    records = json.loads(index_files(cache)[0].read_bytes())["files"] if index_files(cache) else {}
    assert os.path.abspath(directory / name) not in records, records.keys()
    again = verify(manifest, directory, cache=cache)
    assert again.ok and not again.result(name).cached  # read again, not answered by a record


@pytest.mark.parametrize("source", ["index record", "entry"])
def test_a_rehash_that_finds_a_file_changed_leaves_nothing_vouching_for_it(tmp_path, model, source):
    # What the stat key cannot see (bytes changed through a shared memory map, the disk's bit
    # rot) is what rehash is for. Once a rehash has read a file and found other bytes than the
    # cache claims (its folder index's record, or the entry ``lock add`` stored), a plain verify
    # must not answer that file from the cache again.
    manifest, directory, files = model
    for name in ("part-3.bin", "sub/dir/tokenizer.json"):  # the one-call read and the general read
        cache = settled_cache(tmp_path)
        fill(manifest, directory, cache)
        changed = bytearray(files[name])
        changed[0] ^= 1
        (directory / name).write_bytes(bytes(changed))  # same size, other bytes
        index, forged = forge_index(cache, directory, files, name)
        if source == "index record":
            index.write_text(forged)  # the record as stored before the bytes changed under the same key
        else:  # the entry as lock add stored it before the bytes changed, and no record
            doc = json.loads(index.read_bytes())
            del doc["files"][os.path.abspath(directory / name)]
            index.write_text(json.dumps(doc))
            real = os.path.realpath(directory / name)
            cache.store(real, os.stat(real), {"sha256": hashlib.sha256(files[name]).hexdigest()})
        assert verify(manifest, directory, cache=StatCache(cache.root)).result(name).cached  # (the limit)
        rehashed = verify(manifest, directory, cache=cache, rehash=True)
        r = rehashed.result(name)
        assert r.diagnosis == "digest_mismatch" and not r.cached, r.message
        report = verify(manifest, directory, cache=cache)
        r = report.result(name)
        assert not report.ok and r.diagnosis == "digest_mismatch" and not r.cached, r.message
        assert r.message.startswith("right size, wrong content: sha256: expected "), r.message
        assert report.result("part-1.bin").cached  # the others stored afresh by the rehash
        (directory / name).write_bytes(files[name])
        cache.clear()


def test_a_verify_that_ends_later_keeps_what_another_verify_of_the_folder_wrote_meanwhile(tmp_path, model):
    # Two verifies of one folder at once (two processes, or a progress callback as here): the one
    # that writes the index last must not put back a record the other dropped (a rehash that
    # found the file changed under its unchanged key) nor drop one the other added.
    manifest, directory, files = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    bad = "part-3.bin"
    changed = bytearray(files[bad])
    changed[0] ^= 1
    (directory / bad).write_bytes(bytes(changed))  # same size, other bytes
    index, forged = forge_index(cache, directory, files, bad)
    index.write_text(forged)  # the record as stored before the bytes changed under the same key
    slow = "sub/dir/tokenizer.json"  # read by the general read, which reports progress
    (directory / slow).write_bytes(files[slow])  # a new stat key: read again, and stored
    (directory / "part-1.bin").write_bytes(files["part-1.bin"])  # the same
    inner: list = []

    def meanwhile(n: int) -> None:
        if n == len(files[slow]) and not inner:  # while the first verify reads: a rehash of the folder
            inner.append(verify(manifest, directory, cache=settled_cache(tmp_path), rehash=True))

    first = verify(manifest, directory, cache=settled_cache(tmp_path), progress=meanwhile, max_workers=1)
    assert first.result(bad).cached  # (what the stat key cannot see)
    assert inner and inner[0].result(bad).diagnosis == "digest_mismatch"
    report = verify(manifest, directory, cache=cache)
    r = report.result(bad)
    assert r.diagnosis == "digest_mismatch" and not r.cached, r.message
    assert all(x.cached for x in report.files if x.path != bad), report.summary()


def test_file_changed_after_indexing_is_read_and_fails(tmp_path, model):
    manifest, directory, files = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    path = directory / "part-2.bin"
    before = os.stat(path)
    time.sleep(0.05)  # past the timestamp tick of the first write
    with open(path, "r+b") as f:
        f.write(b"\x00" * 16)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    report = verify(manifest, directory, cache=cache)
    r = report.result("part-2.bin")
    assert r.diagnosis == "digest_mismatch" and not r.cached
    assert r.message.startswith("right size, wrong content: sha256: expected ")
    assert report.result("part-1.bin").cached


def forge_index(cache: StatCache, directory: Path, files: dict[str, bytes], name: str) -> Path:
    """Rewrite the folder's index so the record of ``name`` claims the manifest's digest for
    the file as it is now (corrupted): what an attacker or a damaged index would say."""
    index = index_files(cache)[0]
    doc = json.loads(index.read_bytes())
    real = os.path.abspath(directory / name)
    st = os.stat(real)
    doc["files"][real] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, time.time_ns(),
                          {"sha256": hashlib.sha256(files[name]).hexdigest()}]
    return index, json.dumps(doc)


def corrupt(directory: Path, name: str) -> None:
    with open(directory / name, "r+b") as f:
        f.write(b"\xff" * 32)


@pytest.mark.parametrize("how", ["group_writable", "symlink", "other_format"])
def test_untrusted_index_is_not_read(tmp_path, model, how):
    manifest, directory, files = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    corrupt(directory, "part-3.bin")
    index, forged = forge_index(cache, directory, files, "part-3.bin")
    if how == "group_writable":
        index.write_text(forged)
        os.chmod(index, 0o664)
    elif how == "symlink":
        decoy = tmp_path / "decoy.idx"
        decoy.write_text(forged)
        os.chmod(decoy, 0o600)
        index.unlink()
        index.symlink_to(decoy)
    else:
        index.write_text(forged.replace('"format": 1', '"format": 2'))
    report = verify(manifest, directory, cache=StatCache(cache.root, racy_window_ns=0, index_settle_ns=0))
    r = report.result("part-3.bin")
    assert not report.ok and r.diagnosis == "digest_mismatch" and not r.cached, r.message
    assert report.result("part-1.bin").ok and not report.result("part-1.bin").cached  # read: no record trusted


def test_control_a_trusted_forged_index_is_believed(tmp_path, model):
    """The index is trusted exactly as entries are: one this user wrote, privately, counts
    (which is why the tests above show that the untrusted ones are refused, not ignored by chance)."""
    manifest, directory, files = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    corrupt(directory, "part-3.bin")
    index, forged = forge_index(cache, directory, files, "part-3.bin")
    index.write_text(forged)
    assert verify(manifest, directory, cache=StatCache(cache.root)).result("part-3.bin").cached


def test_wrong_digest_in_the_index_is_read_again_and_the_record_replaced(tmp_path, model, opened):
    manifest, directory, files = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    index = index_files(cache)[0]
    doc = json.loads(index.read_bytes())
    real = os.path.abspath(directory / "part-4.bin")
    doc["files"][real][6] = {"sha256": "0" * 64}
    index.write_text(json.dumps(doc))
    report = verify(manifest, directory, cache=cache)
    r = report.result("part-4.bin")
    assert report.ok and not r.cached  # hashed again: the record said another digest
    # the record replaced by what this read found, in the same verify
    assert json.loads(index.read_bytes())["files"][real][6] == {"sha256": hashlib.sha256(files["part-4.bin"]).hexdigest()}
    opened.clear()
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)
    assert [n for n in opened if n.endswith(".json")] == []


@pytest.mark.parametrize("record", ["garbage", "short", "bad_hex", "string_time"])
def test_malformed_record_is_a_miss(tmp_path, model, record):
    manifest, directory, files = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    index = index_files(cache)[0]
    doc = json.loads(index.read_bytes())
    real = os.path.abspath(directory / "part-5.bin")
    good = doc["files"][real]
    doc["files"][real] = {"garbage": "x", "short": good[:3], "bad_hex": good[:6] + [{"sha256": "zz" * 32}],
                          "string_time": good[:5] + [str(good[5]), good[6]]}[record]
    index.write_text(json.dumps(doc))
    report = verify(manifest, directory, cache=cache)
    assert report.ok and not report.result("part-5.bin").cached  # read again, the record not believed
    fresh = json.loads(index.read_bytes())["files"][real]  # the record written again, whole
    assert fresh[:5] == good[:5] and fresh[6] == good[6] and fresh[5] >= good[5]
    assert verify(manifest, directory, cache=cache).result("part-5.bin").cached


def test_index_of_random_bytes_is_an_empty_index(tmp_path, model):
    manifest, directory, _ = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    index_files(cache)[0].write_bytes(os.urandom(500))
    report = verify(manifest, directory, cache=cache)
    assert report.ok and not any(r.cached for r in report.files)  # no record believed: every file read
    assert json.loads(index_files(cache)[0].read_bytes())["format"] == 1  # rewritten whole
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)


def test_expired_records_and_rehash_read_every_file(tmp_path, model, opened):
    manifest, directory, files = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    expired = verify(manifest, directory, cache=settled_cache(tmp_path, max_age_s=0))
    assert expired.ok and not any(r.cached for r in expired.files)
    fill(manifest, directory, cache)
    index = index_files(cache)[0]
    doc = json.loads(index.read_bytes())
    for record in doc["files"].values():
        record[5] -= 3 * 24 * 3600 * 10**9  # stored three days ago
    index.write_text(json.dumps(doc))
    rehashed = verify(manifest, directory, cache=cache, rehash=True)
    assert rehashed.ok and not any(r.cached for r in rehashed.files)  # no record believed
    records = json.loads(index.read_bytes())["files"]
    assert len(records) == len(files) and all(time.time_ns() - r[5] < 60 * 10**9 for r in records.values())
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)  # stored afresh


def test_clear_removes_indexes(tmp_path, model):
    manifest, directory, _ = model
    cache = settled_cache(tmp_path)
    fill(manifest, directory, cache)
    assert cache.clear() == 1  # the folder's index: a verify writes no entry file
    assert index_files(cache) == []
    assert not any(r.cached for r in verify(manifest, directory, cache=cache).files)


# --------------------------------------------------------------------------- the manifest on the warm path


def test_a_manifest_file_read_again_unchanged_is_not_parsed_again(tmp_path, model, monkeypatch):
    from modelguard import manifest as manifest_module

    _, directory, files = model
    path = tmp_path / "tiny.yaml"
    path.write_text(manifest_text(files))
    parsed = []
    real = manifest_module.parse_manifest_text
    monkeypatch.setattr(manifest_module, "parse_manifest_text", lambda *a, **k: parsed.append(1) or real(*a, **k))
    first = manifest_module.load_manifest(path)
    assert manifest_module.load_manifest(path) is first and len(parsed) == 1
    path.write_text(manifest_text(files).replace("model: local/tiny", "model: local/other"))
    assert manifest_module.load_manifest(path).model == "local/other" and len(parsed) == 2
    path.write_text(manifest_text(files).replace("  size:", "  sise:", 1))
    with pytest.raises(ManifestError, match="sise"):
        manifest_module.load_manifest(path)
    with pytest.raises(ManifestError, match="sise"):  # errors are never remembered
        manifest_module.load_manifest(path)

