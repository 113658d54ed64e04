"""The engine's hot loops (modelguard.quickpath): a cache hit answered from the folder index
and a small file read in one call give the same results as the general checks, and hand every
file that is not plainly fine back to them, so each diagnosis stays what it was."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from helpers.hub_layout import snapshot_of_links
from modelguard import verify
from modelguard.manifest import parse_manifest_text
from modelguard.statcache import StatCache

FILES = {f"part-{i}.bin": os.urandom(5000 + 997 * i) for i in range(5)}
FILES["tokenizer.json"] = b'{"model": {"vocab": {"a": 1}}}\n'
FILES["sub/config.json"] = b'{"hidden_size": 8}\n'


def manifest_text(files: dict[str, bytes]) -> str:
    lines = ["modelguard: 1", "model: local/tiny", "components:", "  weights: {required: true}", "files:"]
    for name, data in files.items():
        lines += [f"- path: {name}", f"  size: {len(data)}", "  component: weights",
                  f"  sha256: {hashlib.sha256(data).hexdigest()}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def model(tmp_path):
    for name, data in FILES.items():
        (tmp_path / "model" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "model" / name).write_bytes(data)
    return parse_manifest_text(manifest_text(FILES), "tiny.yaml"), tmp_path / "model"


def warm_cache(tmp_path, manifest, directory) -> StatCache:
    """A cache whose folder index holds every file of ``directory``."""
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=0)
    assert verify(manifest, directory, cache=cache).ok  # stores the entries
    report = verify(manifest, directory, cache=cache)  # copies them into the index
    assert report.ok and all(r.cached for r in report.files)
    assert list(cache.entries.glob("*.idx"))
    return cache


def outcome(report) -> dict[str, tuple]:
    return {r.path: (r.status, r.diagnosis, r.message, dict(r.expected), dict(r.actual), r.remedy)
            for r in report.files}


def test_a_warm_hit_reports_what_a_read_reports(tmp_path, model):
    manifest, directory = model
    cold = verify(manifest, directory, cache=False)
    cache = warm_cache(tmp_path, manifest, directory)
    warm = verify(manifest, directory, cache=cache)
    assert all(r.cached for r in warm.files)
    for (path, read), (_, hit) in zip(outcome(cold).items(), outcome(warm).items()):
        assert hit[:2] == read[:2] == ("ok", "ok")
        assert hit[2] == read[2][:-1] + ", cached)", (path, hit[2], read[2])
        assert hit[3:] == read[3:]
    size = len(FILES["part-0.bin"])
    assert warm.result("part-0.bin").message == f"ok ({size / 1000:.2f} KB, sha256, cached)"
    assert warm.result("tokenizer.json").message == f"ok ({len(FILES['tokenizer.json'])} B, sha256, cached)"


def test_a_shared_hit_result_cannot_be_changed_through_a_report(tmp_path, model):
    manifest, directory = model
    cache = warm_cache(tmp_path, manifest, directory)
    first = verify(manifest, directory, cache=cache).result("part-1.bin")
    with pytest.raises(TypeError):
        first.actual["sha256"] = "0" * 64  # type: ignore[index]
    with pytest.raises(TypeError):
        first.expected["size"] = 1  # type: ignore[index]
    again = verify(manifest, directory, cache=cache).result("part-1.bin")
    assert again.actual == {"size": len(FILES["part-1.bin"]), "sha256": hashlib.sha256(FILES["part-1.bin"]).hexdigest()}
    assert json.loads(json.dumps(again.to_dict()))["actual"] == dict(again.actual)


def break_files(directory: Path) -> None:
    """One file per diagnosis the engine gives a small file straight in the folder, or below."""
    (directory / "part-0.bin").write_bytes(FILES["part-0.bin"][:-10])  # truncated
    (directory / "part-1.bin").write_bytes(bytes(len(FILES["part-1.bin"])))  # zero_filled
    flipped = bytearray(FILES["part-2.bin"])
    flipped[100] ^= 1
    (directory / "part-2.bin").write_bytes(bytes(flipped))  # digest_mismatch, same size
    (directory / "part-3.bin").unlink()  # missing
    outside = directory.parent / "outside.bin"
    outside.write_bytes(FILES["part-4.bin"])
    (directory / "part-4.bin").unlink()
    (directory / "part-4.bin").symlink_to(outside)  # symlink_escape
    (directory / "tokenizer.json").unlink()
    os.mkfifo(directory / "tokenizer.json")  # not_a_file, never read
    (directory / "sub" / "config.json").write_bytes(b'{"hidden_size": 9}\n')


EXPECTED = {"part-0.bin": "truncated", "part-1.bin": "zero_filled", "part-2.bin": "digest_mismatch",
            "part-3.bin": "missing", "part-4.bin": "symlink_escape", "tokenizer.json": "not_a_file",
            "sub/config.json": "digest_mismatch"}


def assert_diagnosed_as_before(report, missing: str) -> None:
    """``report`` of a model broken by break_files or break_blobs: each file's diagnosis and
    message as the general checks give them (``missing``: how the missing file's message starts)."""
    assert {r.path: r.diagnosis for r in report.files} == EXPECTED
    assert not any(r.cached for r in report.files)
    messages = {r.path: r.message for r in report.files}
    assert messages["part-0.bin"].startswith(f"truncated: {len(FILES['part-0.bin']) - 10} of "
                                             f"{len(FILES['part-0.bin'])} bytes"), messages["part-0.bin"]
    assert "every byte is zero" in messages["part-1.bin"]
    assert messages["part-2.bin"].startswith("right size, wrong content: sha256: expected ")
    assert messages["part-3.bin"].startswith(missing), messages["part-3.bin"]
    assert messages["part-4.bin"].startswith("links outside the model directory (to ")
    assert messages["tokenizer.json"] == "is a FIFO (named pipe), not a regular file; not opened"


@pytest.mark.parametrize("cache_kind", ["none", "empty", "warm index"])
def test_every_broken_file_is_diagnosed_as_before(tmp_path, model, cache_kind):
    manifest, directory = model
    cache = {"none": False, "empty": tmp_path / "empty-cache",
             "warm index": warm_cache(tmp_path, manifest, directory) if cache_kind == "warm index" else None}[cache_kind]
    break_files(directory)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(verify(manifest, directory, cache=cache)), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "verify did not finish (a FIFO was opened for reading?)"
    report = done[0]
    assert_diagnosed_as_before(report, "missing: not in ")


def test_a_link_inside_the_folder_still_verifies_cold_and_warm(tmp_path, model):
    manifest, directory = model
    cache = warm_cache(tmp_path, manifest, directory)
    (directory / "stash").mkdir()
    os.replace(directory / "part-2.bin", directory / "stash" / "part-2.bin")
    (directory / "part-2.bin").symlink_to(Path("stash") / "part-2.bin")
    for chosen in (False, cache):
        report = verify(manifest, directory, cache=chosen)
        assert report.ok, report.summary()
        assert report.result("part-2.bin").diagnosis == "ok"


def test_a_file_the_listing_named_that_changed_kind_or_grew_is_diagnosed_as_before(tmp_path, model):
    # With no cache, small files go to the readers as the folder's listing names them; what is
    # not a regular file of the manifest's size by the time it is opened goes to the general checks.
    manifest, directory = model
    with open(directory / "part-0.bin", "ab") as f:
        f.write(b"more")  # grew: the same bytes first
    (directory / "part-1.bin").unlink()
    (directory / "part-1.bin").mkdir()  # a folder where a file is listed
    by_cache = {}
    for kind, cache in (("none", False), ("empty", tmp_path / "empty-cache")):
        report = verify(manifest, directory, cache=cache)
        by_cache[kind] = {r.path: (r.diagnosis, r.message) for r in report.files}
        assert by_cache[kind]["part-0.bin"][0] == "oversized", by_cache[kind]["part-0.bin"]
        assert by_cache[kind]["part-1.bin"][0] == "not_a_file", by_cache[kind]["part-1.bin"]
        assert report.result("part-2.bin").diagnosis == "ok"
    assert by_cache["none"] == by_cache["empty"]


@pytest.mark.parametrize("cache_kind", ["none", "folder index"])
def test_a_file_swapped_after_the_listing_is_never_taken_for_the_listed_file(tmp_path, model, monkeypatch,
                                                                             cache_kind):
    # The readers trust the folder's listing for the type and read one byte more than the size
    # (with the folder index, an fstat of the opened file first): whatever took a listed file's
    # place between the listing and the open (a FIFO, a folder, a link to the right bytes
    # outside, a longer file with the right first bytes) must still fail the fast read and get
    # the general diagnosis, without hanging, and never get a record.
    from modelguard import engine

    manifest, directory = model
    outside = tmp_path / "outside.bin"
    outside.write_bytes(FILES["part-2.bin"])
    listed = engine._Checker.regular_names

    def listing_then_swap(checker):
        names = listed(checker)
        assert {"part-0.bin", "part-1.bin", "part-2.bin", "part-3.bin"} <= names
        for name in ("part-0.bin", "part-1.bin", "part-2.bin"):
            (directory / name).unlink()
        os.mkfifo(directory / "part-0.bin")
        (directory / "part-1.bin").mkdir()
        (directory / "part-2.bin").symlink_to(outside)
        (directory / "part-3.bin").write_bytes(FILES["part-3.bin"] + b"\0")
        return names

    monkeypatch.setattr(engine._Checker, "regular_names", listing_then_swap)
    done: list = []
    cache = False if cache_kind == "none" else StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=0)
    worker = threading.Thread(target=lambda: done.append(verify(manifest, directory, cache=cache)), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "verify did not finish (a FIFO was opened for reading?)"
    found = {r.path: r.diagnosis for r in done[0].files}
    assert found == {"part-0.bin": "not_a_file", "part-1.bin": "not_a_file", "part-2.bin": "symlink_escape",
                     "part-3.bin": "oversized", "part-4.bin": "ok", "tokenizer.json": "ok",
                     "sub/config.json": "ok"}, found
    if cache:
        records = json.loads(next(cache.entries.glob("*.idx")).read_text())["files"]
        assert sorted(os.path.relpath(p, directory) for p in records) == ["part-4.bin", "sub/config.json",
                                                                          "tokenizer.json"]


def test_a_hit_remembered_from_an_earlier_verify_still_needs_its_stat_key_and_age(tmp_path, model):
    # A record found to hold the expected digests is remembered (the index's records are never
    # changed in place); every later hit on it still compares the file's stat key, type and the
    # record's age.
    manifest, directory = model
    cache = warm_cache(tmp_path, manifest, directory)
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)  # remembered now
    part = directory / "part-2.bin"
    changed = bytearray(part.read_bytes())
    changed[7] ^= 1
    part.write_bytes(bytes(changed))  # same size, other bytes
    report = verify(manifest, directory, cache=cache)
    assert report.result("part-2.bin").diagnosis == "digest_mismatch"
    assert not report.result("part-2.bin").cached
    assert all(r.cached for r in report.files if r.path != "part-2.bin")
    # the index without part-2's record, remembered in turn; then the same records, read by a
    # cache whose entries expire at once: nothing is a hit
    assert sum(r.cached for r in verify(manifest, directory, cache=cache).files) == len(FILES) - 1
    expired = StatCache(cache.root, racy_window_ns=0, index_settle_ns=0, max_age_s=1e-9)
    report = verify(manifest, directory, cache=expired)
    assert not any(r.cached for r in report.files)


