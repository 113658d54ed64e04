"""A cache snapshot with no saved listing (``hf_hub_download`` of single files, an older client):
``verify`` asks the Hub for the listing of that commit when it may (kept in memory, nothing
written), so files missing from the snapshot are found; offline it checks the blobs' content
addresses and says completeness could not be checked.

The real huggingface_hub client downloads from the test Hub (tests/hubserver.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need

import modelguard
from modelguard.hfcache import repo_folder

need("huggingface_hub")

MODEL = "org/partial"
README = b"# partial\n"


@pytest.fixture
def partial(hub, tmp_path) -> tuple[str, Path]:
    """``MODEL`` (config.json, model.safetensors, README.md) on the test Hub; README and the
    weights fetched one by one with hf_hub_download, config.json never. Returns (commit, snapshot)."""
    from hubserver import tiny_model_files
    from huggingface_hub import hf_hub_download

    files = {"config.json": b'{"model_type": "bert"}\n', "model.safetensors": tiny_model_files()["model.safetensors"],
             "README.md": README}
    commit = hub.add_repo(MODEL, files)
    for name in ("README.md", "model.safetensors"):
        path = hf_hub_download(MODEL, name, cache_dir=os.environ["HF_HUB_CACHE"], endpoint=hub.endpoint)
    snap = Path(path).parent
    assert snap.name == commit
    assert not (repo_folder(MODEL) / "trees").exists()  # hf_hub_download saves no listing
    return commit, snap


def test_online_verify_fetches_the_listing_and_finds_the_missing_file(hub, partial):
    commit, snap = partial
    proc = run_cli("verify", MODEL)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert (f"  expectations: the Hub's listing of commit {commit}, fetched from {hub.endpoint} now "
            "(no listing was saved at download; nothing was written)") in lines
    [failed] = [line for line in lines if line.split()[:3] == ["FAIL", "files", "config.json"]]
    assert failed.split(None, 3)[3] == f"missing: not in {snap} (required component 'files')"
    assert lines[-1] == f"FAILED: {MODEL}: 1 of 3 file(s) failed (component(s): files)"

    doc = json.loads(run_cli("verify", MODEL, "--json").stdout)
    assert doc["ok"] is False
    assert doc["expectations"]["origin"] == "hub-api" and doc["expectations"]["completeness_checked"] is True
    by_path = {f["path"]: f for f in doc["files"]}
    assert by_path["config.json"]["status"] == "failed" and by_path["config.json"]["diagnosis"] == "missing"
    assert by_path["model.safetensors"]["status"] == "ok" and by_path["README.md"]["status"] == "ok"
    assert hub.requests("GET", f"/api/models/{MODEL}/tree/{commit}")  # the tree listing was asked for
    assert not (repo_folder(MODEL) / "trees").exists()  # and not saved

    # From Python: the same expectations.
    report = modelguard.verify(MODEL)
    assert not report.ok and report.expectations == "hub-api" and report.completeness_checked
    assert [(r.path, r.diagnosis) for r in report.failures] == [("config.json", "missing")]
    assert f"not in the Hub's listing of commit {commit[:12]} (fetched now, not saved)" == report.unlisted_phrase


def test_offline_verify_keeps_the_blob_addresses_and_says_completeness_was_not_checked(hub, partial):
    commit, snap = partial
    proc = run_cli("verify", MODEL, "--json", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["expectations"]["origin"] == "blob-addresses"
    assert doc["expectations"]["completeness_checked"] is False
    assert doc["expectations"]["source"] == (
        "the content addresses of the cache's blobs; completeness not checked (no saved listing at "
        f"{repo_folder(MODEL) / 'trees' / (commit + '.json')}, so files missing from the snapshot cannot be known)")
    assert sorted(f["path"] for f in doc["files"]) == ["README.md", "model.safetensors"]
    assert hub.requests("GET", "/tree/") == []


def test_when_the_hub_does_not_answer_the_blob_addresses_stay_and_the_report_says_why(hub, partial):
    commit, snap = partial
    proc = run_cli("verify", MODEL, "--json", env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["expectations"]["origin"] == "blob-addresses"
    source = doc["expectations"]["source"]
    assert source.startswith("the content addresses of the cache's blobs; completeness not checked"), source
    assert "; the Hub's listing could not be fetched: cannot reach org/partial @ " in source, source
