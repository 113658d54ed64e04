"""The transformers hook on real tiny BERT checkpoints made here."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import RandomInitError, VerificationError

from helpers.tiny_bert import sample_inputs, save_tiny_bert, save_tiny_tokenizer

transformers = need("transformers")
torch = need("torch")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-bert")
    return {
        "base": save_tiny_bert(root / "base", "BertModel"),
        "seqcls": save_tiny_bert(root / "seqcls", "BertForSequenceClassification"),
        "mlm": save_tiny_bert(root / "mlm", "BertForMaskedLM"),
    }


# Every test runs with the loader guard freshly installed, unknown models allowed (conftest.installed_guard).
pytestmark = [pytest.mark.guard(unknown="allow"), pytest.mark.usefixtures("installed_guard")]


def with_manifest(src: Path, dst: Path, model: str = "acme/tiny-bert") -> Path:
    shutil.copytree(src, dst)
    modelguard.save_manifest(modelguard.build_manifest(dst, model), dst / "modelguard.yaml")
    return dst


def assert_holds_checkpoint(module, directory: Path) -> int:
    """Every tensor of ``directory/model.safetensors`` is in ``module``, bit for bit; returns how many."""
    from safetensors.torch import load_file

    stored = load_file(directory / "model.safetensors")
    state = module.state_dict()
    assert stored and set(stored) <= set(state), sorted(set(stored) - set(state))
    for name, tensor in stored.items():
        assert torch.equal(state[name], tensor), name
    return len(stored)


def test_classification_head_from_base_checkpoint_is_refused(checkpoints):
    with pytest.raises(RandomInitError) as info:
        transformers.BertForSequenceClassification.from_pretrained(checkpoints["base"])
    err = info.value
    assert err.keys == ("classifier.bias", "classifier.weight")
    text = str(err)
    assert "BertForSequenceClassification.from_pretrained" in text
    assert "2 weight(s) were not in the checkpoint and would be randomly initialized: " \
           "classifier.bias, classifier.weight" in text
    assert "allow_random_init(keys='classifier.*')" in text


def test_auto_class_goes_through_the_same_check(checkpoints):
    with pytest.raises(RandomInitError, match="classifier.bias, classifier.weight"):
        transformers.AutoModelForSequenceClassification.from_pretrained(checkpoints["base"])


def test_allow_random_init_keys_lets_the_new_head_be_built(checkpoints):
    with modelguard.allow_random_init(keys="classifier.*"):
        model, info = transformers.BertForSequenceClassification.from_pretrained(
            checkpoints["base"], output_loading_info=True,
        )
    assert isinstance(model, transformers.BertForSequenceClassification)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    # the opt-out ends with the block
    with pytest.raises(RandomInitError):
        transformers.BertForSequenceClassification.from_pretrained(checkpoints["base"])


def test_an_opt_out_for_other_keys_does_not_cover_the_head(checkpoints):
    with modelguard.allow_random_init(keys="pooler.*"), modelguard.allow_random_init("colbert"):
        with pytest.raises(RandomInitError, match="classifier"):
            transformers.BertForSequenceClassification.from_pretrained(checkpoints["base"])


def test_environment_opt_out(checkpoints, monkeypatch):
    monkeypatch.setenv("MODELGUARD_ALLOW_RANDOM_INIT", "keys=classifier.*")
    model, info = transformers.BertForSequenceClassification.from_pretrained(
        checkpoints["base"], output_loading_info=True,
    )
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}  # only the allowed head is new
    assert assert_holds_checkpoint(model.bert, checkpoints["base"]) > 10  # the encoder is the checkpoint's


def test_head_reinitialized_for_a_size_mismatch_is_refused(checkpoints):
    with pytest.raises(RandomInitError) as info:
        transformers.BertForSequenceClassification.from_pretrained(
            checkpoints["seqcls"], num_labels=5, ignore_mismatched_sizes=True,
        )
    assert set(info.value.keys) == {"classifier.weight", "classifier.bias"}


def test_complete_model_loads_with_outputs_identical_to_an_unguarded_load(checkpoints):
    inputs = sample_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        guarded = transformers.BertForSequenceClassification.from_pretrained(checkpoints["seqcls"])
    with torch.no_grad():
        guarded_out = guarded(**inputs).logits
    guard.uninstall()
    plain = transformers.BertForSequenceClassification.from_pretrained(checkpoints["seqcls"])
    with torch.no_grad():
        plain_out = plain(**inputs).logits
    assert torch.equal(guarded_out, plain_out)
    for (name, a), (_, b) in zip(guarded.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_tied_weights_and_buffers_are_not_false_positives(checkpoints):
    # BertForMaskedLM ties its decoder to the word embeddings, and BERT keeps
    # position_ids / token_type_ids buffers that checkpoints do not store.
    model = transformers.BertForMaskedLM.from_pretrained(checkpoints["mlm"])
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    base = transformers.BertModel.from_pretrained(checkpoints["base"])
    assert base.embeddings.position_ids.shape[-1] == base.config.max_position_embeddings


def test_base_model_from_a_masked_lm_checkpoint_names_the_new_pooler(checkpoints):
    with pytest.raises(RandomInitError) as info:
        transformers.AutoModel.from_pretrained(checkpoints["mlm"])
    assert info.value.keys == ("pooler.dense.bias", "pooler.dense.weight")


def test_files_are_verified_before_the_model_is_built(checkpoints, tmp_path):
    d = with_manifest(checkpoints["seqcls"], tmp_path / "seqcls")
    weights = d / "model.safetensors"
    # Truncated: safetensors itself would fail with a header error; the guard must speak first.
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(VerificationError) as info:
        transformers.BertForSequenceClassification.from_pretrained(d)
    text = str(info.value)
    assert "modelguard refused to load acme/tiny-bert (transformers BertForSequenceClassification.from_pretrained)" in text
    assert "model.safetensors [model]: truncated:" in text
    assert "fix:" in text


def test_flipped_byte_in_weights_is_refused_and_warn_policy_loads(checkpoints, tmp_path, monkeypatch):
    d = with_manifest(checkpoints["seqcls"], tmp_path / "seqcls")
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes: loads fine, silently different
    weights.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"model.safetensors \[model\]: right size, wrong content"):
        transformers.BertForSequenceClassification.from_pretrained(d)

    monkeypatch.setenv("MODELGUARD_POLICY", "warn")
    with pytest.warns(guard.GuardWarning, match="loading despite failed checks: acme/tiny-bert"):
        model = transformers.BertForSequenceClassification.from_pretrained(d)
    assert_holds_checkpoint(model, d)  # the bytes on disk, flipped bit included, as the warning said
    from safetensors.torch import load_file

    original = load_file(checkpoints["seqcls"] / "model.safetensors")
    state = model.state_dict()
    assert [k for k, t in original.items() if not torch.equal(state[k], t)] != []


def test_only_the_components_transformers_reads_are_checked(checkpoints, tmp_path):
    d = with_manifest(checkpoints["seqcls"], tmp_path / "seqcls")
    (d / "tokenizer.json").write_text('{"truncation": null}')
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/tiny-bert"), d / "modelguard.yaml")
    (d / "tokenizer.json").write_text('{"truncation": 1}')  # broken tokenizer, weights intact
    model = transformers.BertForSequenceClassification.from_pretrained(d)
    assert assert_holds_checkpoint(model, checkpoints["seqcls"]) > 10


def test_random_init_is_refused_for_unknown_models_too(checkpoints, monkeypatch):
    monkeypatch.setenv("MODELGUARD_UNKNOWN", "warn")
    guard.uninstall()
    modelguard.install()
    with pytest.warns(guard.UnknownModelWarning), pytest.raises(RandomInitError):
        transformers.BertForSequenceClassification.from_pretrained(checkpoints["base"])


def test_without_the_guard_the_head_is_silently_random(checkpoints):
    guard.uninstall()
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = transformers.BertForSequenceClassification.from_pretrained(checkpoints["base"])
        with torch.no_grad():
            outputs.append(model(**sample_inputs()).logits)
    assert not torch.equal(outputs[0], outputs[1])


# --------------------------------------------------------------------------- Hub ids and pinned revisions

PINNED = "1" * 40
OTHER = "2" * 40


@pytest.fixture
def pinned_cache(checkpoints, tmp_path):
    """acme/tiny-bert in a HF cache: the manifest pins PINNED, while refs/main names another commit."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-bert"
    snap = repo / "snapshots" / PINNED
    shutil.copytree(checkpoints["seqcls"], snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(OTHER)
    manifests = tmp_path / "manifests"
    modelguard.save_manifest(modelguard.build_manifest(snap, "acme/tiny-bert", PINNED),
                             manifests / "acme" / "tiny-bert.yaml")
    guard.install(manifest_dirs=[manifests])
    return cache, snap


def test_hub_id_loads_the_pinned_revision(pinned_cache, hub_offline):
    cache, snap = pinned_cache
    resolved = guard.resolve_model("acme/tiny-bert", cache_dir=cache)
    assert (resolved.how, resolved.revision, resolved.directory) == ("hub-id", PINNED, snap)
    model = transformers.BertForSequenceClassification.from_pretrained(
        "acme/tiny-bert", cache_dir=str(cache), local_files_only=True,
    )
    assert isinstance(model, transformers.BertForSequenceClassification)
    # without the guard, transformers follows refs/main, which this cache does not hold
    guard.uninstall()
    with pytest.raises(OSError):
        transformers.BertForSequenceClassification.from_pretrained(
            "acme/tiny-bert", cache_dir=str(cache), local_files_only=True,
        )


def test_hub_id_with_a_corrupt_cached_file_is_refused_with_the_fetch_command(pinned_cache, hub_offline):
    cache, snap = pinned_cache
    config = snap / "config.json"
    config.write_text(config.read_text().replace('"hidden_size": 16', '"hidden_size": 32'))
    with pytest.raises(VerificationError) as info:
        transformers.BertForSequenceClassification.from_pretrained(
            "acme/tiny-bert", cache_dir=str(cache), local_files_only=True,
        )
    text = str(info.value)
    assert "config.json [model]: right size, wrong content" in text
    assert f"modelguard fetch acme/tiny-bert --revision {PINNED}" in text
    assert "--local-dir" not in text


def test_loader_components_follow_the_folder_transformers_reads():
    from modelguard.hooks.transformers import loader_components
    from modelguard.manifest import parse_manifest_text

    manifest = parse_manifest_text(
        "modelguard: 1\nmodel: acme/st\ncomponents: {backbone: {}, tokenizer: {}, st: {}}\nfiles:\n"
        + "".join(f"- {{path: {p}, size: 1, md5: {'a' * 32}, component: {c}}}\n" for p, c in [
            ("config.json", "st"), ("0_Transformer/config.json", "backbone"),
            ("0_Transformer/model.safetensors", "backbone"), ("0_Transformer/tokenizer.json", "tokenizer"),
            ("1_Pooling/config.json", "st"),
        ])
    )
    assert loader_components(manifest, "0_Transformer") == ["backbone"]
    assert loader_components(manifest, "") == ["st"]
    assert loader_components(manifest, "2_Dense") is None


# --------------------------------------------------------------------------- tokenizers


@pytest.fixture
def tiny_with_tokenizer(checkpoints, tmp_path):
    d = tmp_path / "tiny"
    shutil.copytree(checkpoints["seqcls"], d)
    save_tiny_tokenizer(d)
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/tiny-bert"), d / "modelguard.yaml")
    return d


def test_tokenizer_files_are_verified_before_the_tokenizer_is_built(tiny_with_tokenizer):
    d = tiny_with_tokenizer
    tokenizer = transformers.AutoTokenizer.from_pretrained(d)
    assert tokenizer("the guard verifies every file")["input_ids"] == [5, 6, 7, 8, 9]

    vocab = d / "tokenizer.json"
    vocab.write_text(vocab.read_text().replace('"guard"', '"gaurd"'))  # same size, valid JSON
    with pytest.raises(VerificationError) as info:
        transformers.AutoTokenizer.from_pretrained(d)
    text = str(info.value)
    assert "tokenizer.json [tokenizer]: right size, wrong content" in text
    assert "from_pretrained" in text
    # the model itself does not read the tokenizer: it still loads
    assert isinstance(transformers.BertForSequenceClassification.from_pretrained(d),
                      transformers.BertForSequenceClassification)


def test_tokenizer_hook_is_restored_exactly():
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    guard.uninstall()
    original = PreTrainedTokenizerBase.__dict__["from_pretrained"]
    modelguard.install()
    assert "transformers.tokenization_utils_base" in guard.patched_libraries()
    assert PreTrainedTokenizerBase.__dict__["from_pretrained"] is not original
    guard.uninstall()
    assert PreTrainedTokenizerBase.__dict__["from_pretrained"] is original


# --------------------------------------------------------------------------- processors

FEATURES = {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "feature_size": 1,
            "padding_value": 0.0, "do_normalize": True, "return_attention_mask": False}


@pytest.mark.parametrize("loader", ["AutoFeatureExtractor", "Wav2Vec2FeatureExtractor"])
def test_a_feature_extractors_config_is_verified_before_it_is_read(checkpoints, tmp_path, loader):
    import json

    d = tmp_path / "tiny"
    shutil.copytree(checkpoints["base"], d)
    (d / "preprocessor_config.json").write_text(json.dumps(FEATURES, indent=2))
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/tiny-audio"), d / "modelguard.yaml")
    load = getattr(transformers, loader).from_pretrained
    assert load(d).sampling_rate == 16000

    config = d / "preprocessor_config.json"
    config.write_text(config.read_text().replace("16000", "48000"))  # same size, valid JSON
    with pytest.raises(VerificationError) as info:
        load(d)
    text = str(info.value)
    assert "preprocessor_config.json [" in text and "right size, wrong content" in text, text
    reader = "get_feature_extractor_dict"
    assert (f"(transformers AutoFeatureExtractor.from_pretrained, via transformers FeatureExtractionMixin.{reader})"
            if loader.startswith("Auto") else f"(transformers Wav2Vec2FeatureExtractor.{reader})") in text, text
    # the reference: with the guard off, the changed file is read as it is
    guard.uninstall()
    assert load(d).sampling_rate == 48000


def test_processor_readers_are_patched_and_restored_exactly():
    from transformers.feature_extraction_utils import FeatureExtractionMixin
    from transformers.image_processing_base import ImageProcessingMixin
    from transformers.models.auto.feature_extraction_auto import AutoFeatureExtractor
    from transformers.models.auto.image_processing_auto import AutoImageProcessor
    from transformers.models.auto.processing_auto import AutoProcessor
    from transformers.processing_utils import ProcessorMixin

    from modelguard.hooks import is_wrapped

    readers = [(FeatureExtractionMixin, "get_feature_extractor_dict"), (ImageProcessingMixin, "get_image_processor_dict"),
               (ProcessorMixin, "get_processor_dict"), (AutoFeatureExtractor, "from_pretrained"),
               (AutoImageProcessor, "from_pretrained"), (AutoProcessor, "from_pretrained")]
    assert all(is_wrapped(vars(owner)[name]) for owner, name in readers)
    guard.uninstall()
    assert not any(is_wrapped(vars(owner)[name]) for owner, name in readers)
    modelguard.install()
    assert all(is_wrapped(vars(owner)[name]) for owner, name in readers)


# --------------------------------------------------------------------------- PEFT adapters


@pytest.fixture(scope="module")
def lora_adapter(checkpoints, tmp_path_factory):
    peft = need("peft")
    guard.uninstall()
    base = transformers.BertModel.from_pretrained(checkpoints["base"])
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["query", "value"],
                                                      init_lora_weights=False))
    target = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(target)
    with torch.no_grad():
        expected = model(**sample_inputs()).last_hidden_state
    return target, expected


def test_adapter_loads_without_false_positives(lora_adapter):
    directory, expected = lora_adapter
    model = transformers.AutoModel.from_pretrained(directory)
    with torch.no_grad():
        assert torch.equal(model(**sample_inputs()).last_hidden_state, expected)


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="transformers 4.x does not report an adapter's missing keys to from_pretrained")
def test_adapter_missing_a_lora_weight_is_refused(lora_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    directory = Path(shutil.copytree(lora_adapter[0], tmp_path / "adapter"))
    tensors = load_file(directory / "adapter_model.safetensors")
    dropped = sorted(k for k in tensors if "layer.1" in k and "value" in k and "lora_A" in k)
    assert dropped
    for key in dropped:
        del tensors[key]
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RandomInitError) as info:
        transformers.AutoModel.from_pretrained(directory)
    assert len(info.value.keys) == len(dropped)
    assert all("layer.1.attention.self.value.lora_A" in key for key in info.value.keys)
