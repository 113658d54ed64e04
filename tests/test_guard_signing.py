"""Signatures enforced at load: sentence-transformers and transformers tiny models signed here
with keys made by openssl, loaded under the guard with MODELGUARD_PUBLIC_KEY."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard, signing
from modelguard.errors import SignatureError, UsageError, VerificationError

from helpers.tiny_bert import save_tiny_bert, save_tiny_tokenizer
from helpers.signing import key_hint, model_signing_cli

model_signing = need("model_signing")
transformers = need("transformers")
st = need("sentence_transformers")
torch = need("torch")


def make_tiny_sentence_transformer(directory: Path) -> Path:
    """A tiny BERT with its tokenizer and a mean pooling module, in the sentence-transformers layout."""
    save_tiny_bert(directory)
    save_tiny_tokenizer(directory)
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": True}))
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    return directory


@pytest.fixture(scope="module")
def templates(tmp_path_factory, keys):
    """Signed tiny models (never modified): one signed by `model_signing sign key`, one by modelguard."""
    root = tmp_path_factory.mktemp("signed-models")
    st_dir = make_tiny_sentence_transformer(root / "tiny-st")
    proc = model_signing_cli("sign", "key", str(st_dir), "--private_key", str(keys["private"]),
                             "--signature", str(st_dir / "model.sig"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bert = save_tiny_bert(root / "tiny-bert", "BertForSequenceClassification")
    signing.sign_directory(bert, private_key=keys["private"])
    return {"st": st_dir, "bert": bert}


@pytest.fixture
def models(templates, tmp_path):
    return {name: Path(shutil.copytree(path, tmp_path / path.name)) for name, path in templates.items()}


@pytest.fixture(autouse=True)
def installed(monkeypatch, keys):
    guard.uninstall()
    signing.clear_cache()
    monkeypatch.setenv("MODELGUARD_PUBLIC_KEY", str(keys["public"]))
    monkeypatch.delenv("MODELGUARD_REQUIRE_SIGNATURE", raising=False)
    modelguard.install(unknown="refuse")
    yield
    guard.uninstall()


@pytest.fixture
def constructions(monkeypatch):
    """How many BERT models were built (a refusal must come before any)."""
    built = []
    original = transformers.BertModel.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.BertModel, "__init__", counting_init)
    return built


def flip_last_tensor_byte(directory: Path) -> None:
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes: safetensors loads it, silently different
    weights.write_bytes(bytes(data))


def encode(model):
    return model.encode(["the guard verifies every file"], convert_to_tensor=True)


# --------------------------------------------------------------------------- sentence-transformers


def test_signed_sentence_transformer_loads_without_any_warning(models, constructions):
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        # unknown="refuse": no manifest describes this folder; the verified signature is the expectation
        model = st.SentenceTransformer(str(models["st"]), device="cpu")
    assert encode(model).shape == (1, 16)
    assert constructions == ["BertModel"]


def test_tampered_sentence_transformer_is_refused_before_construction(models, constructions):
    flip_last_tensor_byte(models["st"])
    with pytest.raises(VerificationError) as info:
        st.SentenceTransformer(str(models["st"]), device="cpu")
    assert constructions == []
    text = str(info.value)
    assert text.startswith(f"modelguard refused to load {models['st']} (sentence-transformers SentenceTransformer): "
                           f"files do not match the signature {models['st'] / 'model.sig'} "
                           f"(public key sha256:{key_hint(Path(guard_key()))})")
    assert "FAIL model.safetensors [signed]: wrong content: sha256: expected" in text


def guard_key() -> str:
    return signing.configured_public_key()


def test_signature_by_another_key_is_refused(models, keys, monkeypatch, constructions):
    monkeypatch.setenv("MODELGUARD_PUBLIC_KEY", str(keys["other_public"]))
    with pytest.raises(SignatureError) as info:
        st.SentenceTransformer(str(models["st"]), device="cpu")
    assert constructions == []
    assert str(info.value).startswith(
        f"modelguard refused to load {models['st']} (sentence-transformers SentenceTransformer): signature "
        f"{models['st'] / 'model.sig'} was made by another key, not the public key {keys['other_public']}")


def test_unsigned_copy_is_refused_when_a_signature_is_required(models, monkeypatch, constructions):
    (models["st"] / "model.sig").unlink()
    monkeypatch.setenv("MODELGUARD_REQUIRE_SIGNATURE", "1")
    with pytest.raises(SignatureError) as info:
        st.SentenceTransformer(str(models["st"]), device="cpu")
    assert constructions == []
    assert str(info.value).startswith(
        f"modelguard refused to load {models['st']} (sentence-transformers SentenceTransformer): "
        f"MODELGUARD_REQUIRE_SIGNATURE is set and {models['st']} holds no model.sig")
    # without the requirement it is merely an unknown model (here: refused by unknown="refuse")
    monkeypatch.delenv("MODELGUARD_REQUIRE_SIGNATURE")
    with pytest.raises(modelguard.ManifestNotFoundError, match="no manifest applies"):
        st.SentenceTransformer(str(models["st"]), device="cpu")


def test_unsigned_extra_file_is_refused_only_when_signatures_are_required(models, monkeypatch):
    (models["st"] / "extra_module.py").write_text("print('added after signing')\n")
    with pytest.warns(guard.GuardWarning, match=r"1 file\(s\) in .* are not covered by the signature .*: "
                                                r"extra_module.py \(not verified\)"):
        st.SentenceTransformer(str(models["st"]), device="cpu")
    monkeypatch.setenv("MODELGUARD_REQUIRE_SIGNATURE", "1")
    with pytest.raises(VerificationError, match="MODELGUARD_REQUIRE_SIGNATURE is set and the loader could read them"):
        st.SentenceTransformer(str(models["st"]), device="cpu")


# --------------------------------------------------------------------------- transformers


def test_signed_transformers_model_loads_and_tampered_is_refused(models, constructions):
    model = transformers.BertForSequenceClassification.from_pretrained(models["bert"])
    assert isinstance(model, transformers.BertForSequenceClassification)
    assert constructions == ["BertModel"]  # the backbone inside the classifier
    constructions.clear()
    weights = models["bert"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(VerificationError) as info:
        transformers.BertForSequenceClassification.from_pretrained(models["bert"])
    assert constructions == []
    # modelguard signed the sizes too: the diagnosis is "truncated", not just "wrong content"
    assert "FAIL model.safetensors [signed]: truncated:" in str(info.value)


def test_install_argument_and_required_signature_without_key(models, keys, monkeypatch, constructions):
    monkeypatch.delenv("MODELGUARD_PUBLIC_KEY")
    guard.uninstall()
    modelguard.install(unknown="refuse", public_key=keys["public"], require_signature=True)
    transformers.BertForSequenceClassification.from_pretrained(models["bert"])
    assert constructions == ["BertModel"]
    guard.uninstall()
    modelguard.install(unknown="allow", require_signature=True)
    with pytest.raises(UsageError, match="MODELGUARD_REQUIRE_SIGNATURE is set but no key or identity to check signatures"):
        transformers.BertForSequenceClassification.from_pretrained(models["bert"])


def test_invalid_requirement_setting_is_a_usage_error(models, monkeypatch):
    monkeypatch.setenv("MODELGUARD_REQUIRE_SIGNATURE", "sometimes")
    with pytest.raises(UsageError, match=r"\$MODELGUARD_REQUIRE_SIGNATURE='sometimes' is not a valid setting"):
        transformers.BertForSequenceClassification.from_pretrained(models["bert"])


def test_without_a_key_or_requirement_the_signature_is_not_read(models, monkeypatch):
    monkeypatch.delenv("MODELGUARD_PUBLIC_KEY")
    (models["bert"] / "model.sig").write_text("not a signature")
    guard.uninstall()
    modelguard.install(unknown="allow")
    transformers.BertForSequenceClassification.from_pretrained(models["bert"])


# --------------------------------------------------------------------------- cost


def test_warm_signature_check_does_no_cryptography_and_no_hashing(templates, monkeypatch):
    """The signature check is cached like digests: once warm, the guard's whole pre-load check of a
    signed model (signature, every file) neither verifies the bundle again nor reads a file's bytes.
    (What that costs in time is measured by tools/bench.py, not asserted here.)"""
    time.sleep(signing.RACY_WINDOW_NS / 1e9 + 0.1)  # files and signature older than the racy window
    path = str(templates["st"])
    modelguard.install(unknown="refuse")
    st.SentenceTransformer(path, device="cpu")  # cold: checks the signature and hashes the files

    def forbidden(*args, **kwargs):
        raise AssertionError("the warm check verified the bundle again")

    monkeypatch.setattr(signing, "_verify_bundle", forbidden)
    import modelguard.hashing as hashing

    def no_hashing(algorithm, size):
        raise AssertionError(f"the warm check started a {algorithm} hash")

    monkeypatch.setattr(hashing, "new_hasher", no_hashing)
    for _ in range(3):
        with guard.verified_scope():
            guard.check_before_load(path, loader="sentence-transformers SentenceTransformer")


def test_a_change_after_a_warm_load_is_seen(models, constructions):
    """The warm path trusts nothing it has not stat'ed again: a flipped byte or an added file
    after a successful load is caught at the next load."""
    time.sleep(signing.RACY_WINDOW_NS / 1e9 + 0.1)
    path = str(models["st"])
    st.SentenceTransformer(path, device="cpu")
    st.SentenceTransformer(path, device="cpu")  # warm: answered from the remembered folder state
    assert len(signing._folders) == 1
    (models["st"] / "1_Pooling" / "extra.json").write_text("{}\n")
    with pytest.warns(guard.GuardWarning, match=r"not covered by the signature .*: 1_Pooling/extra.json"):
        st.SentenceTransformer(path, device="cpu")
    flip_last_tensor_byte(models["st"])
    constructions.clear()
    with pytest.raises(VerificationError, match=r"model.safetensors \[signed\]: wrong content"):
        st.SentenceTransformer(path, device="cpu")
    assert constructions == []
