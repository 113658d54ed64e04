"""`modelguard fetch` and `modelguard.hub.repair_files` against a real HTTP Hub on 127.0.0.1,
with the real huggingface_hub client doing the transfers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import run_cli
from hubserver import lfs_pointer, publish

from modelguard.errors import DownloadError, OfflineError
from modelguard.hfcache import repo_folder
from modelguard.hub import fetch, fetch_files, repair_files
from modelguard.manifest import load_manifest
from modelguard.verifying import verify

WEIGHTS = "model.safetensors"


def snapshot(repo) -> Path:
    return repo_folder(repo.model) / "snapshots" / repo.commit


def blobs(repo) -> Path:
    return repo_folder(repo.model) / "blobs"


def leftovers(repo) -> list[str]:
    """Temporary files a download left in blobs/ (there must be none)."""
    return sorted(p.name for p in blobs(repo).iterdir() if p.name.endswith(".incomplete")) if blobs(repo).is_dir() else []


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- fetch into an empty cache


def test_fetch_into_empty_cache_lays_out_the_cache_like_the_client(repo, hub):
    proc = run_cli("fetch", repo.model, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["fetched_revision"] == repo.commit
    assert {a["path"]: a["action"] for a in doc["actions"]} == {p: "downloaded" for p in repo.files}
    snap = snapshot(repo)
    for rel, data in repo.files.items():
        link = snap / rel
        assert link.is_symlink(), rel
        blob = Path(os.path.realpath(link))
        assert blob.parent == blobs(repo).resolve()
        assert blob.read_bytes() == data
        hub_file = hub.file(repo.model, repo.commit, rel)
        # Blob names are the Hub's ETags: sha256 for LFS files, git blob sha1 for small ones.
        assert blob.name == (hub_file.sha256 if hub_file.lfs else hub_file.git_sha1)
    assert leftovers(repo) == []
    # The real client finds every file in that cache without the network.
    from huggingface_hub import hf_hub_download

    for rel, data in repo.files.items():
        # cache_dir explicit: huggingface_hub reads HF_HUB_CACHE once, at its first import.
        path = hf_hub_download(repo.model, rel, revision=repo.commit, local_files_only=True,
                               cache_dir=os.environ["HF_HUB_CACHE"])
        assert Path(path).read_bytes() == data
    assert run_cli("verify", repo.model).returncode == 0


def test_second_fetch_downloads_nothing(repo, hub):
    first = fetch(repo.model)
    assert first.ok
    n_get = len(hub.requests("GET"))
    result = fetch_files(repo.model)
    assert result.ok
    assert {a.action for a in result.actions} == {"kept"}
    assert len(hub.requests("GET")) == n_get  # not one byte downloaded again


def test_fetch_some_components_only(repo, hub):
    result = fetch_files(repo.model, components=["tokenizer"])
    assert [a.path for a in result.actions] == ["tokenizer.json"]
    assert (snapshot(repo) / "tokenizer.json").read_bytes() == repo.files["tokenizer.json"]
    assert not (snapshot(repo) / WEIGHTS).exists()
    assert hub.requests("GET", "/lfs/") == []


def test_fetch_into_local_dir(repo, tmp_path):
    target = tmp_path / "model"
    proc = run_cli("fetch", repo.model, "--local-dir", str(target))
    assert proc.returncode == 0, proc.stderr
    assert "downloaded" in proc.stdout and "verified: 4 file(s)" in proc.stdout
    for rel, data in repo.files.items():
        assert not (target / rel).is_symlink() and (target / rel).read_bytes() == data
    # Nothing modelguard keeps for itself shows up as a stray model file.
    assert run_cli("verify", repo.model, str(target), "--strict").returncode == 0


# --------------------------------------------------------------------------- repair


def _damage(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) // 3]
    if how == "flipped":
        out = bytearray(data)
        out[len(out) // 2] ^= 0x01
        return bytes(out)
    if how == "lfs_pointer":
        return lfs_pointer(data)
    raise AssertionError(how)


@pytest.mark.parametrize("how, rel, diagnosis", [
    ("truncated", WEIGHTS, "truncated"),
    ("flipped", WEIGHTS, "digest_mismatch"),
    ("lfs_pointer", WEIGHTS, "lfs_pointer"),
    ("flipped", "1_Pooling/config.json", "digest_mismatch"),
])
def test_repair_in_cache_keeps_old_bytes_aside(repo, hub, how, rel, diagnosis):
    assert fetch(repo.model).ok
    blob = Path(os.path.realpath(snapshot(repo) / rel))
    bad = _damage(repo.files[rel], how)
    blob.write_bytes(bad)
    before = verify(load_manifest(repo.manifest_path), snapshot(repo))
    assert before.result(rel).diagnosis == diagnosis

    result = fetch_files(repo.model)
    assert result.ok and result.report.ok
    action = {a.path: a for a in result.actions}[rel]
    assert action.action == "repaired" and action.diagnosis == diagnosis
    assert (snapshot(repo) / rel).read_bytes() == repo.files[rel]
    kept = Path(action.kept_aside)
    assert kept.read_bytes() == bad  # the user's old bytes, untouched
    assert str(kept) in action.message and diagnosis in action.message
    assert ".modelguard-quarantine" in kept.parts
    assert {a.action for a in result.actions if a.path != rel} == {"kept"}
    assert leftovers(repo) == []


def test_repair_of_a_regular_file_in_a_local_dir(repo, tmp_path):
    target = tmp_path / "model"
    fetch(repo.model, local_dir=target)
    (target / WEIGHTS).write_bytes(_damage(repo.files[WEIGHTS], "flipped"))
    manifest = load_manifest(repo.manifest_path)
    report = repair_files(manifest, target)
    assert report.ok
    assert (target / WEIGHTS).read_bytes() == repo.files[WEIGHTS]
    quarantined = list((target / ".cache" / "modelguard" / "quarantine").rglob(WEIGHTS))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == _damage(repo.files[WEIGHTS], "flipped")
    assert run_cli("verify", repo.model, str(target), "--strict").returncode == 0


def test_repair_files_on_a_cache_snapshot(repo):
    """The guard's repair entry point: a snapshot directory is repaired in the cache layout."""
    assert fetch(repo.model).ok
    (snapshot(repo) / "tokenizer.json").unlink()  # the link is gone, the blob is still there
    report = repair_files(load_manifest(repo.manifest_path), snapshot(repo), components=["tokenizer"])
    assert report.ok and [r.path for r in report.files] == ["tokenizer.json"]
    assert (snapshot(repo) / "tokenizer.json").is_symlink()