def test_a_grown_file_is_caught_whatever_buffer_the_pool_hands_out(tmp_path, model):
    # The one-call read tells a longer file by the byte it reads past the size: a pooled read
    # buffer no longer than the file (another reader's size) must not hide that byte.
    from modelguard import hashing

    manifest, directory = model
    with open(directory / "part-1.bin", "ab") as f:
        f.write(b"EVIL")  # the right bytes first, then more
    size = len(FILES["part-1.bin"])
    with open(tmp_path / "other.bin", "wb") as f:
        f.write(os.urandom(10_000))
    with open(tmp_path / "other.bin", "rb") as f:  # a serial read leaves its buffer in the pool
        hashing.hash_fd(f.fileno(), ["sha256"], threads=False, chunk_size=size)
    hashing._SPARE_BUFFERS.append(bytearray(size))  # and one of exactly the file's size
    report = verify(manifest, directory, cache=False, max_workers=1)
    assert report.result("part-1.bin").diagnosis == "oversized", report.result("part-1.bin").message


def test_an_empty_entry_is_not_matched_by_a_device_put_in_its_place(tmp_path, model, monkeypatch):
    # /dev/null reads as empty: an empty file is checked the general way, which looks at its type.
    import stat as stat_module

    from modelguard import engine

    manifest_text_with_empty = manifest_text({**FILES, "empty.txt": b""})
    manifest = parse_manifest_text(manifest_text_with_empty, "tiny.yaml")
    _, directory = model
    (directory / "empty.txt").write_bytes(b"")
    listed = engine._Checker.regular_names

    def listing_then_swap(checker):
        names = listed(checker)
        (directory / "empty.txt").unlink()
        os.mknod(directory / "empty.txt", stat_module.S_IFCHR | 0o600, os.makedev(1, 3))
        return names

    try:
        os.mknod(tmp_path / "probe", stat_module.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs CAP_MKNOD")
    monkeypatch.setattr(engine._Checker, "regular_names", listing_then_swap)
    report = verify(manifest, directory, cache=False)
    assert report.result("empty.txt").diagnosis == "not_a_file", report.result("empty.txt").message
    assert report.result("empty.txt").message == "is a device file, not a regular file; not opened"


def test_a_small_file_with_no_sha256_is_read_once_and_compared_by_its_own_digests(tmp_path, model):
    # The one-call read compares the sha256 inline and every other digest (md5, git's blob id,
    # several at once with all_digests) through the same compare the general read makes.
    _, directory = model
    names = ("part-0.bin", "part-1.bin", "part-2.bin")
    blob = {n: hashlib.sha1(b"blob %d\x00" % len(FILES[n]) + FILES[n]).hexdigest() for n in names}
    lines = ["modelguard: 1", "model: local/tiny", "components:", "  weights: {required: true}", "files:"]
    lines += ["- path: part-0.bin", f"  size: {len(FILES['part-0.bin'])}", "  component: weights",
              f"  md5: {hashlib.md5(FILES['part-0.bin']).hexdigest()}"]
    lines += ["- path: part-1.bin", f"  size: {len(FILES['part-1.bin'])}", "  component: weights",
              f"  git_sha1: {blob['part-1.bin']}"]
    lines += ["- path: part-2.bin", f"  size: {len(FILES['part-2.bin'])}", "  component: weights",
              f"  git_sha1: {blob['part-2.bin']}", f"  sha256: {hashlib.sha256(FILES['part-2.bin']).hexdigest()}"]
    manifest = parse_manifest_text("\n".join(lines) + "\n", "tiny.yaml")
    for all_digests in (False, True):
        report = verify(manifest, directory, cache=False, all_digests=all_digests)
        assert report.ok, report.summary()
        assert report.result("part-2.bin").message.endswith(
            "sha256+git_sha1)" if all_digests else "sha256)"), report.result("part-2.bin").message
    for name in names:
        changed = bytearray(FILES[name])
        changed[100] ^= 1
        (directory / name).write_bytes(bytes(changed))  # same size, one bit other
    for all_digests in (False, True):
        report = verify(manifest, directory, cache=False, all_digests=all_digests)
        assert {n: report.result(n).diagnosis for n in names} == dict.fromkeys(names, "digest_mismatch")
        assert report.result("part-0.bin").message.startswith("right size, wrong content: md5: expected ")
        assert report.result("part-1.bin").message.startswith("right size, wrong content: git_sha1: expected ")


def break_blobs(snap: Path, blobs: Path) -> None:
    """break_files for a snapshot: the blobs' bytes changed through the links."""
    (snap / "part-0.bin").write_bytes(FILES["part-0.bin"][:-10])  # truncated
    (snap / "part-1.bin").write_bytes(bytes(len(FILES["part-1.bin"])))  # zero_filled
    flipped = bytearray(FILES["part-2.bin"])
    flipped[100] ^= 1
    (snap / "part-2.bin").write_bytes(bytes(flipped))  # digest_mismatch, same size
    (snap / "part-3.bin").resolve().unlink()  # missing: the link dangles
    outside = snap.parents[3] / "outside.bin"
    outside.write_bytes(FILES["part-4.bin"])
    (snap / "part-4.bin").unlink()
    (snap / "part-4.bin").symlink_to(outside)  # symlink_escape
    fifo = (snap / "tokenizer.json").resolve()
    fifo.unlink()
    os.mkfifo(fifo)  # not_a_file, never read
    (snap / "sub" / "config.json").write_bytes(b'{"hidden_size": 9}\n')


@pytest.mark.parametrize("cache_kind", ["none", "empty", "warm index"])
def test_every_broken_blob_of_a_hub_snapshot_is_diagnosed_as_before(tmp_path, model, cache_kind):
    # The snapshot's links are followed to their blobs and those read in the tight loop: each
    # broken blob still gets the general checks' diagnosis and message.
    manifest, _ = model
    snap, blobs = snapshot_of_links(tmp_path / "hub", "local/tiny", FILES, "c" * 40)
    cache = {"none": False, "empty": tmp_path / "empty-cache",
             "warm index": warm_cache(tmp_path, manifest, snap) if cache_kind == "warm index" else None}[cache_kind]
    assert verify(manifest, snap, cache=cache).ok
    break_blobs(snap, blobs)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(verify(manifest, snap, cache=cache)), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "verify did not finish (a FIFO was opened for reading?)"
    report = done[0]
    assert_diagnosed_as_before(report, "dangling symlink (points to ../../blobs/")


def test_a_blob_swapped_after_its_link_was_followed_is_never_taken_for_it(tmp_path, model, monkeypatch):
    from modelguard import quickpath

    manifest, _ = model
    snap, blobs = snapshot_of_links(tmp_path / "hub", "local/tiny", FILES, "c" * 40)
    followed = quickpath._blob
    swapped = []

    def follow_then_swap(checker, entry):
        item = followed(checker, entry)
        if item is not None and entry.path == "part-2.bin":
            blob = Path(item[3])
            blob.unlink()
            os.mkfifo(blob)  # after the link was followed: the read must not block on it
            swapped.append(blob)
        return item

    monkeypatch.setattr(quickpath, "_blob", follow_then_swap)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(verify(manifest, snap, cache=False)), daemon=True)
    worker.start()
    worker.join(60)
    assert swapped and done, "verify did not finish (a FIFO was opened for reading?)"
    r = done[0].result("part-2.bin")
    assert r.diagnosis == "not_a_file" and r.message == "is a FIFO (named pipe), not a regular file; not opened"
    assert [x.path for x in done[0].failures] == ["part-2.bin"]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count open files")
