"""A manifest can never make modelguard read or write outside the model directory."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.hub_layout import snapshot_of_links
from hostile import link_to, make_fifo, make_small_model_dir
from modelguard.build import build_manifest
from modelguard.errors import UnsafePathError, UsageError
from modelguard.manifest import Component, FileEntry, Manifest, parse_manifest_text, save_manifest
from modelguard.engine import _Checker, default_remedy
from modelguard.verifying import verify


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(path=path, size=len(data), component="model",
                     digests={"sha256": hashlib.sha256(data).hexdigest()})


def _manifest(*entries: FileEntry) -> Manifest:
    return Manifest(model="org/hostile", revision=None,
                    components={"model": Component("model", True)}, files=tuple(entries))


def _bounded(fn, timeout=30):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "hung"
    return out["v"]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under root with (size, mtime_ns), links not followed."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


MANIFEST_HEAD = "modelguard: 1\nmodel: org/hostile\ncomponents: {model: {required: true}}\nfiles:\n"


@pytest.mark.parametrize("path,problem", [
    ("/etc/passwd", "absolute paths are not allowed"),
    ("../../etc/passwd", "'..' is not allowed"),
    ("a/../../b", "'..' is not allowed"),
    ("C:/Windows/win.ini", "absolute paths are not allowed"),
    ("a\\\\..\\\\b", "backslash"),
    ("./config.json", "empty or '.' path segments"),
])
def test_manifest_refuses_paths_that_leave_the_directory(tmp_path, path, problem):
    text = MANIFEST_HEAD + f"- {{path: '{path}', size: 1, component: model, sha256: '{'ab' * 32}'}}\n"
    with pytest.raises(UnsafePathError) as info:
        parse_manifest_text(text, source="hostile.yaml")
    assert problem in info.value.message
    assert "never reads outside the model directory" in info.value.remedy
    (tmp_path / "m.yaml").write_text(text)
    r = run_cli("verify", str(tmp_path / "m.yaml"), str(tmp_path))
    assert r.returncode == 2 and problem in r.stderr and "Traceback" not in r.stderr


def test_symlink_to_etc_passwd_is_reported_not_followed(tmp_path):
    passwd = Path("/etc/passwd").read_bytes()
    model = tmp_path / "model"
    model.mkdir()
    link_to(model / "config.json", "/etc/passwd")
    # The manifest even carries passwd's true size and digest: still refused.
    report = verify(_manifest(_entry("config.json", passwd)), model, cache=False)
    r = report.result("config.json")
    assert not report.ok and r.diagnosis == "symlink_escape"
    assert "links outside the model directory (to /etc/passwd); not followed" in r.message
    assert "sha256" not in r.actual  # nothing was hashed


def test_escaping_link_is_never_opened(tmp_path):
    """Proof of no open: the target is a FIFO outside the directory; opening it would block."""
    outside = make_fifo(tmp_path / "outside.fifo")
    model = tmp_path / "model"
    model.mkdir()
    link_to(model / "model.safetensors", outside)
    report = _bounded(lambda: verify(_manifest(_entry("model.safetensors", b"x")), model, cache=False))
    assert report.result("model.safetensors").diagnosis == "symlink_escape"


def test_escape_through_a_linked_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    link_to(model / "sub", "/etc")
    report = verify(_manifest(_entry("sub/passwd", b"x")), model, cache=False)
    assert report.result("sub/passwd").diagnosis == "symlink_escape"
    assert "(to /etc/passwd)" in report.result("sub/passwd").message


def test_relative_link_climbing_out_and_link_loop(tmp_path):
    (tmp_path / "secret.bin").write_bytes(b"s" * 10)
    model = tmp_path / "model"
    (model / "a").mkdir(parents=True)
    link_to(model / "a" / "w.bin", "../../secret.bin")
    link_to(model / "loop.bin", "loop.bin")
    report = _bounded(lambda: verify(_manifest(_entry("a/w.bin", b"s" * 10), _entry("loop.bin", b"x")),
                                     model, cache=False))
    assert report.result("a/w.bin").diagnosis == "symlink_escape"
    assert report.result("loop.bin").diagnosis in ("unreadable", "missing", "symlink_escape")
    assert not report.result("loop.bin").ok


def test_links_inside_the_directory_are_fine(tmp_path):
    model = tmp_path / "model"
    (model / "real").mkdir(parents=True)
    (model / "real" / "w.bin").write_bytes(b"w" * 100)
    link_to(model / "w.bin", "real/w.bin")
    report = verify(_manifest(_entry("w.bin", b"w" * 100), _entry("real/w.bin", b"w" * 100)), model, cache=False)
    assert report.ok, report.summary()


def test_hf_cache_links_into_own_blobs_verify(tmp_path):
    snap = snapshot_of_links(tmp_path / "hub", "org/good", {"model.safetensors": b"m" * 64, "config.json": b"{}"})[0]
    report = verify(_manifest(_entry("model.safetensors", b"m" * 64), _entry("config.json", b"{}")), snap,
                    cache=False)
    assert report.ok, report.summary()


def test_hf_cache_link_into_another_repos_blobs_escapes(tmp_path):
    hub = tmp_path / "hub"
    other, _ = snapshot_of_links(hub, "evil/other", {"model.safetensors": b"e" * 64})
    snap, _ = snapshot_of_links(hub, "org/good", {"config.json": b"{}"})
    blob = (other / "model.safetensors").resolve()
    os.symlink(os.path.relpath(blob, snap), snap / "model.safetensors")
    report = verify(_manifest(_entry("model.safetensors", b"e" * 64), _entry("config.json", b"{}")), snap,
                    cache=False)
    r = report.result("model.safetensors")
    assert r.diagnosis == "symlink_escape" and "models--evil--other/blobs" in r.message
    assert report.result("config.json").ok


HUB_FILES = {"model.safetensors": b"m" * 300, "config.json": b'{"a": 1}', "1_Pooling/config.json": b'{"p": 2}'}


def test_a_hub_snapshot_is_answered_from_the_digest_index_through_its_links(tmp_path, monkeypatch):
    # Each link is followed with a readlink and an lstat of its blob (the folders on the way
    # checked once): no path is resolved part by part for each file, cold or warm.
    from modelguard.statcache import StatCache

    snap, blobs = snapshot_of_links(tmp_path / "hub", "org/linked", HUB_FILES, "b" * 40)
    manifest = _manifest(*(_entry(name, data) for name, data in HUB_FILES.items()))
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=0)
    resolved = []
    real_realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, *a, **k: resolved.append(os.fspath(p)) or real_realpath(p, *a, **k))
    cold = verify(manifest, snap, cache=cache)
    assert cold.ok, cold.summary()
    warm = verify(manifest, snap, cache=cache)
    assert warm.ok and all(r.cached for r in warm.files), [r.message for r in warm.files]
    assert not [p for p in resolved if os.path.basename(p) in ("model.safetensors", "config.json")], resolved
    # a link pointed at another blob of the same size: that blob's record does not answer for the file
    other = blobs / "other"
    other.write_bytes(b'{"a": 2}')
    (snap / "config.json").unlink()
    os.symlink("../../blobs/other", snap / "config.json")
    report = verify(manifest, snap, cache=cache)
    bad = report.result("config.json")
    assert bad.diagnosis == "digest_mismatch" and not bad.cached, bad.message
    assert [r.path for r in report.failures] == ["config.json"]


def test_a_hub_snapshot_whose_blobs_folder_is_a_link_verifies_the_general_way(tmp_path):
    from modelguard.statcache import StatCache

    snap, blobs = snapshot_of_links(tmp_path / "hub", "org/linked", HUB_FILES, "b" * 40)
    elsewhere = tmp_path / "disk" / "blobs"
    elsewhere.parent.mkdir()
    os.replace(blobs, elsewhere)
    os.symlink(elsewhere, blobs)  # the cache's blobs kept on another disk
    manifest = _manifest(*(_entry(name, data) for name, data in HUB_FILES.items()))
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=0)
    assert verify(manifest, snap, cache=False).ok
    assert verify(manifest, snap, cache=cache).ok
    warm = verify(manifest, snap, cache=cache)
    assert warm.ok and all(r.cached for r in warm.files), [r.message for r in warm.files]


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_a_hub_snapshot_link_out_of_the_repository_escapes_cold_and_warm(tmp_path, absolute):
    from modelguard.statcache import StatCache

    snap, blobs = snapshot_of_links(tmp_path / "hub", "org/linked", HUB_FILES, "b" * 40)
    outside = tmp_path / "outside.json"
    outside.write_bytes(b'{"a": 1}')  # the right bytes, in the wrong place
    (snap / "config.json").unlink()
    os.symlink(outside if absolute else os.path.relpath(outside, snap), snap / "config.json")
    manifest = _manifest(*(_entry(name, data) for name, data in HUB_FILES.items()))
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=0)
    for chosen in (False, cache, cache):
        r = verify(manifest, snap, cache=chosen).result("config.json")
        assert r.diagnosis == "symlink_escape" and str(outside) in r.message, r.message


@pytest.mark.parametrize("target,diagnosis,said", [
    ("config.json", "unreadable", "path cannot be resolved: Symlink loop"),
    ("../../blobs/{blob}/x", "missing", "dangling symlink (points to ../../blobs/{blob}/x)"),
], ids=["loop", "through-a-file"])
def test_a_listed_link_that_cannot_be_followed_hides_no_unlisted_file_beside_it(tmp_path, target, diagnosis, said):
    # The search for unlisted files never follows a listed link: one whose target cannot be
    # stat'ed (a loop, a file used as a folder) does not make it skip the rest of the folder.
    snap, blobs = snapshot_of_links(tmp_path / "hub", "org/linked", HUB_FILES, "b" * 40)
    blob = hashlib.sha256(HUB_FILES["config.json"]).hexdigest()
    (snap / "config.json").unlink()
    os.symlink(target.format(blob=blob), snap / "config.json")
    (snap / "extra.txt").write_bytes(b"not in the manifest")
    manifest = _manifest(*(_entry(name, data) for name, data in HUB_FILES.items()))
    report = verify(manifest, snap, cache=False, strict_extra=True)
    assert report.extra_files == ("extra.txt",), report.extra_files
    assert [r.path for r in report.failures] == ["config.json"]
    bad = report.result("config.json")
    assert bad.diagnosis == diagnosis and said.format(blob=blob) in bad.message, bad.message


def _named(how: str, snap: Path, tmp_path: Path, monkeypatch) -> Path:
    """``snap`` named by a path relative to the working folder, or through a link to it."""
    if how == "relative path":
        monkeypatch.chdir(snap.parent)
        return Path(snap.name)
    given = tmp_path / "model"
    os.symlink(snap, given)
    return given


@pytest.mark.parametrize("how", ["relative path", "through a link"])
def test_a_hub_snapshot_named_by_a_relative_path_or_a_link_still_has_its_blobs(tmp_path, monkeypatch, how):
    snap, _ = snapshot_of_links(tmp_path / "hub", "org/linked", HUB_FILES, "b" * 40)
    manifest = _manifest(*(_entry(name, data) for name, data in HUB_FILES.items()))
    given = _named(how, snap, tmp_path, monkeypatch)
    report = verify(manifest, given, cache=False)
    assert report.ok, report.summary()



@pytest.mark.parametrize("how", ["relative path", "through a link"])
def test_a_hub_snapshot_named_by_a_relative_path_or_a_link_is_repaired_in_the_cache(tmp_path, monkeypatch, how):
    # The remedy fetches into the cache as for the snapshot named by its own path, not into the
    # snapshot folder as if it were a local_dir download.
    snap, blobs = snapshot_of_links(tmp_path / "hub", "org/linked", HUB_FILES, "b" * 40)
    manifest = _manifest(*(_entry(name, data) for name, data in HUB_FILES.items()))
    (blobs / hashlib.sha256(HUB_FILES["config.json"]).hexdigest()).write_bytes(b'{"a": 2}')
    expected = verify(manifest, snap, cache=False).result("config.json")
    assert expected.diagnosis == "digest_mismatch" and "--local-dir" not in expected.remedy, expected.remedy
    given = _named(how, snap, tmp_path, monkeypatch)
    got = verify(manifest, given, cache=False).result("config.json")
    assert (got.diagnosis, got.message, got.remedy) == (expected.diagnosis, expected.message, expected.remedy)

def test_fifo_in_the_directory_does_not_hang(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    make_fifo(model / "pytorch_model.bin")
    report = _bounded(lambda: verify(_manifest(_entry("pytorch_model.bin", b"x" * 10)), model, cache=False))
    r = report.result("pytorch_model.bin")
    assert r.diagnosis == "not_a_file" and "FIFO" in r.message


def test_link_to_dev_zero_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    link_to(model / "model.safetensors", "/dev/zero")
    report = _bounded(lambda: verify(_manifest(_entry("model.safetensors", b"\0" * 10)), model, cache=False))
    assert report.result("model.safetensors").diagnosis == "symlink_escape"


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_device_node_in_the_directory_is_not_read(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    os.mknod(model / "model.safetensors", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    report = _bounded(lambda: verify(_manifest(_entry("model.safetensors", b"\0" * 10)), model, cache=False))
    r = report.result("model.safetensors")
    assert r.diagnosis == "not_a_file" and "device file" in r.message


def test_zero_byte_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "pytorch_model.bin").write_bytes(b"")
    r = verify(_manifest(_entry("pytorch_model.bin", b"x" * 100)), model, cache=False).result("pytorch_model.bin")
    assert r.diagnosis == "empty" and "is empty (0 bytes), expected 100 bytes" in r.message


def test_link_swapped_after_the_check_is_caught_at_open(tmp_path):
    """A link retargeted between the containment check and open() is not read."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "real.bin").write_bytes(b"r" * 32)
    (tmp_path / "outside.bin").write_bytes(b"r" * 32)
    link_to(model / "w.bin", "real.bin")
    manifest = _manifest(_entry("w.bin", b"r" * 32))
    checker = _Checker(manifest, model, all_digests=False, cache=None,
                       remedy=default_remedy(manifest, model), progress=None)
    located = checker.locate(manifest.files[0])
    assert isinstance(located, tuple)  # inside: passed on for reading
    os.unlink(model / "w.bin")
    os.symlink(tmp_path / "outside.bin", model / "w.bin")
    r = checker.read_and_compare(manifest.files[0], *located)
    assert r.diagnosis == "symlink_escape" and "swapped while verifying" in r.message
    assert "sha256" not in r.actual