# --------------------------------------------------------------------------- a misbehaving server


def test_wrong_bytes_are_retried_then_fail_loudly_with_nothing_left(repo, hub):
    hub.misbehave(WEIGHTS, "wrong", times=None)
    proc = run_cli("fetch", repo.model, "--json")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    action = {a["path"]: a for a in doc["actions"]}[WEIGHTS]
    assert action["action"] == "failed" and action["attempts"] == 3
    assert len(action["errors"]) == 3 and all("wrong bytes" in e for e in action["errors"])
    assert "no download of 3 attempt(s) delivered the right bytes" in action["message"]
    assert sha256(repo.files[WEIGHTS]) in action["message"]
    assert "modelguard: error: fetch of org/tiny" in proc.stderr and WEIGHTS in proc.stderr
    assert "fix:" in proc.stderr
    # Bounded: exactly three transfers of the file, then nothing.
    assert len(hub.transfers(hub.file(repo.model, repo.commit, WEIGHTS))) == 3
    # Nothing corrupt left behind: no file in the snapshot, no temp file, every blob is what its name says.
    assert not os.path.lexists(snapshot(repo) / WEIGHTS)
    assert leftovers(repo) == []
    for blob in blobs(repo).iterdir():
        data = blob.read_bytes()
        assert blob.name in (sha256(data), hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest())
    # The other files were fetched and verify.
    assert {a["path"]: a["action"] for a in doc["actions"]}["config.json"] == "downloaded"


