"""The loader guard's `repair` policy: transformers loading a model whose cached weights are
corrupt gets the right bytes from the Hub before the model is built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import HubServer

from modelguard.hfcache import repo_folder
from modelguard.hub import fetch

MODEL = "org/tinybert"
WEIGHTS = "model.safetensors"

LOAD = """
import modelguard, sys
modelguard.install(policy=sys.argv[1])
from transformers import AutoModel
model = AutoModel.from_pretrained("org/tinybert")
print("CHECKSUM", repr(round(sum(float(p.double().sum()) for p in model.state_dict().values()), 6)))
"""


def checksum_of(weights: Path) -> float:
    from safetensors.torch import load_file

    return round(sum(float(t.double().sum()) for t in load_file(str(weights)).values()), 6)


@pytest.fixture
def served_bert(tmp_path, monkeypatch):
    from _tiny_bert import save_tiny_bert

    from modelguard.build import build_manifest
    from modelguard.manifest import save_manifest

    source = save_tiny_bert(tmp_path / "tinybert")
    with HubServer() as hub:
        commit = hub.add_directory(MODEL, source)
        save_manifest(build_manifest(source, MODEL, commit), tmp_path / "manifests" / f"{MODEL}.yaml")
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("MODELGUARD_MANIFEST_PATH", str(tmp_path / "manifests"))
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        assert fetch(MODEL).ok
        blob = Path(os.path.realpath(repo_folder(MODEL) / "snapshots" / commit / WEIGHTS))
        data = bytearray(blob.read_bytes())
        data[-40] ^= 0x55  # inside the last tensor's data: still a loadable safetensors file
        blob.write_bytes(bytes(data))
        yield hub, commit, checksum_of(source / WEIGHTS), bytes(data)


def load(policy: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOAD, policy], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_repair_policy_downloads_the_right_bytes_before_construction(served_bert):
    hub, commit, expected, corrupt = served_bert
    n_before = len(hub.requests("GET", "/lfs/"))
    proc = load("repair")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"CHECKSUM {expected!r}" in proc.stdout  # the model holds the published weights
    assert len(hub.requests("GET", "/lfs/")) == n_before + 1
    snap = repo_folder(MODEL) / "snapshots" / commit
    assert checksum_of(snap / WEIGHTS) == expected
    kept = list((repo_folder(MODEL) / ".modelguard-quarantine").rglob(WEIGHTS))
    assert len(kept) == 1 and kept[0].read_bytes() == corrupt


def test_refuse_policy_does_not_download(served_bert):
    hub, commit, expected, corrupt = served_bert
    n_before = len(hub.requests("GET", "/lfs/"))
    proc = load("refuse")
    assert proc.returncode != 0
    assert "VerificationError" in proc.stderr and "model.safetensors" in proc.stderr
    assert "CHECKSUM" not in proc.stdout
    assert len(hub.requests("GET", "/lfs/")) == n_before
    assert Path(os.path.realpath(repo_folder(MODEL) / "snapshots" / commit / WEIGHTS)).read_bytes() == corrupt
