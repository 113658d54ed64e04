"""The files a manifest does not list (a report's extra_files): found by listing the folders,
or answered from the listing record of the folder's digest index while every folder keeps
its stat key; whatever changed in a folder since, the report says what a fresh listing says."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from modelguard import unlisted, verify
from modelguard.manifest import parse_manifest_text
from modelguard.statcache import StatCache

FILES = {"model.bin": os.urandom(4000), "config.json": b'{"a": 1}\n', "sub/vocab.txt": b"a\nb\n",
         "sub/deeper/merges.txt": b"a b\n"}


def manifest_of(files: dict[str, bytes]):
    lines = ["modelguard: 1", "model: local/tiny", "components:", "  weights: {required: true}", "files:"]
    for name, data in files.items():
        lines += [f"- path: {name}", f"  size: {len(data)}", "  component: weights",
                  f"  sha256: {hashlib.sha256(data).hexdigest()}"]
    return parse_manifest_text("\n".join(lines) + "\n", "tiny.yaml")


@pytest.fixture
def model(tmp_path):
    directory = tmp_path / "model"
    for name, data in FILES.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    (directory / "notes.txt").write_text("not in the manifest\n")
    (directory / "sub" / "extra.py").write_text("print('hi')\n")
    return manifest_of(FILES), directory


@pytest.fixture
def walks(monkeypatch):
    """How many times a verify listed the folders."""
    count: list[int] = []
    real = unlisted.walk_files

    def counting(*args, **kwargs):
        count.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(unlisted, "walk_files", counting)
    return count


REAL_TIMES_KEPT = unlisted._times_kept


@pytest.fixture(autouse=True)
def folder_times_kept(monkeypatch):
    """The tests' folders taken as on a file system that changes a folder's times whenever its
    entries change (whatever file system the machine's temporary folder is on; the real check
    of the file system is tested on its own below)."""
    monkeypatch.setattr(unlisted, "_times_kept", lambda base, folders: all(st is not None for _, st in folders))


def cache_at(tmp_path, **kw) -> StatCache:
    return StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=0, **kw)


def listing_of(cache: StatCache):
    """The index's one listing record (None when it has none)."""
    (index,) = cache.entries.glob("*.idx")
    listings = json.loads(index.read_text()).get("listings")
    if listings is None:
        return None
    (record,) = listings.values()
    return record


def test_a_warm_verify_answers_the_unlisted_files_without_listing_a_folder(tmp_path, model, walks):
    manifest, directory = model
    cache = cache_at(tmp_path)
    cold = verify(manifest, directory, cache=cache)
    assert cold.extra_files == ("notes.txt", "sub/extra.py") and len(walks) == 1
    assert [folder[0] for folder in listing_of(cache)[3]] == ["", "sub/", "sub/deeper/"]
    for _ in range(2):
        warm = verify(manifest, directory, cache=cache, strict_extra=True)
        assert warm.extra_files == ("notes.txt", "sub/extra.py") and len(walks) == 1
        assert not warm.ok and warm.summary() == "FAILED: local/tiny: 2 file(s) not in the manifest"


def change_top(directory: Path) -> None:
    (directory / "new.bin").write_bytes(b"x")


def change_deep(directory: Path) -> None:
    (directory / "sub" / "deeper" / "payload.pkl").write_bytes(b"x")


def remove_one(directory: Path) -> None:
    (directory / "notes.txt").unlink()


def rename_one(directory: Path) -> None:
    (directory / "sub" / "extra.py").rename(directory / "sub" / "other.py")


def new_folder(directory: Path) -> None:
    (directory / "added" / "inner").mkdir(parents=True)
    (directory / "added" / "inner" / "file.bin").write_bytes(b"x")


def folder_to_link(directory: Path) -> None:
    (directory / "sub" / "deeper").rename(directory.parent / "elsewhere")
    (directory / "sub" / "deeper").symlink_to(directory.parent / "elsewhere")


def ignored_name(directory: Path) -> None:
    (directory / "model.bin.lock").write_bytes(b"")


def mounted_copy(directory: Path) -> None:
    # the same names in a folder put in the old one's place: its key is another
    sub = directory / "sub"
    sub.rename(directory.parent / "old-sub")
    (directory.parent / "old-sub").rename(directory.parent / "keep")
    os.mkdir(sub)
    for path in (directory.parent / "keep").rglob("*"):
        target = sub / path.relative_to(directory.parent / "keep")
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    (sub / "deeper" / "late.txt").write_bytes(b"x")


@pytest.mark.parametrize("change", [change_top, change_deep, remove_one, rename_one, new_folder, folder_to_link,
                                    ignored_name, mounted_copy])
def test_every_change_in_a_folder_shows_in_the_next_verify(tmp_path, model, walks, change):
    manifest, directory = model
    cache = cache_at(tmp_path)
    assert verify(manifest, directory, cache=cache).extra_files == ("notes.txt", "sub/extra.py")
    change(directory)
    fresh = verify(manifest, directory, cache=False)
    report = verify(manifest, directory, cache=cache)
    assert report.extra_files == fresh.extra_files
    assert len(walks) == 3  # the record's folders no longer all have their keys: listed again
    assert verify(manifest, directory, cache=cache).extra_files == fresh.extra_files and len(walks) == 3