def test_wrong_bytes_leave_an_existing_file_untouched(repo, hub):
    assert fetch(repo.model).ok
    blob = Path(os.path.realpath(snapshot(repo) / WEIGHTS))
    bad = _damage(repo.files[WEIGHTS], "flipped")
    blob.write_bytes(bad)
    hub.misbehave(WEIGHTS, "corrupt", times=None)
    with pytest.raises(DownloadError) as info:
        fetch_files(repo.model, attempts=2)
    assert "the existing file was left untouched" in str(info.value)
    assert "2 attempt(s)" in str(info.value)
    assert (snapshot(repo) / WEIGHTS).read_bytes() == bad
    assert info.value.result.report.result(WEIGHTS).diagnosis == "digest_mismatch"
    assert leftovers(repo) == []


def test_one_corrupt_transfer_then_success(repo, hub):
    hub.misbehave(WEIGHTS, "corrupt", times=1)
    result = fetch_files(repo.model)
    assert result.ok
    action = {a.path: a for a in result.actions}[WEIGHTS]
    assert action.action == "downloaded" and action.attempts == 2
    assert "attempt 1: wrong bytes" in action.errors[0]
    assert (snapshot(repo) / WEIGHTS).read_bytes() == repo.files[WEIGHTS]


def test_connection_dropped_mid_file_is_resumed(repo, hub):
    hub.misbehave(WEIGHTS, "drop", times=1)
    result = fetch_files(repo.model)
    assert result.ok
    transfers = hub.transfers(hub.file(repo.model, repo.commit, WEIGHTS))
    assert len(transfers) == 2
    # huggingface_hub's own retry got the file again within modelguard's first attempt. (It resumes
    # with a Range request from the last chunk it wrote; its chunks are 10 MB, so this small file restarts.)
    assert {a.path: a for a in result.actions}[WEIGHTS].attempts == 1
    assert transfers[1].range in (None, f"bytes=0-")
    assert (snapshot(repo) / WEIGHTS).read_bytes() == repo.files[WEIGHTS]
    assert leftovers(repo) == []


def test_short_body_is_retried(repo, hub):
    hub.misbehave(WEIGHTS, "truncate", times=1)
    result = fetch_files(repo.model)
    action = {a.path: a for a in result.actions}[WEIGHTS]
    assert result.ok and action.attempts == 2
    assert "transfer failed" in action.errors[0] and "Consistency check failed" in action.errors[0]


