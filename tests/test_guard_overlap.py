"""Verify while loading: safetensors weights are hashed while transformers builds the model,
and a file that fails never lets the load return a model, also when the library failed first;
pickle-based weights are still verified before they are read."""

from __future__ import annotations

import json
import shutil
import struct
import threading
from pathlib import Path

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import UnsafeFileError, VerificationError

from helpers.tiny_bert import save_tiny_bert

transformers = need("transformers")
torch = need("torch")

pytestmark = [pytest.mark.guard(unknown="refuse"), pytest.mark.usefixtures("installed_guard")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "base", "BertModel")


def with_manifest(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    modelguard.save_manifest(modelguard.build_manifest(dst, "acme/tiny-bert"), dst / "modelguard.yaml")
    return dst


@pytest.fixture
def model_dir(checkpoint, tmp_path) -> Path:
    return with_manifest(checkpoint, tmp_path / "model")


@pytest.fixture
def hashed_by(monkeypatch):
    """file -> name of the thread that verified it, through the real engine."""
    import importlib

    engine = importlib.import_module("modelguard.engine")
    real = engine.verify_directory
    seen: dict[str, str] = {}

    def spy(manifest, directory=None, **kwargs):
        report = real(manifest, directory, **kwargs)
        seen.update({r.path: threading.current_thread().name for r in report.files})
        return report

    monkeypatch.setattr(engine, "verify_directory", spy)
    return seen


def header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8:8 + n])


def rewrite_header_text(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` (same length) inside the safetensors header: the file keeps its size."""
    assert len(old) == len(new)
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    text = data[8:8 + n].decode()
    assert text.count(old) == 1, (old, text[:300])
    data[8:8 + n] = text.replace(old, new).encode()
    path.write_bytes(bytes(data))


def test_intact_model_loads_with_its_weights_hashed_while_loading(model_dir, hashed_by):
    model = transformers.BertModel.from_pretrained(model_dir)
    assert isinstance(model, transformers.BertModel)
    assert hashed_by["model.safetensors"] == "modelguard-overlap"
    assert hashed_by["config.json"] != "modelguard-overlap"  # configs are verified before anything is built
    assert not [t for t in threading.enumerate() if t.name == "modelguard-overlap"]  # joined before returning


def test_flipped_tensor_byte_raises_the_verification_error_and_returns_no_model(model_dir, hashed_by):
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor: safetensors and transformers load it without a word
    weights.write_bytes(bytes(data))
    result = None
    with pytest.raises(VerificationError) as info:
        result = transformers.BertModel.from_pretrained(model_dir)
    assert result is None
    assert type(info.value) is VerificationError
    text = str(info.value)
    assert "modelguard refused to load acme/tiny-bert" in text
    assert "model.safetensors [model]: right size, wrong content: sha256: expected " in text
    assert info.value.report.failures[0].path == "model.safetensors"
    assert info.value.__cause__ is None  # the library did not fail: only the digest tells
    assert hashed_by["model.safetensors"] == "modelguard-overlap"


def test_library_failing_first_on_the_bad_bytes_raises_the_verification_error_chained(model_dir, hashed_by):
    """A same-size change in the header region that the structural scan accepts (a tensor's
    shape transposed) but transformers cannot load: the library raises first; the load ends
    with the verification error, the library's error chained."""
    weights = model_dir / "model.safetensors"
    _, meta = header(weights)
    assert meta["embeddings.word_embeddings.weight"]["shape"] == [64, 16]
    rewrite_header_text(weights, '"shape":[64,16]', '"shape":[16,64]')
    guard.uninstall()
    with pytest.raises(Exception) as plain:  # what the library says unguarded
        transformers.BertModel.from_pretrained(model_dir)
    assert not isinstance(plain.value, VerificationError)
    modelguard.install(unknown="refuse")
    with pytest.raises(VerificationError) as info:
        transformers.BertModel.from_pretrained(model_dir)
    assert type(info.value) is VerificationError
    assert "model.safetensors [model]: right size, wrong content" in str(info.value)
    cause = info.value.__cause__
    assert type(cause) is type(plain.value) and str(cause) == str(plain.value)  # the library's own error
    assert hashed_by["model.safetensors"] == "modelguard-overlap"


def test_header_damage_the_scan_finds_is_reported_by_its_digest(model_dir):
    """A same-size flip that breaks the header's JSON: refused before anything is built, with
    the digest mismatch (the cause) as the error and the scan's finding chained."""
    weights = model_dir / "model.safetensors"
    n, _ = header(weights)
    data = bytearray(weights.read_bytes())
    data[8] = ord("[")  # the header's opening brace
    weights.write_bytes(bytes(data))
    with pytest.raises(VerificationError) as info:
        transformers.BertModel.from_pretrained(model_dir)
    assert type(info.value) is VerificationError
    assert "model.safetensors [model]: right size, wrong content" in str(info.value)
    assert isinstance(info.value.__cause__, UnsafeFileError)


def test_truncated_weights_are_refused_before_anything_is_built(model_dir, hashed_by, monkeypatch):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    built = []
    real_init = transformers.BertModel.__init__
    monkeypatch.setattr(transformers.BertModel, "__init__",
                        lambda self, *a, **k: built.append(1) or real_init(self, *a, **k))
    with pytest.raises(VerificationError, match=r"model.safetensors \[model\]: truncated"):
        transformers.BertModel.from_pretrained(model_dir)
    assert built == []
    assert hashed_by["model.safetensors"] != "modelguard-overlap"


def test_pickle_weights_are_verified_before_torch_reads_them(checkpoint, tmp_path, monkeypatch, hashed_by):
    src = tmp_path / "bin-src"
    src.mkdir()
    shutil.copy(checkpoint / "config.json", src / "config.json")
    guard.uninstall()
    from safetensors.torch import load_file

    torch.save(load_file(checkpoint / "model.safetensors"), src / "pytorch_model.bin")  # a pickle-based checkpoint
    events = []
    real_load = torch.load

    def spy_load(f, *args, **kwargs):
        events.append(("torch.load", Path(f).name if isinstance(f, (str, Path)) else "?"))
        return real_load(f, *args, **kwargs)

    # The spy goes in before the guard wraps torch.load, so uninstalling the guard and undoing the
    # monkeypatch each restore what they replaced (the other order would leave the guard's wrapper behind).
    monkeypatch.setattr(torch, "load", spy_load)
    modelguard.install(unknown="refuse")
    d = with_manifest(src, tmp_path / "bin")
    assert (d / "pytorch_model.bin").is_file() and not (d / "model.safetensors").exists()
    model = transformers.BertModel.from_pretrained(d)
    assert isinstance(model, transformers.BertModel)
    assert hashed_by["pytorch_model.bin"] != "modelguard-overlap"
    assert ("torch.load", "pytorch_model.bin") in events
    weights = d / "pytorch_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    events.clear()
    with pytest.raises(VerificationError, match=r"pytorch_model.bin \[model\]: right size, wrong content"):
        transformers.BertModel.from_pretrained(d)
    assert events == []  # never handed to torch


def test_warn_policy_warns_after_the_load(model_dir, monkeypatch):
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("MODELGUARD_POLICY", "warn")
    with pytest.warns(guard.GuardWarning, match="loading despite failed checks: acme/tiny-bert"):
        model = transformers.BertModel.from_pretrained(model_dir)
    assert isinstance(model, transformers.BertModel)