def test_extra_file_walk_does_not_follow_linked_folders(tmp_path):
    model = make_small_model_dir(tmp_path / "model")
    m = build_manifest(model, "org/small")
    link_to(model / "root", "/")
    report = _bounded(lambda: verify(m, model, cache=False))
    assert report.ok and report.extra_files == ()


def test_build_refuses_links_out_and_never_reads_them(tmp_path):
    model = make_small_model_dir(tmp_path / "model")
    link_to(model / "secrets.json", "/etc/passwd")
    with pytest.raises(UsageError) as info:
        build_manifest(model, "org/small")
    assert "links outside the model directory (to /etc/passwd)" in info.value.message
    r = run_cli("build", str(model), "--model", "org/small")
    assert r.returncode == 2 and "links outside the model directory" in r.stderr
    assert "Traceback" not in r.stderr
    # a FIFO and a device link are skipped, not opened (build would otherwise hang)
    os.unlink(model / "secrets.json")
    make_fifo(model / "pipe.bin")
    m = _bounded(lambda: build_manifest(model, "org/small"))
    assert "pipe.bin" not in {e.path for e in m.files}


def test_verify_writes_nothing_outside_its_cache(tmp_path, isolated_env):
    model = make_small_model_dir(tmp_path / "model")
    manifest = build_manifest(model, "org/small")
    save_manifest(manifest, tmp_path / "m.yaml")
    link_to(model / "escape.bin", "/etc/passwd")
    before_model, before_tmp = _tree(model), _tree(tmp_path)
    r = run_cli("verify", str(tmp_path / "m.yaml"), str(model), "--scan", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["extra_files"] == ["escape.bin"]
    assert _tree(model) == before_model
    assert _tree(tmp_path) == before_tmp
    written = [p for p in _tree(isolated_env) if p.endswith(".json")]
    assert all(p.startswith("mgcache") for p in written), written


# --------------------------------------------------------------------------- the hostile suite


def test_hostile_model_directory_end_to_end(tmp_path):
    """One folder with a malicious pickle, an LFS stub, a link to /etc/passwd, a FIFO, a
    zero-byte file and a grown file: every one diagnosed, nothing hangs, nothing runs."""
    from hostile import make_hostile_model_dir

    marker = tmp_path / "PAYLOAD-RAN"
    model = tmp_path / "hostile"
    expected = make_hostile_model_dir(model, marker)
    r = run_cli("verify", str(model / "modelguard.yaml"), str(model), "--scan", "--json", timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    doc = json.loads(r.stdout)
    assert {f["path"]: f["diagnosis"] for f in doc["files"]} == expected
    scan = {f["path"]: f["diagnosis"] for f in doc["scan"]["findings"]}
    assert scan["pytorch_model.bin"] == "dangerous_pickle" and scan["model.safetensors"] == "lfs_pointer"
    human = run_cli("verify", str(model / "modelguard.yaml"), str(model), "--scan", timeout=120)
    assert "is a Git LFS pointer stub" in human.stdout and "links outside the model directory" in human.stdout
    assert "FIFO (named pipe)" in human.stdout and "is empty (0 bytes)" in human.stdout
    assert "UNSAFE  pytorch_model.bin" in human.stdout
    assert not marker.exists()


def test_hostile_manifest_files_through_the_cli(tmp_path, capsys):
    from hostile import write_hostile_manifests
    from modelguard.cli import main

    for path, expected in write_hostile_manifests(tmp_path / "manifests").items():
        code = _bounded(lambda: main(["verify", str(path), str(tmp_path)]))
        err = capsys.readouterr().err
        assert code == 2, (path.name, err)
        assert expected in err and "Traceback" not in err, (path.name, err)
    assert not os.path.exists("/tmp/mg-pwned")


def test_fetch_never_writes_through_a_linked_folder(tmp_path, monkeypatch):
    """A folder of the local copy that links elsewhere: fetch writes nothing there."""
    from hubserver import HubServer, publish

    with HubServer() as hub:
        repo = publish(hub, tmp_path)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("MODELGUARD_MANIFEST_PATH", str(repo.manifest_dir))
        outside = tmp_path / "outside"
        outside.mkdir()
        local = tmp_path / "local"
        local.mkdir()
        link_to(local / "1_Pooling", outside)  # the manifest lists 1_Pooling/config.json
        r = run_cli("fetch", repo.model, "--local-dir", str(local))
        assert r.returncode == 1, r.stdout + r.stderr
        assert "is reached through a link out of" in r.stderr and "nothing was written" in r.stderr
        assert "Traceback" not in r.stderr
        assert list(outside.iterdir()) == []