def test_stalled_transfer_times_out_and_resumes(repo, hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    hub.misbehave(WEIGHTS, "stall", times=1, stall_s=3)
    result = fetch_files(repo.model)
    assert result.ok
    assert {a.path: a for a in result.actions}[WEIGHTS].attempts == 1  # the client's own retry recovered
    assert len(hub.transfers(hub.file(repo.model, repo.commit, WEIGHTS))) >= 2
    assert (snapshot(repo) / WEIGHTS).read_bytes() == repo.files[WEIGHTS]


def test_server_errors_fail_after_bounded_attempts(repo, hub):
    hub.misbehave("config.json", "fail", times=None)
    with pytest.raises(DownloadError) as info:
        fetch_files(repo.model, attempts=2)
    message = str(info.value)
    assert "config.json" in message and "500" in message
    assert "nothing was written" in message
    assert len(hub.transfers(hub.file(repo.model, repo.commit, "config.json"))) == 2
    assert not os.path.lexists(snapshot(repo) / "config.json")


def test_manifest_that_disagrees_with_the_hub_downloads_nothing(hub, tmp_path, monkeypatch):
    from hubserver import tiny_model_files

    served = tiny_model_files(seed=1)
    other = dict(served, **{WEIGHTS: tiny_model_files(seed=2)[WEIGHTS] + b"\0" * 16})
    published = publish(hub, tmp_path, files=served, manifest_files=other)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    with pytest.raises(DownloadError) as info:
        fetch_files(load_manifest(published.manifest_path))
    assert "the manifest does not describe this revision (not downloaded)" in str(info.value)
    assert hub.requests("GET", "/lfs/") == []


def test_model_missing_on_the_hub(repo, hub, tmp_path):
    hub.state.repos.clear()
    proc = run_cli("fetch", repo.model)
    assert proc.returncode == 1
    assert "org/tiny is not on" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- concurrency, offline


def test_two_processes_fetching_at_once(repo, hub):
    hub.misbehave(WEIGHTS, "slow", times=None, stall_s=2)  # the transfer takes ~2 s: the runs overlap
    cmd = [sys.executable, "-m", "modelguard", "fetch", repo.model, "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    actions = sorted({a["path"]: a["action"] for a in json.loads(o[0])["actions"]}[WEIGHTS] for o in outs)
    assert actions == ["downloaded", "kept"]  # the second waited for the first, then found it verified
    assert len(hub.transfers(hub.file(repo.model, repo.commit, WEIGHTS))) == 1
    assert (snapshot(repo) / WEIGHTS).read_bytes() == repo.files[WEIGHTS]
    assert leftovers(repo) == []


def test_offline_mode_is_respected_with_a_clear_message(repo, hub):
    proc = run_cli("fetch", repo.model, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1
    assert "HF_HUB_OFFLINE is set, but 4 file(s) of org/tiny need downloading" in proc.stderr
    assert "unset HF_HUB_OFFLINE" in proc.stderr and "Traceback" not in proc.stderr
    assert hub.requests() == []  # not one request went out
    assert not repo_folder(repo.model).exists()  # and nothing was created
    assert fetch(repo.model).ok
    proc = run_cli("fetch", repo.model, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "4 file(s) already verified" in proc.stdout


def test_offline_error_from_the_api(repo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="need downloading: .*model.safetensors \\(missing\\)"):
        fetch(repo.model)


def test_fetch_real_minilm_with_the_shipped_unpinned_manifest(hub, minilm_dir, monkeypatch):
    """The shipped all-MiniLM-L6-v2 manifest pins no revision: main is resolved to its commit
    (recorded in refs/main like the client does) and the real files verify."""
    model = "sentence-transformers/all-MiniLM-L6-v2"
    commit = hub.add_directory(model, minilm_dir)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    proc = run_cli("fetch", model, "--json", env={"HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["fetched_revision"] == commit
    assert sorted(a["path"] for a in doc["actions"]) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (repo_folder(model) / "refs" / "main").read_text() == commit
    assert (repo_folder(model) / "snapshots" / commit / "model.safetensors").read_bytes() == \
        (minilm_dir / "model.safetensors").read_bytes()
    assert run_cli("verify", model).returncode == 0


def test_optional_components_are_fetched_only_when_named(hub, tmp_path, monkeypatch):
    from hubserver import tiny_model_files

    files = dict(tiny_model_files(), **{"README.md": b"# tiny\n"})
    published = publish(hub, tmp_path, files=files)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    manifest = load_manifest(published.manifest_path)
    assert not manifest.components["docs"].required
    result = fetch_files(manifest)
    assert "README.md" not in {a.path for a in result.actions}
    assert result.report.missing_optional_components == ("docs",)
    result = fetch_files(manifest, components=["docs"])
    assert [(a.path, a.action) for a in result.actions] == [("README.md", "downloaded")]
    assert (repo_folder(published.model) / "snapshots" / published.commit / "README.md").read_bytes() == b"# tiny\n"