def test_a_folder_modified_within_the_racy_window_is_listed_every_time(tmp_path, model, walks):
    # the files settled (their records stored), one folder changed just now: no listing record
    manifest, directory = model
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=10**9, index_settle_ns=0)
    time.sleep(1.1)
    (directory / "sub" / "deeper" / "late.txt").write_bytes(b"x")
    for _ in range(3):
        report = verify(manifest, directory, cache=cache)
        assert report.extra_files == ("notes.txt", "sub/deeper/late.txt", "sub/extra.py")
    assert all(r.cached for r in report.files)  # the files' records were stored
    assert len(walks) == 3 and listing_of(cache) is None
    time.sleep(1.1)  # settled now: recorded by the next verify, believed by the one after
    for _ in range(2):
        assert verify(manifest, directory, cache=cache).extra_files == ("notes.txt", "sub/deeper/late.txt",
                                                                         "sub/extra.py")
    assert len(walks) == 4 and listing_of(cache) is not None


def test_another_manifest_a_rehash_or_an_expired_record_lists_the_folders_again(tmp_path, model, walks):
    manifest, directory = model
    cache = cache_at(tmp_path)
    verify(manifest, directory, cache=cache)
    assert verify(manifest, directory, cache=cache, rehash=True).extra_files == ("notes.txt", "sub/extra.py")
    assert len(walks) == 2
    fewer = manifest_of({k: v for k, v in FILES.items() if k != "config.json"})
    assert verify(fewer, directory, cache=cache).extra_files == ("config.json", "notes.txt", "sub/extra.py")
    assert len(walks) == 3
    for _ in range(2):  # the two manifests' records side by side
        assert verify(manifest, directory, cache=cache).extra_files == ("notes.txt", "sub/extra.py")
        assert verify(fewer, directory, cache=cache).extra_files == ("config.json", "notes.txt", "sub/extra.py")
    assert len(walks) == 3
    expired = StatCache(cache.root, racy_window_ns=0, index_settle_ns=0, max_age_s=1e-9)
    assert verify(manifest, directory, cache=expired).extra_files == ("notes.txt", "sub/extra.py")
    assert len(walks) == 4


def test_an_index_keeps_the_listing_records_of_the_last_four_manifests(tmp_path, model, walks):
    manifest, directory = model
    cache = cache_at(tmp_path)
    names = sorted(FILES)
    manifests = [manifest] + [manifest_of({k: v for k, v in FILES.items() if k != name}) for name in names]
    left_out = [()] + [(name,) for name in names]
    for each in manifests:  # five manifests: the first one's record is the oldest, dropped
        verify(each, directory, cache=cache)
    assert len(walks) == 5
    (index,) = cache.entries.glob("*.idx")
    assert len(json.loads(index.read_text())["listings"]) == 4
    for each, extra in zip(manifests[1:], left_out[1:]):
        assert verify(each, directory, cache=cache).extra_files == tuple(sorted(["notes.txt", "sub/extra.py", *extra]))
    assert len(walks) == 5
    assert verify(manifest, directory, cache=cache).extra_files == ("notes.txt", "sub/extra.py")
    assert len(walks) == 6


def test_a_folder_on_a_file_system_that_may_keep_its_times_gets_no_listing_record(tmp_path, model, walks,
                                                                                   monkeypatch):
    # a FUSE mount of an object store may keep a folder's times when a file is added to it
    from modelguard import fs

    manifest, directory = model
    monkeypatch.setattr(unlisted, "_times_kept", REAL_TIMES_KEPT)
    monkeypatch.setattr(unlisted, "_KEPT_BY_DEVICE", {})
    asked: list[str] = []
    monkeypatch.setattr(unlisted, "file_system_type", lambda path: asked.append(path) or 0x65735546)  # FUSE
    cache = cache_at(tmp_path)
    for _ in range(2):
        assert verify(manifest, directory, cache=cache).extra_files == ("notes.txt", "sub/extra.py")
    assert len(walks) == 2 and listing_of(cache) is None
    assert asked == [os.fspath(directory)]  # once per device
    (directory / "sub" / "added.bin").write_bytes(b"x")  # what such a mount would hide from the folder's times
    assert verify(manifest, directory, cache=cache).extra_files == ("notes.txt", "sub/added.bin", "sub/extra.py")
    assert fs.FOLDER_TIMES_KEPT.isdisjoint({0x65735546, 0x6969, 0xFF534D42})  # FUSE, NFS, CIFS


