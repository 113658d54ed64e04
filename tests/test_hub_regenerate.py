"""tools/regenerate_manifests.py against the test Hub: pins, updates, keeps tensors and components."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import HubServer, tiny_model_files

from modelguard.manifest import Component, FileEntry, Manifest, TensorSpec, load_manifest, save_manifest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "regenerate_manifests.py"
MODEL = "org/tiny"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        old_files = tiny_model_files(seed=1)
        c1 = hub.add_repo(MODEL, old_files)
        c2 = hub.add_repo(MODEL, tiny_model_files(seed=2))
        # An existing manifest pinned to c1 listing two files, with a custom component and a tensors spec.
        manifest = Manifest(
            model=MODEL, revision=c1,
            components={"weights": Component("weights", True, "the weights"), "model": Component("model", True)},
            files=(
                FileEntry("model.safetensors", 1, "weights", {"sha256": "0" * 64},
                          tensors={"pooler.bias": TensorSpec((192,), "float32")}),
                FileEntry("config.json", len(old_files["config.json"]), "model",
                          {"sha256": hashlib.sha256(old_files["config.json"]).hexdigest()}),
            ),
            description="kept as written",
        )
        folder = tmp_path / "manifests"
        save_manifest(manifest, folder / f"{MODEL}.yaml")
        yield hub, folder, c1, c2, old_files


def test_regenerate_at_the_pinned_commit_then_update(setup):
    hub, folder, c1, c2, old_files = setup
    path = folder / f"{MODEL}.yaml"
    proc = run_tool("--manifests", str(folder), "--check")
    assert proc.returncode == 1 and "would change" in proc.stdout and "model.safetensors: changed" in proc.stdout
    assert load_manifest(path).file("model.safetensors").size == 1  # --check writes nothing

    proc = run_tool("--manifests", str(folder))
    assert proc.returncode == 0, proc.stderr
    assert "not in the manifest (pass --all-files to add): 1_Pooling/config.json, tokenizer.json" in proc.stdout
    m = load_manifest(path)
    assert m.revision == c1 and m.description == "kept as written"
    weights = m.file("model.safetensors")
    assert weights.component == "weights" and weights.tensors["pooler.bias"].shape == (192,)
    assert weights.digests["sha256"] == hashlib.sha256(old_files["model.safetensors"]).hexdigest()
    assert weights.size == len(old_files["model.safetensors"])
    assert set(m.file("config.json").digests) == {"sha256", "md5", "git_sha1"}
    assert hub.requests("GET", "/lfs/") == []  # weights never downloaded

    assert run_tool("--manifests", str(folder), "--check").returncode == 0  # now in sync

    proc = run_tool("--manifests", str(folder), "--update", "--all-files")
    assert proc.returncode == 0, proc.stderr
    assert f"revision {c1} -> {c2}" in proc.stdout
    m = load_manifest(path)
    assert m.revision == c2 and len(m.files) == 4


def test_unknown_model_is_refused(setup):
    _, folder, *_ = setup
    proc = run_tool("--manifests", str(folder), "org/other")
    assert proc.returncode == 2 and "no manifest" in proc.stderr
