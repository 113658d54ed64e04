"""sentence-transformers SparseEncoder: head modules in subfolders are verified before
construction, and a head built with weights from no file is refused."""

from __future__ import annotations

import shutil
import warnings

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import RandomInitError, VerificationError

from _tiny_loaders import DAMAGE
from helpers.tiny_bert import save_tiny_bert, save_tiny_tokenizer

torch = need("torch")
sentence_transformers = need("sentence_transformers")

TEXTS = ["the guard verifies", "every file"]


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    from sentence_transformers.base.modules import Router, Transformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    root = tmp_path_factory.mktemp("sparse")
    mlm = save_tiny_tokenizer(save_tiny_bert(root / "mlm", "BertForMaskedLM"))
    base = save_tiny_tokenizer(save_tiny_bert(root / "base", "BertModel"))
    splade = sentence_transformers.SparseEncoder(
        modules=[Transformer(str(mlm), transformer_task="fill-mask"), SpladePooling("max")])
    splade.save(str(root / "splade"))
    tokenizer = splade[0].tokenizer
    generator = torch.Generator().manual_seed(0)
    query = SparseStaticEmbedding(tokenizer=tokenizer, weight=torch.rand(len(tokenizer.get_vocab()), generator=generator))
    router = Router.for_query_document(
        query_modules=[query],
        document_modules=[Transformer(str(mlm), transformer_task="fill-mask"), SpladePooling("max")])
    sentence_transformers.SparseEncoder(modules=[router]).save(str(root / "inference-free"))
    return {"splade": root / "splade", "inference-free": root / "inference-free", "base": base}


def _copy(templates, which, tmp_path):
    d = shutil.copytree(templates[which], tmp_path / which)
    modelguard.save_manifest(modelguard.build_manifest(d, f"acme/{which}"), d / "modelguard.yaml")
    return d


def _encode(path):
    model = sentence_transformers.SparseEncoder(str(path))
    return torch.cat([model.encode_query(TEXTS, convert_to_tensor=True).to_dense().flatten(),
                      model.encode_document(TEXTS, convert_to_tensor=True).to_dense().flatten()])


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = [pytest.mark.guard(unknown="refuse"), pytest.mark.usefixtures("installed_guard")]


@pytest.mark.parametrize("which", ["splade", "inference-free"])
def test_intact_sparse_encoder_encodes_bit_identical_to_an_unguarded_load(which, templates, tmp_path):
    d = _copy(templates, which, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        guarded = _encode(d)
    guard.uninstall()
    plain = _encode(d)
    assert torch.equal(guarded, plain)
    assert guarded.abs().sum() > 0


# head file (in its module's subfolder), model
HEAD_FILES = {
    "query_0_SparseStaticEmbedding/model.safetensors": "inference-free",
    "document_1_SpladePooling/config.json": "inference-free",
    "1_SpladePooling/config.json": "splade",
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("head", HEAD_FILES)
def test_a_damaged_head_file_is_refused_before_any_module_is_built(head, damage, templates, tmp_path, monkeypatch):
    from sentence_transformers.base.modules import Router, Transformer

    which = HEAD_FILES[head]
    d = _copy(templates, which, tmp_path)
    spoil, diagnosis = DAMAGE[damage]
    spoil(d / head)
    # A same-size flip in safetensors is found while the library loads (modelguard.overlap) unless
    # every file is verified first; either way the encoder is refused with the verification error.
    for verify_first in ("1", ""):
        monkeypatch.setenv("MODELGUARD_VERIFY_FIRST", verify_first)
        built = []
        for cls in (Router, Transformer):
            monkeypatch.setattr(cls, "load", classmethod(lambda c, *a, **k: built.append(c) or pytest.fail("built")))
        with pytest.raises(VerificationError) as info:
            sentence_transformers.SparseEncoder(str(d))
        text = str(info.value)
        assert f"modelguard refused to load acme/{which} (sentence-transformers SparseEncoder) from {d}" in text
        assert f"FAIL {head} [" in text
        assert diagnosis in text
        if verify_first or damage != "flipped" or not head.endswith(".safetensors"):
            assert built == []


def test_a_checkpoint_without_a_sparse_head_is_refused_naming_the_new_head(templates, tmp_path):
    d = _copy(templates, "base", tmp_path)
    with pytest.raises(RandomInitError) as info:
        sentence_transformers.SparseEncoder(str(d))
    assert info.value.keys == ("2.encoder.weight", "2.latent_bias", "2.pre_bias")
    text = str(info.value)
    assert (f"modelguard refused to load {d} (no modules.json: a new SparseAutoEncoder head, module 2, built by "
            "SparseEncoder with weights from no file) (sentence-transformers SparseEncoder): 3 weight(s) were not "
            "in the checkpoint and would be randomly initialized: 2.encoder.weight, 2.latent_bias, 2.pre_bias") in text
    assert "allow_random_init('SparseAutoEncoder')" in text

    with modelguard.allow_random_init("SparseAutoEncoder"):
        model = sentence_transformers.SparseEncoder(str(d))
    assert type(model[2]).__name__ == "SparseAutoEncoder"


def test_a_masked_lm_checkpoint_gets_splade_pooling_and_loads(templates, tmp_path):
    d = shutil.copytree(templates["splade"], tmp_path / "bare")
    for name in ("modules.json", "1_SpladePooling/config.json"):
        (d / name).unlink()
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/bare"), d / "modelguard.yaml")
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        model = sentence_transformers.SparseEncoder(str(d))
    assert [type(m).__name__ for m in model] == ["Transformer", "SpladePooling"]
