"""FlagEmbedding's FlagModel, FlagReranker and FlagLLMReranker verify the model folder before
construction, and a reranker on a base checkpoint (a fresh classifier) is refused."""

from __future__ import annotations

import shutil
import warnings

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import ManifestNotFoundError, RandomInitError, VerificationError

from _tiny_loaders import DAMAGE
from helpers.tiny_bert import save_tiny_bert, save_tiny_tokenizer
from helpers.tiny_lm import make_tiny_causal_lm

torch = need("torch")
FlagEmbedding = need("FlagEmbedding")

PAIRS = [("the guard", "verifies every file"), ("every file", "the guard")]


def _embed(path):
    model = FlagEmbedding.FlagModel(str(path), use_fp16=False, devices="cpu")
    return torch.as_tensor(model.encode(["the guard verifies", "every file"]))


def _rerank(path):
    return torch.tensor(FlagEmbedding.FlagReranker(str(path), devices="cpu").compute_score(PAIRS))


def _llm_rerank(path):
    reranker = FlagEmbedding.FlagLLMReranker(str(path), devices="cpu")
    return torch.tensor(reranker.compute_score([("the cat", "sat on the mat"), ("a dog", "ran in the park")]))


# public name -> (FlagEmbedding's own class name, template, load and score)
CLASSES = {
    "FlagModel": ("BaseEmbedder", "bert", _embed),
    "FlagReranker": ("BaseReranker", "classifier", _rerank),
    "FlagLLMReranker": ("BaseLLMReranker", "lm", _llm_rerank),
}


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("flag-models")
    return {
        "bert": save_tiny_tokenizer(save_tiny_bert(root / "bert", "BertModel")),
        "classifier": save_tiny_tokenizer(save_tiny_bert(root / "classifier", "BertForSequenceClassification")),
        "lm": make_tiny_causal_lm(root / "lm"),
    }


def _copy(templates, which, tmp_path, *, manifest=True):
    d = shutil.copytree(templates[which], tmp_path / which)
    if manifest:
        modelguard.save_manifest(modelguard.build_manifest(d, f"acme/{which}"), d / "modelguard.yaml")
    return d


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = [pytest.mark.guard(unknown="refuse"), pytest.mark.usefixtures("installed_guard")]


@pytest.mark.parametrize("public", CLASSES)
def test_intact_model_loads_and_scores_bit_identical_to_an_unguarded_load(public, templates, tmp_path):
    _, which, run = CLASSES[public]
    d = _copy(templates, which, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        guarded = run(d)
    guard.uninstall()
    plain = run(d)
    assert torch.equal(guarded, plain)


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("public", CLASSES)
def test_damaged_weights_are_refused_before_the_class_builds_anything(public, damage, templates, tmp_path,
                                                                      monkeypatch):
    own, which, run = CLASSES[public]
    d = _copy(templates, which, tmp_path)
    spoil, diagnosis = DAMAGE[damage]
    spoil(d / "model.safetensors")
    import transformers

    # A same-size flip is found while the library loads (modelguard.overlap) unless every file is
    # verified first; either way the class is refused with the verification error.
    for verify_first in ("1", ""):
        monkeypatch.setenv("MODELGUARD_VERIFY_FIRST", verify_first)
        calls = []
        for auto in ("AutoTokenizer", "AutoModel", "AutoModelForSequenceClassification", "AutoModelForCausalLM"):
            monkeypatch.setattr(getattr(transformers, auto), "from_pretrained",
                                classmethod(lambda cls, *a, **k: calls.append(cls) or pytest.fail("built")))
        with pytest.raises(VerificationError) as info:
            run(d)
        text = str(info.value)
        assert f"modelguard refused to load acme/{which} (FlagEmbedding {public} ({own})) from {d}" in text
        assert "FAIL model.safetensors [" in text
        assert diagnosis in text
        if verify_first or damage != "flipped":
            assert calls == []


def test_reranker_on_a_base_checkpoint_is_refused_naming_the_new_classifier(templates, tmp_path):
    d = _copy(templates, "bert", tmp_path)
    with pytest.raises(RandomInitError) as info:
        FlagEmbedding.FlagReranker(str(d), devices="cpu")
    assert info.value.keys == ("classifier.bias", "classifier.weight")
    text = str(info.value)
    assert (f"modelguard refused to load {d} (FlagEmbedding FlagReranker (BaseReranker), via transformers "
            "BertForSequenceClassification.from_pretrained): 2 weight(s) were not in the checkpoint and would be "
            "randomly initialized: classifier.bias, classifier.weight") in text
    assert "allow_random_init(keys='classifier.*')" in text

    with modelguard.allow_random_init(keys="classifier.*"):
        reranker = FlagEmbedding.FlagReranker(str(d), devices="cpu")
    assert len(reranker.compute_score(PAIRS)) == 2


def test_a_model_no_expectation_covers_follows_the_unknown_model_policy_once(templates, tmp_path):
    d = _copy(templates, "classifier", tmp_path, manifest=False)
    with pytest.raises(ManifestNotFoundError) as info:
        FlagEmbedding.FlagReranker(str(d), devices="cpu")
    assert f"no manifest applies to {d} (loaded by FlagEmbedding FlagReranker (BaseReranker))" in str(info.value)

    modelguard.install(unknown="warn")
    with pytest.warns(guard.UnknownModelWarning) as caught:
        reranker = FlagEmbedding.FlagReranker(str(d), devices="cpu")
    # one report for the whole load: the nested tokenizer and model loads do not warn again
    assert [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, guard.GuardWarning)] == [
        f"modelguard: no manifest applies to {d} (loaded by FlagEmbedding FlagReranker (BaseReranker)), "
        "so its files are not verified; random initialization is still refused"]
    assert reranker.model_name_or_path == str(d)