def test_a_verify_refused_for_its_cache_argument_leaves_no_folder_open(tmp_path, model):
    from modelguard.errors import UsageError

    manifest, directory = model
    before = open_fds()
    for _ in range(3):
        with pytest.raises(UsageError, match="cache must be True, False, a directory or an object"):
            verify(manifest, directory, cache=object())
    assert open_fds() == before


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count open files")
def test_links_into_many_folders_hold_no_descriptor_per_folder(tmp_path):
    # Each snapshot file links into a folder of its own: the tight loop keeps a few folders
    # open, the rest take the general path, so no read runs out of descriptors.
    import resource

    snap = tmp_path / "hub" / "models--local--tiny" / "snapshots" / ("d" * 40)
    files = {}
    for i in range(300):
        data = os.urandom(200 + i)
        (snap / f"d{i}").mkdir(parents=True)
        (snap / f"d{i}" / "f").write_bytes(data)
        os.symlink(f"d{i}/f", snap / f"l{i}")
        files[f"l{i}"] = data
    manifest = parse_manifest_text(manifest_text(files), "many.yaml")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = open_fds()
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(before + 100, hard), hard))
    try:
        report = verify(manifest, snap, cache=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert [(r.path, r.message) for r in report.files if not r.ok] == []
    assert open_fds() == before


def test_a_blob_folder_moved_out_after_it_was_opened_is_not_read_from(tmp_path, model, monkeypatch):
    # The blob folder, opened for the first link, is moved out of the repository and a link to
    # a copy outside put in its place: no blob is then read from the folder (now outside the
    # roots); each file gets the general path's diagnosis, as every link now leads outside.
    from modelguard import quickpath

    manifest, _ = model
    snap, blobs = snapshot_of_links(tmp_path / "hub", "local/tiny", FILES, "c" * 40)
    outside = tmp_path / "outside-blobs"
    followed, swapped = quickpath._blob, []

    def follow_then_swap(checker, entry):
        item = followed(checker, entry)
        if item is not None and not swapped:
            os.rename(blobs, tmp_path / "moved-blobs")
            os.symlink(outside, blobs)
            import shutil
            shutil.copytree(tmp_path / "moved-blobs", outside)
            swapped.append(entry.path)
        return item

    monkeypatch.setattr(quickpath, "_blob", follow_then_swap)
    report = verify(manifest, snap, cache=False)
    assert swapped
    linked = [r for r in report.files if "/" not in r.path]
    assert {r.path: r.diagnosis for r in linked} == dict.fromkeys((r.path for r in linked), "symlink_escape")
    for r in linked:
        assert r.message.startswith(f"links outside the model directory (to {outside}{os.sep}"), r.message


@pytest.fixture
def looked_up(monkeypatch) -> list[str]:
    """The paths whose index records a verify looked up one by one (indexhits._answer),
    not answered by an earlier verify's plan."""
    from modelguard import indexhits

    paths: list[str] = []
    answer = indexhits._answer

    def counting(checker, entries, *rest):
        paths.extend(e.path for e in entries)
        return answer(checker, entries, *rest)

    monkeypatch.setattr(indexhits, "_answer", counting)
    return paths


def test_a_warm_verify_by_an_earlier_verify_s_plan_still_checks_every_file(tmp_path, model, looked_up):
    # A verify that answered the files from a decoded index keeps what it found (indexhits'
    # plan); a later verify reading the same index bytes answers a file by it with the file's
    # stat key and type alone. Every change still shows: the plan is no answer for a file that
    # changed, and one that no longer matches goes the general way.
    manifest, directory = model
    cache = warm_cache(tmp_path, manifest, directory)  # its second verify made the plan
    looked_up.clear()
    report = verify(manifest, directory, cache=cache)
    assert report.ok and all(r.cached for r in report.files)
    assert looked_up == []  # every file answered by the plan: no record looked up
    data = FILES["part-1.bin"]
    (directory / "part-1.bin").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])  # same size
    os.utime(directory / "part-0.bin", ns=(1, 1))  # same bytes, other mtime: read again
    (directory / "part-3.bin").unlink()
    (directory / "part-4.bin").unlink()
    (directory / "part-4.bin").mkdir()
    (directory / "sub").rename(directory / "real-sub")
    (directory / "sub").symlink_to("real-sub")  # its folder now a link: not answered from the plan
    report = verify(manifest, directory, cache=cache)
    assert looked_up == []
    assert {r.path: (r.diagnosis, r.cached) for r in report.files} == {
        "part-0.bin": ("ok", False), "part-1.bin": ("digest_mismatch", False), "part-2.bin": ("ok", True),
        "part-3.bin": ("missing", False), "part-4.bin": ("not_a_file", False), "tokenizer.json": ("ok", True),
        "sub/config.json": ("ok", False)}


