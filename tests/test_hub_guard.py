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
import sys
import modelguard
from modelguard.errors import VerificationError

for policy in sys.argv[1:]:
    modelguard.install(policy=policy)
    from transformers import AutoModel
    try:
        model = AutoModel.from_pretrained("org/tinybert")
    except VerificationError as exc:
        print("REFUSED", policy, str(exc).splitlines()[0])
    else:
        print("CHECKSUM", policy, repr(round(sum(float(p.double().sum()) for p in model.state_dict().values()), 6)))
    modelguard.uninstall()
"""


def checksum_of(weights: Path) -> float:
    from safetensors.torch import load_file

    return round(sum(float(t.double().sum()) for t in load_file(str(weights)).values()), 6)


@pytest.fixture
def served_bert(tmp_path, monkeypatch):
    from helpers.tiny_bert import save_tiny_bert

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


def load(*policies: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOAD, *policies], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)


def test_repair_policy_downloads_the_right_bytes_before_construction(served_bert):
    hub, commit, expected, corrupt = served_bert
    n_before = len(hub.requests("GET", "/lfs/"))
    # First 'refuse' (nothing is downloaded, the load fails), then 'repair' in the same process.
    proc = load("refuse", "repair")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("REFUSED refuse") and "org/tinybert" in lines[0], lines
    assert lines[1] == f"CHECKSUM repair {expected!r}", lines  # the model holds the published weights
    assert len(hub.requests("GET", "/lfs/")) == n_before + 1  # one download, by the repair
    snap = repo_folder(MODEL) / "snapshots" / commit
    assert checksum_of(snap / WEIGHTS) == expected
    kept = list((repo_folder(MODEL) / ".modelguard-quarantine").rglob(WEIGHTS))
    assert len(kept) == 1 and kept[0].read_bytes() == corrupt