def test_each_file_is_verified_once_per_load(templates, tmp_path, monkeypatch):
    import importlib

    engine = importlib.import_module("modelguard.engine")
    seen = []
    real = engine.verify_directory

    def spy(manifest, directory=None, **kwargs):
        report = real(manifest, directory, **kwargs)
        seen.extend(r.path for r in report.files)
        return report

    monkeypatch.setattr(engine, "verify_directory", spy)
    d = _copy(templates, "lm", tmp_path)
    _llm_rerank(d)
    assert sorted(seen) == sorted(set(seen))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(seen)


def test_a_hub_id_with_a_manifest_loads_the_verified_snapshot(templates, tmp_path, hub, monkeypatch):
    d = templates["classifier"]
    files = {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}
    commit = hub.add_repo("acme/reranker", files)
    manifests = tmp_path / "manifests"
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/reranker", revision=commit),
                             manifests / "acme" / "reranker.yaml")
    monkeypatch.setenv("MODELGUARD_MANIFEST_PATH", str(manifests))
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        reranker = FlagEmbedding.FlagReranker("acme/reranker", devices="cpu")
    assert reranker.model_name_or_path == "acme/reranker"  # what the caller passed, as without the guard
    guard.uninstall()
    assert torch.equal(torch.tensor(reranker.compute_score(PAIRS)), _rerank(d))


def test_an_llm_reranker_adapter_is_verified_before_it_is_merged(templates, tmp_path):
    peft = need("peft")
    import transformers

    d = _copy(templates, "lm", tmp_path)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], init_lora_weights=False)
    torch.manual_seed(1)
    adapter = tmp_path / "adapter"
    guard.uninstall()
    peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(d), config).save_pretrained(adapter)
    modelguard.install(unknown="refuse")
    modelguard.save_manifest(modelguard.build_manifest(adapter, "acme/lm-lora"), adapter / "modelguard.yaml")
    scores = FlagEmbedding.FlagLLMReranker(str(d), peft_path=str(adapter), devices="cpu").compute_score(PAIRS)
    assert len(scores) == 2
    DAMAGE["flipped"][0](adapter / "adapter_model.safetensors")
    with pytest.raises(VerificationError) as info:
        FlagEmbedding.FlagLLMReranker(str(d), peft_path=str(adapter), devices="cpu")
    assert ("modelguard refused to load acme/lm-lora (FlagEmbedding FlagLLMReranker (BaseLLMReranker), via peft "
            "PeftModel.from_pretrained)") in str(info.value)
