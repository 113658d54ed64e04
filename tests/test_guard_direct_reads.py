"""Direct reads of weight files (torch.load, safetensors, onnxruntime) are verified first."""

from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

import pytest

from helpers.requires import need

import modelguard
from modelguard import guard
from modelguard.errors import ManifestNotFoundError, VerificationError

from _tiny_loaders import DAMAGE, flip_byte, save_direct_files

torch = need("torch")
np = need("numpy")
safetensors = need("safetensors")
safetensors_torch = need("safetensors.torch")
safetensors_numpy = need("safetensors.numpy")
onnx = need("onnx")
ort = need("onnxruntime")

X = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)


def _safe_open(path):
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def _session(path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"Y": torch.from_numpy(session.run(None, {"X": X})[0])}


def _numpy(path):
    return {key: torch.from_numpy(value) for key, value in safetensors_numpy.load_file(str(path)).items()}


# label in messages, file passed to the loader, file damaged, loader
LOADERS = {
    "torch.load": ("weights.pt", "weights.pt", lambda p: torch.load(p, weights_only=True)),
    "safetensors.torch.load_file": ("weights.safetensors", "weights.safetensors",
                                    lambda p: safetensors_torch.load_file(str(p))),
    "safetensors.safe_open": ("weights.safetensors", "weights.safetensors", _safe_open),
    "safetensors.numpy.load_file": ("weights.safetensors", "weights.safetensors", _numpy),
    "onnxruntime.InferenceSession": ("model.onnx", "model.onnx_data", _session),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return save_direct_files(tmp_path_factory.mktemp("direct") / "files")


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = [pytest.mark.guard(unknown="refuse"), pytest.mark.usefixtures("installed_guard")]


@pytest.fixture
def model_dir(pristine, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(pristine, d)
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/direct"), d / "modelguard.yaml")
    return d


@pytest.fixture
def verified_paths(monkeypatch):
    """Every (file, cached) the verifier checks, in order."""
    import importlib

    verify_module = importlib.import_module("modelguard.engine")

    seen: list[tuple[str, bool]] = []
    real = verify_module.verify_directory

    def spy(manifest, directory=None, **kwargs):
        report = real(manifest, directory, **kwargs)
        seen.extend((r.path, r.cached) for r in report.files)
        return report

    monkeypatch.setattr(verify_module, "verify_directory", spy)
    return seen


@pytest.mark.parametrize("label", LOADERS)
def test_intact_files_load_bit_identical_to_an_unguarded_load(label, model_dir):
    name, _, load = LOADERS[label]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guarded = load(model_dir / name)
    guard.uninstall()
    plain = load(model_dir / name)
    assert guarded.keys() == plain.keys()
    for key in plain:
        assert torch.equal(guarded[key], plain[key]), key


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("label", LOADERS)
def test_damaged_file_is_refused_before_the_library_reads_it(label, damage, model_dir):
    name, damaged, load = LOADERS[label]
    spoil, diagnosis = DAMAGE[damage]
    spoil(model_dir / damaged)
    with pytest.raises(VerificationError) as info:
        load(model_dir / name)
    text = str(info.value)
    assert f"modelguard refused to load acme/direct ({label}) from {model_dir}" in text
    assert f"FAIL {damaged} [" in text
    assert diagnosis in text
    assert "fix:" in text


def test_warn_policy_loads_a_damaged_file_with_a_warning(model_dir, monkeypatch):
    flip_byte(model_dir / "weights.safetensors")
    monkeypatch.setenv("MODELGUARD_POLICY", "warn")
    with pytest.warns(guard.GuardWarning, match=r"loading despite failed checks: acme/direct \(safetensors.torch.load_file\)"):
        tensors = safetensors_torch.load_file(str(model_dir / "weights.safetensors"))
    assert set(tensors) == {"layer.weight", "layer.bias"}


def test_a_manifest_in_a_parent_folder_covers_the_files_below_it(pristine, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(pristine, root / "onnx")
    modelguard.save_manifest(modelguard.build_manifest(root, "acme/bundle"), root / "modelguard.yaml")
    assert _session(root / "onnx" / "model.onnx")["Y"].shape == (2, 4)
    flip_byte(root / "onnx" / "model.onnx_data")
    with pytest.raises(VerificationError, match=r"FAIL onnx/model.onnx_data \[onnx\]: right size, wrong content"):
        _session(root / "onnx" / "model.onnx")


def test_an_uncovered_file_follows_the_unknown_model_policy(pristine, tmp_path, monkeypatch):
    d = tmp_path / "loose"
    shutil.copytree(pristine, d)
    with pytest.raises(ManifestNotFoundError) as info:
        torch.load(d / "weights.pt", weights_only=True)
    text = str(info.value)
    assert f"no manifest applies to {d / 'weights.pt'} (loaded by torch.load)" in text
    assert f"modelguard build {d} --model ORG/NAME" in text

    modelguard.install(unknown="warn")
    with pytest.warns(guard.UnknownModelWarning) as caught:
        _session(d / "model.onnx")
    # one report for the model and its external data file
    assert [str(w.message).splitlines()[0] for w in caught] == [
        f"modelguard: no manifest applies to {d / 'model.onnx'} (loaded by onnxruntime.InferenceSession), "
        "so its files are not verified; random initialization is still refused"]
    modelguard.install(unknown="allow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        safetensors_torch.load_file(str(d / "weights.safetensors"))


def test_a_file_the_manifest_does_not_list_is_not_covered(model_dir):
    torch.save({"step": torch.tensor(3)}, model_dir / "optimizer.pt")
    with pytest.raises(ManifestNotFoundError, match="optimizer.pt"):
        torch.load(model_dir / "optimizer.pt", weights_only=True)


def test_a_missing_uncovered_file_is_left_to_the_library(tmp_path):
    with pytest.raises(FileNotFoundError):
        torch.load(tmp_path / "nothing.pt", weights_only=True)


def test_each_file_is_checked_once_per_load_and_costs_no_read_when_warm(model_dir, verified_paths):
    import time

    time.sleep(2.1)  # the digest cache does not store files younger than its racy window (2 s)
    safetensors_torch.load_file(str(model_dir / "weights.safetensors"))  # load_file opens it with safe_open
    assert verified_paths == [("weights.safetensors", False)]
    verified_paths.clear()
    safetensors_torch.load_file(str(model_dir / "weights.safetensors"))
    assert verified_paths == [("weights.safetensors", True)]  # digest cache: a stat, no read

    verified_paths.clear()
    safetensors_torch.load_file(str(model_dir / "weights.safetensors"))
    assert verified_paths == []  # the digest cache vouched for it in this process: not even a lookup

    verified_paths.clear()
    _session(model_dir / "model.onnx")
    assert sorted(path for path, _ in verified_paths) == ["model.onnx", "model.onnx_data"]


def test_a_file_changed_after_a_warm_read_is_verified_again(model_dir, verified_paths, monkeypatch):
    import time

    time.sleep(2.1)  # past the digest cache's racy window
    for _ in range(3):
        safetensors_torch.load_file(str(model_dir / "weights.safetensors"))
    assert verified_paths == [("weights.safetensors", False), ("weights.safetensors", True)]
    st = (model_dir / "weights.safetensors").stat()
    flip_byte(model_dir / "weights.safetensors")
    os.utime(model_dir / "weights.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime
    with pytest.raises(VerificationError, match="right size, wrong content"):
        safetensors_torch.load_file(str(model_dir / "weights.safetensors"))


def test_rehash_verifies_every_read_in_full(model_dir, verified_paths):
    import time

    time.sleep(2.1)
    modelguard.install(rehash=True)
    for _ in range(3):
        safetensors_torch.load_file(str(model_dir / "weights.safetensors"))
    assert verified_paths == [("weights.safetensors", False)] * 3


def test_files_a_guarded_from_pretrained_verified_are_not_checked_again(tmp_path, verified_paths):
    need("transformers")
    from helpers.tiny_bert import save_tiny_bert

    import transformers

    d = save_tiny_bert(tmp_path / "bert", "BertModel")
    modelguard.save_manifest(modelguard.build_manifest(d, "acme/tiny-bert"), d / "modelguard.yaml")
    transformers.BertModel.from_pretrained(d)
    assert sorted(path for path, _ in verified_paths) == ["config.json", "model.safetensors"]


def test_external_data_files_are_listed_from_the_graph(model_dir):
    from modelguard.hooks.onnxruntime import external_data_files

    assert external_data_files(str(model_dir / "model.onnx")) == [str(model_dir / "model.onnx_data")]
    (model_dir / "broken.onnx").write_bytes(b"\xff" * 16)
    assert external_data_files(str(model_dir / "broken.onnx")) == []


def test_an_open_file_is_checked_like_its_path(model_dir):
    with open(model_dir / "weights.pt", "rb") as f:
        guarded = torch.load(f, weights_only=True)
    assert torch.equal(guarded["layer.weight"], torch.load(model_dir / "weights.pt", weights_only=True)["layer.weight"])
    flip_byte(model_dir / "weights.pt")
    with open(model_dir / "weights.pt", "rb") as f, pytest.raises(VerificationError) as info:
        torch.load(f, weights_only=True)
    text = str(info.value)
    assert f"modelguard refused to load acme/direct (torch.load) from {model_dir}" in text
    assert "FAIL weights.pt [" in text and "right size, wrong content" in text


def test_an_open_file_whose_path_now_names_another_file_is_not_matched_to_it(model_dir, tmp_path):
    # The path was replaced after opening: the manifest's verdict on the path says nothing about these bytes.
    with open(model_dir / "weights.pt", "rb") as f:
        os.replace(model_dir / "weights.safetensors", model_dir / "weights.pt")
        with pytest.raises(ManifestNotFoundError) as info:
            torch.load(f, weights_only=True)
    assert "torch.load was given a _io.BufferedReader object, not an open file at a known path" in str(info.value)


IN_MEMORY = {
    "torch.load": (lambda data: torch.load(io.BytesIO(data["weights.pt"]), weights_only=True),
                   "a _io.BytesIO object, not an open file at a known path"),
    "safetensors.torch.load": (lambda data: safetensors_torch.load(data["weights.safetensors"]), "bytes in memory"),
    "safetensors.numpy.load": (lambda data: safetensors_numpy.load(data["weights.safetensors"]), "bytes in memory"),
    "onnxruntime.InferenceSession": (
        lambda data: ort.InferenceSession(data["plain.onnx"], providers=["CPUExecutionProvider"]), "bytes in memory"),
}


@pytest.fixture
def in_memory(model_dir):
    import onnx

    model = onnx.load(str(model_dir / "model.onnx"))  # external data loaded into the graph
    return {"weights.pt": (model_dir / "weights.pt").read_bytes(),
            "weights.safetensors": (model_dir / "weights.safetensors").read_bytes(),
            "plain.onnx": model.SerializeToString()}


@pytest.mark.parametrize("label", IN_MEMORY)
def test_in_memory_data_is_refused_under_the_refuse_policy(label, in_memory):
    load, what = IN_MEMORY[label]
    with pytest.raises(ManifestNotFoundError) as info:
        load(in_memory)
    text = str(info.value)
    assert f"modelguard: {label} was given " in text and what in text
    assert "not a file, so no manifest can cover it, and the unknown-model policy 'refuse' forbids" in text
    assert "MODELGUARD_UNKNOWN=warn" in text


@pytest.mark.parametrize("label", IN_MEMORY)
def test_in_memory_data_loads_unverified_with_one_debug_note_under_warn(label, in_memory, caplog, monkeypatch):
    from modelguard.hooks import files

    monkeypatch.setattr(files, "_noted_in_memory", set())
    modelguard.install(unknown="warn")
    load, what = IN_MEMORY[label]
    with warnings.catch_warnings(), caplog.at_level("DEBUG", logger="modelguard"):
        warnings.simplefilter("error", guard.GuardWarning)
        load(in_memory)
        load(in_memory)
    notes = [r.getMessage() for r in caplog.records if "in-memory data has no path" in r.getMessage()]
    assert len(notes) == 1 and notes[0].startswith(f"{label} read ") and what in notes[0]


def test_a_file_in_a_hugging_face_cache_snapshot_is_checked_against_the_models_manifest(pristine, tmp_path,
                                                                                        isolated_env):
    commit = "c0ffee" + "0" * 34
    snapshot = isolated_env / "hf" / "hub" / "models--acme--snap" / "snapshots" / commit
    shutil.copytree(pristine, snapshot / "onnx")
    manifests = tmp_path / "manifests"
    manifest = modelguard.build_manifest(snapshot, "acme/snap", revision=commit)
    modelguard.save_manifest(manifest, manifests / "acme" / "snap.yaml")
    modelguard.install(manifest_dirs=[manifests])
    tensors = safetensors_torch.load_file(str(snapshot / "onnx" / "weights.safetensors"))
    assert set(tensors) == {"layer.weight", "layer.bias"}
    flip_byte(snapshot / "onnx" / "weights.safetensors")
    with pytest.raises(VerificationError) as info:
        safetensors_torch.load_file(str(snapshot / "onnx" / "weights.safetensors"))
    text = str(info.value)
    assert "modelguard refused to load acme/snap (safetensors.torch.load_file)" in text
    assert "manifest: Hugging Face cache snapshot" in text
    assert "FAIL onnx/weights.safetensors [" in text
