"""The peft hook on tiny real LoRA adapters made here."""

from __future__ import annotations

import shutil
import warnings

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import RandomInitError, VerificationError

from _tiny_loaders import DAMAGE, TinyNet, drop_tensors, save_tiny_lora

torch = need("torch")
peft = need("peft")

X = torch.linspace(-1, 1, 8).reshape(2, 4)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    guard.uninstall()
    return save_tiny_lora(tmp_path_factory.mktemp("lora") / "adapter")


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = [pytest.mark.guard(unknown="refuse"), pytest.mark.usefixtures("installed_guard")]


@pytest.fixture
def adapter(pristine, tmp_path):
    d = tmp_path / "adapter"
    shutil.copytree(pristine, d)
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/tiny-lora"), d / "modelguard.yaml")
    return d


def test_adapter_loads_with_outputs_identical_to_an_unguarded_load(adapter):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guarded = peft.PeftModel.from_pretrained(TinyNet.build(), adapter)
        with torch.no_grad():
            guarded_out = guarded(X)
    guard.uninstall()
    plain = peft.PeftModel.from_pretrained(TinyNet.build(), adapter)
    with torch.no_grad():
        plain_out = plain(X)
    assert torch.equal(guarded_out, plain_out)
    with torch.no_grad():
        assert not torch.equal(guarded_out, TinyNet.build()(X))  # the adapter changes the output


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("how", ["from_pretrained", "load_adapter"])
def test_damaged_adapter_weights_are_refused_before_peft_reads_them(how, damage, adapter):
    spoil, diagnosis = DAMAGE[damage]
    model = peft.PeftModel.from_pretrained(TinyNet.build(), adapter) if how == "load_adapter" else None
    spoil(adapter / "adapter_model.safetensors")
    with pytest.raises(VerificationError) as info:
        if model is None:
            peft.PeftModel.from_pretrained(TinyNet.build(), adapter)
        else:
            model.load_adapter(adapter, adapter_name="second")
    text = str(info.value)
    assert f"modelguard refused to load acme/tiny-lora (peft PeftModel.{how}) from {adapter}" in text
    assert "FAIL adapter_model.safetensors [model]: " in text and diagnosis in text
    if model is not None:
        assert "second" not in model.peft_config  # nothing was added


def test_a_broken_adapter_config_is_refused(adapter):
    config = adapter / "adapter_config.json"
    config.write_text(config.read_text().replace('"r": 2', '"r": 3'))
    with pytest.raises(VerificationError, match=r"FAIL adapter_config.json \[other\]: right size, wrong content"):
        peft.PeftModel.from_pretrained(TinyNet.build(), adapter)


def test_an_adapter_no_manifest_covers_follows_the_unknown_model_policy(pristine):
    with pytest.raises(modelguard.ManifestNotFoundError,
                       match=r"no manifest applies to .*adapter \(loaded by peft PeftModel.from_pretrained\)"):
        peft.PeftModel.from_pretrained(TinyNet.build(), pristine)


@pytest.fixture
def partial_adapter(pristine, tmp_path):
    d = tmp_path / "partial"
    shutil.copytree(pristine, d)
    guard.uninstall()
    dropped = drop_tensors(d / "adapter_model.safetensors", ".lin2.")
    modelguard.install(unknown="refuse")
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/partial-lora"), d / "modelguard.yaml")
    assert dropped == ["base_model.model.lin2.lora_A.weight", "base_model.model.lin2.lora_B.weight"]
    return d


def test_an_adapter_missing_a_targeted_module_is_refused(partial_adapter):
    with pytest.raises(RandomInitError) as info:
        peft.PeftModel.from_pretrained(TinyNet.build(), partial_adapter)
    assert info.value.keys == ("base_model.model.lin2.lora_A.default.weight",
                               "base_model.model.lin2.lora_B.default.weight")
    text = str(info.value)
    assert f"modelguard refused to load {partial_adapter} (adapter 'default') (peft PeftModel.load_adapter)" in text
    assert "2 weight(s) were not in the checkpoint and would be randomly initialized" in text


def test_load_adapter_of_a_partial_adapter_is_refused(adapter, partial_adapter):
    model = peft.PeftModel.from_pretrained(TinyNet.build(), adapter)
    with pytest.raises(RandomInitError, match=r"base_model.model.lin2.lora_A.extra.weight, "
                                              r"base_model.model.lin2.lora_B.extra.weight"):
        model.load_adapter(partial_adapter, adapter_name="extra")