def test_the_file_system_type_is_the_one_statfs_reports(tmp_path):
    import shutil
    import subprocess
    import sys

    from modelguard import fs

    if not sys.platform.startswith("linux"):
        assert fs.file_system_type(tmp_path) is None
        return
    told = subprocess.run([shutil.which("stat") or "stat", "-f", "-c", "%t", os.fspath(tmp_path)],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert fs.file_system_type(tmp_path) == int(told, 16)
    assert fs.file_system_type(tmp_path / "missing") is None
    assert fs.file_system_type("/proc") == 0x9FA0  # procfs: not a file system whose folder times are kept
    assert 0x9FA0 not in fs.FOLDER_TIMES_KEPT


@pytest.mark.parametrize("record", ["garbage", None, ["k", 1, ["x"], []], ["k", "when", [], [["", 1, 2, 3, 4]]],
                                    "same key, a file name that is no string", "same key, root not first",
                                    "same key, folders a mapping", "same key, an empty folder key",
                                    "same key, files a string", "same key, a folder's name a list",
                                    "same key, links a mapping", "listings a list"])
def test_a_malformed_listing_record_is_listed_again_not_believed(tmp_path, model, walks, record):
    manifest, directory = model
    cache = cache_at(tmp_path)
    verify(manifest, directory, cache=cache)
    (index,) = cache.entries.glob("*.idx")
    document = json.loads(index.read_text())
    (good,) = document["listings"].values()
    if record == "same key, a file name that is no string":
        record = [good[0], good[1], [1, 2], good[3]]
    elif record == "same key, root not first":
        record = [good[0], good[1], ["forged.txt"], good[3][1:] + good[3][:1]]
    elif record == "same key, folders a mapping":
        record = [good[0], good[1], [], {"0": good[3][0]}]
    elif record == "same key, an empty folder key":
        record = [good[0], good[1], [], [[]]]
    elif record == "same key, files a string":
        record = [good[0], good[1], "notes.txt", *good[3:]]
    elif record == "same key, a folder's name a list":
        record = [good[0], good[1], [], [good[3][0], [["sub"], *good[3][1][1:]]]]
    elif record == "same key, links a mapping":
        record = [*good[:4], {"0": ["x", True]}]
    document["listings"] = {good[0]: record} if record != "listings a list" else [good]
    index.write_text(json.dumps(document))
    report = verify(manifest, directory, cache=cache)
    assert report.extra_files == ("notes.txt", "sub/extra.py") and report.ok
    assert len(walks) == 2


def link_target_to_file(directory: Path) -> None:
    # the unlisted link's folder target becomes a file: no folder of the model changed
    (directory.parent / "target").rmdir()
    (directory.parent / "target").write_bytes(b"a file a loader would read")


def link_target_to_folder(directory: Path) -> None:
    (directory.parent / "target").unlink()
    (directory.parent / "target").mkdir()


def link_target_removed(directory: Path) -> None:
    (directory.parent / "target").rmdir()


LINKED = ("notes.txt", "pytorch_model.bin", "sub/deeper/weights", "sub/extra.py")
UNLINKED = ("notes.txt", "sub/extra.py")


@pytest.mark.parametrize("first, change, after", [("folder", link_target_to_file, LINKED),
                                                  ("file", link_target_to_folder, UNLINKED),
                                                  ("folder", link_target_removed, LINKED)])
def test_an_unlisted_link_whose_target_changes_type_shows_in_the_next_verify(tmp_path, model, walks, first,
                                                                              change, after):
    # a link to a folder is neither entered nor reported, a link to anything else is reported:
    # the answer depends on the target, which no stat of the model's folders shows
    manifest, directory = model
    target = directory.parent / "target"
    target.mkdir() if first == "folder" else target.write_bytes(b"x")
    for link in (directory / "pytorch_model.bin", directory / "sub" / "deeper" / "weights"):
        link.symlink_to(target)
    cache = cache_at(tmp_path)
    for _ in range(2):
        before = verify(manifest, directory, cache=cache, strict_extra=True).extra_files
    assert before == verify(manifest, directory, cache=False).extra_files
    change(directory)
    fresh = verify(manifest, directory, cache=False, strict_extra=True)
    assert fresh.extra_files == after != before
    assert fresh.summary() == f"FAILED: local/tiny: {len(after)} file(s) not in the manifest"
    for _ in range(2):
        report = verify(manifest, directory, cache=cache, strict_extra=True)
        assert report.extra_files == fresh.extra_files and report.ok is fresh.ok
        assert report.summary() == fresh.summary()
    assert len(walks) == 4  # two without the cache; listed again once the target changed, then answered


def test_a_listing_record_with_an_unlisted_link_is_still_answered_while_its_target_keeps_its_type(tmp_path, model,
                                                                                                  walks):
    manifest, directory = model
    (directory.parent / "target").mkdir()
    (directory / "linked").symlink_to(directory.parent / "target")
    (directory / "readme.md").symlink_to(directory / "notes.txt")
    cache = cache_at(tmp_path)
    for _ in range(3):
        assert verify(manifest, directory, cache=cache).extra_files == ("notes.txt", "readme.md", "sub/extra.py")
    assert len(walks) == 1
