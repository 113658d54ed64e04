"""`modelguard scan`: corruption anywhere in a Hugging Face cache that the real client built."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers.cli import run_cli
from hubserver import HubServer, publish, tiny_model_files

from modelguard.hfcache import hf_cache_dir, repo_folder
from modelguard.hub import format_scan, scan_cache

WEIGHTS = "model.safetensors"


def client_download(hub: HubServer, model: str, revision: str = "main") -> Path:
    """Fill the cache with huggingface_hub's own snapshot_download (not modelguard)."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, revision=revision, endpoint=hub.endpoint, cache_dir=hf_cache_dir()))


def flip_byte(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.fixture
def cache(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    commit_a = hub.add_repo("org/alpha", tiny_model_files(seed=1))
    commit_b = hub.add_repo("org/beta", tiny_model_files(seed=2), tags=["v1"])
    snap_a = client_download(hub, "org/alpha")
    snap_b = client_download(hub, "org/beta")
    assert snap_a.name == commit_a and snap_b.name == commit_b
    return {"org/alpha": snap_a, "org/beta": snap_b}


def test_clean_cache_scans_clean(cache):
    proc = run_cli("scan", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    assert [r["repo"] for r in doc["repos"]] == ["org/alpha", "org/beta"]
    for repo in doc["repos"]:
        assert repo["blobs"]["checked"] == 4 and repo["blobs"]["unchecked"] == 0
        assert [rev["status"] for rev in repo["revisions"]] == ["ok"]
    beta = doc["repos"][1]["revisions"][0]
    assert sorted(beta["refs"]) == ["main"]


@pytest.mark.parametrize("rel", [WEIGHTS, "1_Pooling/config.json"])
def test_scan_finds_a_corrupted_blob_without_a_manifest(cache, rel):
    link = cache["org/beta"] / rel
    blob = Path(os.path.realpath(link))
    flip_byte(blob)
    proc = run_cli("scan")
    assert proc.returncode == 1
    assert "FAIL  org/beta" in proc.stdout and "ok    org/alpha" in proc.stdout
    assert f"FAIL {rel}: content does not match its name" in proc.stdout
    assert blob.name in proc.stdout
    assert "FAILED: corruption in 1 of 2 repo(s)" in proc.stdout

    report = scan_cache()
    beta = {r.repo_id: r for r in report.repos}["org/beta"]
    assert not beta.ok and [p.blob for p in beta.corrupt_blobs] == [blob.name]
    rev = beta.revisions[0]
    assert rev.status == "corrupt" and [p.path for p in rev.problems] == [rel]
    assert rev.problems[0].diagnosis == "digest_mismatch"
    # Which algorithm: sha256 for an LFS blob, git's blob sha1 for a small file.
    assert ("sha256 is" if rel == WEIGHTS else "git_sha1 is") in rev.problems[0].message


def test_scan_names_an_lfs_pointer_stub_and_a_dangling_link(cache):
    from hubserver import lfs_pointer

    blob = Path(os.path.realpath(cache["org/alpha"] / WEIGHTS))
    blob.write_bytes(lfs_pointer(blob.read_bytes()))
    os.unlink(os.path.realpath(cache["org/alpha"] / "tokenizer.json"))
    report = scan_cache()
    alpha = {r.repo_id: r for r in report.repos}["org/alpha"]
    problems = {p.path: p for p in alpha.revisions[0].problems}
    assert problems[WEIGHTS].diagnosis == "lfs_pointer"
    assert problems["tokenizer.json"].diagnosis == "missing" and "the blob is gone" in problems["tokenizer.json"].message
    text = format_scan(report)
    assert "Git LFS pointer stub" in text


def test_snapshot_with_a_manifest_is_verified_against_it(hub, tmp_path, monkeypatch):
    """A snapshot with a known manifest: missing files make it incomplete (not corrupt); a file whose
    blob name cannot tell (copied in as a regular file) is still caught by the manifest."""
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    published = publish(hub, tmp_path)
    monkeypatch.setenv("MODELGUARD_MANIFEST_PATH", str(published.manifest_dir))
    from huggingface_hub import hf_hub_download

    for rel in ("config.json", WEIGHTS):
        hf_hub_download(published.model, rel, revision=published.commit, endpoint=hub.endpoint,
                        cache_dir=hf_cache_dir())
    report = scan_cache()
    (repo,) = report.repos
    rev = repo.revisions[0]
    assert rev.manifest == str(published.manifest_path)
    assert rev.status == "incomplete" and sorted(rev.missing) == ["1_Pooling/config.json", "tokenizer.json"]
    assert report.ok  # not downloaded is not corrupt
    # Replace the link by a regular file with wrong bytes: no blob name to check, the manifest catches it.
    link = repo_folder(published.model) / "snapshots" / published.commit / "config.json"
    link.unlink()
    link.write_bytes(b'{"model_type": "tampered"}')
    report = scan_cache()
    rev = report.repos[0].revisions[0]
    assert rev.status == "corrupt" and [p.path for p in rev.problems] == ["config.json"]
    assert not report.ok
    proc = run_cli("scan")
    assert proc.returncode == 1 and f"fix: modelguard fetch {published.model} --revision {published.commit}" in proc.stdout


def test_scan_of_a_missing_cache_is_a_usage_error(tmp_path):
    proc = run_cli("scan", "--cache-dir", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "--cache-dir" in proc.stderr and "Traceback" not in proc.stderr


def test_scan_on_a_machine_without_a_cache_reports_nothing_to_scan(tmp_path):
    home = tmp_path / "fresh-home"  # nothing was ever downloaded here
    env = {"HOME": str(home), "HF_HUB_CACHE": "", "HUGGINGFACE_HUB_CACHE": "", "HF_HOME": "", "XDG_CACHE_HOME": ""}
    proc = run_cli("scan", env=env)
    default = home / ".cache" / "huggingface" / "hub"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"no Hugging Face cache at {default}: nothing to scan\n" and proc.stderr == ""
    proc = run_cli("scan", "--json", env=env)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["ok"] is True and doc["cache_exists"] is False
    assert doc["cache_dir"] == str(default) and doc["repos"] == [] and doc["summary"]["repos"] == 0
    assert not default.exists()  # scanning creates nothing