def test_allow_random_init_by_name_lets_a_partial_adapter_load(partial_adapter):
    with modelguard.allow_random_init(keys="*.lin2.lora_*"):
        model = peft.PeftModel.from_pretrained(TinyNet.build(), partial_adapter)
    assert isinstance(model, peft.PeftModel)
    with modelguard.allow_random_init(keys="*.lin1.lora_*"):
        with pytest.raises(RandomInitError, match="lin2"):
            peft.PeftModel.from_pretrained(TinyNet.build(), partial_adapter)


# ------------------------------------------------------------- transformers' own model.load_adapter


@pytest.fixture(scope="module")
def lm_and_lora(tmp_path_factory, tiny_lm_template):
    """A tiny GPT-2 and a LoRA adapter for it (attention and MLP), saved by peft."""
    transformers = need("transformers")
    guard.uninstall()
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm_template)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], init_lora_weights=False)
    torch.manual_seed(1)
    adapter = tmp_path_factory.mktemp("gpt2-lora") / "adapter"
    peft.get_peft_model(base, config).save_pretrained(adapter)
    return tiny_lm_template, adapter


@pytest.fixture
def lm_adapter(lm_and_lora, tmp_path):
    d = shutil.copytree(lm_and_lora[1], tmp_path / "lm-adapter")
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/gpt2-lora"), d / "modelguard.yaml")
    return d


def _lm_logits(lm_and_lora, adapter):
    transformers = need("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(lm_and_lora[0], local_files_only=True)
    model.load_adapter(str(adapter))
    with torch.no_grad():
        return model(torch.tensor([[1, 2, 3, 4]])).logits


@pytest.fixture
def lm_manifest(lm_and_lora, tmp_path):
    """The base model's manifest, kept outside its (shared) folder."""
    manifests = tmp_path / "manifests"
    model = modelguard.build_manifest(lm_and_lora[0], "acme/tiny-lm")
    modelguard.save_manifest(model, manifests / "acme" / "tiny-lm.yaml")
    guard.map_directory(lm_and_lora[0], "acme/tiny-lm")
    modelguard.install(manifest_dirs=[manifests])


def test_transformers_load_adapter_loads_identically_to_an_unguarded_load(lm_and_lora, lm_adapter, lm_manifest):
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        guarded = _lm_logits(lm_and_lora, lm_adapter)
    guard.uninstall()
    plain = _lm_logits(lm_and_lora, lm_adapter)
    assert torch.equal(guarded, plain)


@pytest.mark.parametrize("damage", DAMAGE)
def test_transformers_load_adapter_refuses_damaged_adapter_files_before_reading_them(damage, lm_and_lora, lm_adapter,
                                                                                   lm_manifest):
    spoil, diagnosis = DAMAGE[damage]
    spoil(lm_adapter / "adapter_model.safetensors")
    with pytest.raises(VerificationError) as info:
        _lm_logits(lm_and_lora, lm_adapter)
    text = str(info.value)
    assert f"modelguard refused to load acme/gpt2-lora (transformers GPT2LMHeadModel.load_adapter) from {lm_adapter}" \
        in text
    assert "FAIL adapter_model.safetensors [" in text
    assert diagnosis in text


def test_transformers_load_adapter_refuses_an_adapter_missing_a_targeted_module(lm_and_lora, lm_adapter, lm_manifest):
    dropped = drop_tensors(lm_adapter / "adapter_model.safetensors", "h.1.mlp.c_fc")
    assert dropped
    modelguard.save_manifest(modelguard.build_manifest(lm_adapter, "acme/gpt2-lora"), lm_adapter / "modelguard.yaml")
    with pytest.raises(RandomInitError) as info:
        _lm_logits(lm_and_lora, lm_adapter)
    text = str(info.value)
    assert f"modelguard refused to load {lm_adapter} (adapter 'default') (transformers GPT2LMHeadModel.load_adapter)" \
        in text
    assert all("h.1.mlp.c_fc.lora_" in key for key in info.value.keys) and len(info.value.keys) == 2
    with modelguard.allow_random_init(keys="*h.1.mlp.c_fc.lora_*"):
        _lm_logits(lm_and_lora, lm_adapter)