def test_a_plan_answers_only_from_the_index_it_was_made_from(tmp_path, model, looked_up):
    # Another verify's index (other bytes: here one record fewer) is looked up record by record;
    # a cache whose records have expired answers nothing, whatever plan was made before.
    manifest, directory = model
    cache = warm_cache(tmp_path, manifest, directory)
    looked_up.clear()
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files) and looked_up == []
    index = next(cache.entries.glob("*.idx"))
    document = json.loads(index.read_bytes())
    del document["files"][str(directory.resolve() / "part-2.bin")]
    index.write_text(json.dumps(document))
    report = verify(manifest, directory, cache=cache)
    assert sorted(looked_up) == sorted(FILES)  # the new index's records, each looked up
    assert [r.path for r in report.files if not r.cached] == ["part-2.bin"] and report.ok
    looked_up.clear()
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)  # the index it wrote: a plan
    looked_up.clear()
    expired = StatCache(cache.root, racy_window_ns=0, index_settle_ns=0, max_age_s=1e-9)
    report = verify(manifest, directory, cache=expired)
    assert report.ok and not any(r.cached for r in report.files)
    assert sorted(looked_up) == sorted(FILES)


def test_a_plan_outlives_the_verifies_of_manifests_no_longer_held(tmp_path, model, looked_up):
    # what a verify works out once per manifest is dropped first for manifests gone (a process
    # verifying many models in turn keeps the plans of those it still holds)
    manifest, directory = model
    cache = warm_cache(tmp_path, manifest, directory)
    looked_up.clear()
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files) and looked_up == []
    for i in range(20):  # other manifests, each verified and let go
        other = {f"other-{i}.bin": FILES["part-0.bin"]}
        (tmp_path / f"other-{i}").mkdir()
        (tmp_path / f"other-{i}" / f"other-{i}.bin").write_bytes(other[f"other-{i}.bin"])
        assert verify(parse_manifest_text(manifest_text(other), "other.yaml"), tmp_path / f"other-{i}",
                      cache=cache).ok
    looked_up.clear()
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files) and looked_up == []


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_failed_read_never_passes_on_the_bytes_of_the_file_read_before_it(tmp_path, monkeypatch, kind):
    # Two files with the same bytes are read one after the other into one buffer; the second,
    # swapped for what cannot be read after the listing, must not verify on what the buffer
    # still holds from the first.
    from modelguard import engine

    twins = {"a.bin": b"same bytes " * 400, "b.bin": b"same bytes " * 400}
    directory = tmp_path / "twins"
    directory.mkdir()
    for name, data in twins.items():
        (directory / name).write_bytes(data)
    manifest = parse_manifest_text(manifest_text(twins), "twins.yaml")
    listed = engine._Checker.regular_names

    def listing_then_swap(checker):
        names = listed(checker)
        (directory / "b.bin").unlink()
        (directory / "b.bin").mkdir() if kind == "folder" else os.mkfifo(directory / "b.bin")
        return names

    monkeypatch.setattr(engine._Checker, "regular_names", listing_then_swap)
    report = verify(manifest, directory, cache=False, max_workers=1)
    assert report.result("a.bin").diagnosis == "ok"
    assert report.result("b.bin").diagnosis == "not_a_file", report.result("b.bin").message
    assert not report.ok


def test_a_plan_with_a_link_outlives_many_warm_verifies(tmp_path, model, looked_up):
    # the files a plan does not answer (here a link, followed every time) are looked up by one
    # sequence the plan holds: each warm verify adds nothing to what is kept per manifest, so
    # the plan is never dropped to make room, however many verifies follow
    manifest, directory = model
    (directory / "stash").mkdir()
    os.replace(directory / "part-2.bin", directory / "stash" / "part-2.bin")
    (directory / "part-2.bin").symlink_to(Path("stash") / "part-2.bin")
    cache = warm_cache(tmp_path, manifest, directory)
    assert all(r.cached for r in verify(manifest, directory, cache=cache).files)  # the plan is made
    for _ in range(60):
        looked_up.clear()
        report = verify(manifest, directory, cache=cache)
        assert report.ok and all(r.cached for r in report.files)
        assert looked_up == ["part-2.bin"]  # the link alone: every other file answered by the plan
