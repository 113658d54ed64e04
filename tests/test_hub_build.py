"""`modelguard build --from-hub`: a manifest from Hub metadata, without downloading weights,
that verifies the files fetched later from the same Hub."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from helpers.cli import run_cli
from hubserver import git_blob_sha1, tiny_model_files

from modelguard.hfcache import hf_cache_dir
from modelguard.manifest import load_manifest

MODEL = "org/tiny"
WEIGHTS = "model.safetensors"


@pytest.fixture
def two_commits(hub):
    """v1 (tag) is an older commit than main."""
    old = tiny_model_files(seed=1)
    new = tiny_model_files(seed=2)
    c1 = hub.add_repo(MODEL, old, tags=["v1"])
    c2 = hub.add_repo(MODEL, new)
    return {"v1": (c1, old), "main": (c2, new)}


@pytest.mark.parametrize("ref", ["main", "v1"])
def test_branch_or_tag_is_resolved_and_the_commit_pinned(hub, two_commits, tmp_path, ref):
    out = tmp_path / "m.yaml"
    proc = run_cli("build", "--from-hub", MODEL, "--revision", ref, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    commit, files = two_commits[ref]
    assert f"wrote {out}: {MODEL} @ {commit}, 4 file(s)" in proc.stderr
    manifest = load_manifest(out)
    assert manifest.revision == commit and manifest.model == MODEL
    entries = {e.path: e for e in manifest.files}
    assert sorted(entries) == sorted(files)
    weights = entries[WEIGHTS]
    assert weights.size == len(files[WEIGHTS])
    assert dict(weights.digests) == {"sha256": hashlib.sha256(files[WEIGHTS]).hexdigest()}
    config = entries["config.json"]
    assert dict(config.digests) == {"git_sha1": git_blob_sha1(files["config.json"])}
    assert config.size == len(files["config.json"])
    assert entries["tokenizer.json"].component == "tokenizer" and weights.component == "model"
    # Metadata only: not one file was downloaded.
    assert hub.requests("GET", "/lfs/") == [] and hub.requests("GET", "/resolve/") == []
    assert hub.requests("HEAD") == []


def test_manifest_from_hub_verifies_the_files_fetched_later(hub, two_commits, tmp_path):
    out = tmp_path / "m.yaml"
    assert run_cli("build", "--from-hub", MODEL, "-o", str(out)).returncode == 0
    proc = run_cli("fetch", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] and doc["fetched_revision"] == two_commits["main"][0]
    assert {a["action"] for a in doc["actions"]} == {"downloaded"}
    proc = run_cli("verify", str(out), "--strict", "--all-digests")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified: 4 file(s) of org/tiny match the manifest" in proc.stdout
    # And the check has teeth: a small file changed in the cache fails its git blob sha1.
    snap = hf_cache_dir() / "models--org--tiny" / "snapshots" / two_commits["main"][0]
    blob = Path(os.path.realpath(snap / "config.json"))
    blob.write_bytes(blob.read_bytes().replace(b"192", b"193"))
    proc = run_cli("verify", str(out))
    assert proc.returncode == 1 and "git_sha1: expected" in proc.stdout


def test_hash_small_adds_sha256_after_checking_the_git_sha1(hub, two_commits, tmp_path):
    proc = run_cli("build", "--from-hub", MODEL, "--revision", "v1", "--hash-small")
    assert proc.returncode == 0, proc.stderr
    from modelguard.manifest import parse_manifest_text

    manifest = parse_manifest_text(proc.stdout)
    _, files = two_commits["v1"]
    config = manifest.file("config.json")
    assert config.digests["sha256"] == hashlib.sha256(files["config.json"]).hexdigest()
    assert config.digests["git_sha1"] == git_blob_sha1(files["config.json"])
    assert "md5" in config.digests
    # Small files were downloaded, the weights were not.
    assert hub.requests("GET", "/lfs/") == []
    assert len(hub.requests("GET", "/resolve/")) == 3


def test_scan_fix_line_repairs_a_corrupt_cache(hub, two_commits, tmp_path):
    """The command `scan` prints for a repo without a manifest does repair it."""
    from huggingface_hub import snapshot_download

    snap = Path(snapshot_download(MODEL, endpoint=hub.endpoint, cache_dir=hf_cache_dir()))
    blob = Path(os.path.realpath(snap / WEIGHTS))
    bad = bytearray(blob.read_bytes())
    bad[7] ^= 0xFF
    blob.write_bytes(bytes(bad))
    proc = run_cli("scan")
    assert proc.returncode == 1
    fix = next(line.split("fix: ", 1)[1] for line in proc.stdout.splitlines() if "fix: " in line)
    build_cmd, fetch_cmd = fix.split(" && ")
    assert build_cmd.startswith("modelguard build --from-hub org/tiny") and fetch_cmd.startswith("modelguard fetch")
    assert run_cli(*build_cmd.split()[1:], cwd=tmp_path).returncode == 0
    proc = run_cli(*fetch_cmd.split()[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "repaired" in proc.stdout and "the old bytes (digest_mismatch) are kept at" in proc.stdout
    assert run_cli("scan").returncode == 0


def test_unknown_revision_and_model_are_clear_errors(hub, two_commits):
    proc = run_cli("build", "--from-hub", MODEL, "--revision", "nope")
    assert proc.returncode == 1
    assert "revision 'nope' of org/tiny does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("build", "--from-hub", "org/absent")
    assert proc.returncode == 1 and "org/absent is not on" in proc.stderr


def test_bad_invocations(hub, tmp_path):
    proc = run_cli("build", str(tmp_path), "--from-hub", MODEL)
    assert proc.returncode == 2 and "either DIR or --from-hub" in proc.stderr
    proc = run_cli("build", "--from-hub", "not a/model/id")
    assert proc.returncode == 2 and "is not a model id" in proc.stderr
    proc = run_cli("build", "--from-hub", MODEL, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1 and "HF_HUB_OFFLINE is set" in proc.stderr
    assert hub.requests() == []
