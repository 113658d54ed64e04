"""The FlagEmbedding hook on a tiny real bge-m3 (tests/helpers/bge_m3.py) and the real FlagEmbedding.

Version-agnostic: tests/fe12 runs these same tests against FlagEmbedding 1.2.x.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import pytest

from helpers.requires import need

need("FlagEmbedding")
torch = need("torch")

import modelguard  # noqa: E402
from modelguard import guard  # noqa: E402
from modelguard.errors import MissingHeadError, VerificationError  # noqa: E402
from modelguard.hooks import version_tuple  # noqa: E402
from modelguard.manifest import TensorSpec, save_manifest  # noqa: E402

from helpers.bge_m3 import (  # noqa: E402
    TINY_BGE_M3_ID, lfs_pointer_bytes, load_bge_m3, m3_outputs, tiny_bge_m3_manifest,
)

FE_VERSION = version_tuple(version("FlagEmbedding"))
FE_13_OR_LATER = FE_VERSION[:2] >= (1, 3)
FALLBACK_LOG = "new initialize"  # FlagEmbedding's INFO line when it keeps random heads


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = pytest.mark.usefixtures("installed_guard")


@pytest.fixture
def with_manifest(tiny_bge_m3) -> Path:
    """The tiny bge-m3 with its manifest saved in it (``modelguard.yaml``)."""
    save_manifest(tiny_bge_m3_manifest(tiny_bge_m3), tiny_bge_m3 / "modelguard.yaml")
    return tiny_bge_m3


def refused(path, caplog) -> MissingHeadError:
    """Load ``path``; expect a MissingHeadError raised before FlagEmbedding's random fallback."""
    with caplog.at_level(logging.INFO), pytest.raises(MissingHeadError) as info:
        load_bge_m3(path)
    assert not any(FALLBACK_LOG in r.getMessage() for r in caplog.records), "FlagEmbedding reached its fallback"
    return info.value


def unguarded_outputs(path) -> dict:
    guard.uninstall()
    try:
        return m3_outputs(load_bge_m3(path))
    finally:
        modelguard.install()


# --------------------------------------------------------------------------- complete model


def test_complete_model_loads_and_outputs_are_bit_identical_to_an_unguarded_load(with_manifest):
    expected = unguarded_outputs(with_manifest)
    assert guard.patched_libraries()["FlagEmbedding"] == "modelguard.hooks.flagembedding"
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.GuardWarning)
        model = load_bge_m3(with_manifest)
    assert m3_outputs(model) == expected
    assert any(expected["sparse"])


def test_complete_model_without_manifest_loads_with_a_warning(tiny_bge_m3):
    expected = unguarded_outputs(tiny_bge_m3)
    with pytest.warns(guard.UnknownModelWarning, match="no manifest applies to"):
        model = load_bge_m3(tiny_bge_m3)
    assert m3_outputs(model) == expected


# --------------------------------------------------------------------------- absent heads


@pytest.mark.parametrize("component", ["colbert", "sparse"])
def test_missing_head_is_refused_naming_component_file_and_fix(with_manifest, caplog, component):
    file = f"{component}_linear.pt"
    (with_manifest / file).unlink()
    err = refused(with_manifest, caplog)
    assert isinstance(err, VerificationError) and err.exit_code == 1
    assert err.component == component
    text = str(err)
    assert f"broken head file(s): {component} ({file}: missing)" in text
    assert "would build BOTH the sparse and colbert heads with random weights" in text
    assert err.path == str(with_manifest / file)
    assert f"modelguard fetch {TINY_BGE_M3_ID} --local-dir {with_manifest}" in err.remedy
    assert f'allow_random_init("{component}")' in err.remedy
    assert err.report is not None and err.report.failed_components == (component,)


@pytest.mark.parametrize("component", ["colbert", "sparse"])
def test_missing_head_without_manifest_is_still_refused(tiny_bge_m3, caplog, component):
    file = f"{component}_linear.pt"
    (tiny_bge_m3 / file).unlink()
    with pytest.warns(guard.UnknownModelWarning):
        err = refused(tiny_bge_m3, caplog)
    assert err.component == component
    text = str(err)
    assert f"the {component} head file {file} is missing" in text
    assert "no manifest applies to this model; head files are checked anyway" in text
    assert "expected: a state dict of Linear weights: " + (
        "weight [32, 32], bias [32]" if component == "colbert" else "weight [1, 32], bias [1]") in text
    assert f"modelguard fetch BAAI/bge-m3 --local-dir {tiny_bge_m3}" in err.remedy


def test_both_heads_missing_names_both(tiny_bge_m3, caplog):
    (tiny_bge_m3 / "colbert_linear.pt").unlink()
    (tiny_bge_m3 / "sparse_linear.pt").unlink()
    with pytest.warns(guard.UnknownModelWarning):
        err = refused(tiny_bge_m3, caplog)
    assert "colbert_linear.pt is missing; the sparse head file sparse_linear.pt is missing" in str(err)
    assert 'allow_random_init("colbert", "sparse")' in err.remedy


def test_policy_warn_does_not_let_a_missing_head_through(with_manifest, caplog, monkeypatch):
    monkeypatch.setenv("MODELGUARD_POLICY", "warn")
    (with_manifest / "colbert_linear.pt").unlink()
    with pytest.warns(guard.GuardWarning, match="colbert_linear.pt"):
        err = refused(with_manifest, caplog)
    assert err.component == "colbert"
    assert "the colbert head file colbert_linear.pt is missing" in str(err)


# --------------------------------------------------------------------------- broken heads


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _lfs_stub(path: Path) -> None:
    path.write_bytes(lfs_pointer_bytes(path.read_bytes()))


def _wrong_shape(path: Path) -> None:
    torch.save({k: v.half() for k, v in torch.nn.Linear(32, 16).state_dict().items()}, path)


@pytest.mark.parametrize(
    "breakage, with_manifest_text, without_manifest_text",
    [
        (_truncate, "colbert_linear.pt opened: cannot be loaded by torch.load",
         "cannot be loaded by torch.load"),
        (_lfs_stub, "colbert_linear.pt: lfs_pointer", "is a Git LFS pointer stub"),
        (_wrong_shape, "colbert_linear.pt opened: has the wrong shape: weight [16, 32], bias [16], "
                       "expected weight [32, 32], bias [32]",
         "has the wrong shape: weight [16, 32], bias [16], expected weight [32, 32], bias [32]"),
    ],
    ids=["truncated", "lfs-pointer", "wrong-shape"],
)
@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no-manifest"])
def test_broken_colbert_head_is_refused(tiny_bge_m3, caplog, breakage, with_manifest_text,
                                        without_manifest_text, manifest):
    if manifest:
        save_manifest(tiny_bge_m3_manifest(tiny_bge_m3), tiny_bge_m3 / "modelguard.yaml")
    breakage(tiny_bge_m3 / "colbert_linear.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", guard.UnknownModelWarning)
        err = refused(tiny_bge_m3, caplog)
    assert err.component == "colbert"
    text = str(err)
    assert "colbert_linear.pt" in text
    if manifest:
        assert with_manifest_text in text
        assert "broken head file(s): colbert (colbert_linear.pt: " in text
        fix = "git lfs pull" if breakage is _lfs_stub else f"modelguard fetch {TINY_BGE_M3_ID}"
        assert fix in err.remedy
    else:
        assert without_manifest_text in text
        assert "remove the broken file(s) and load inside" in err.remedy
    if breakage is _lfs_stub:
        assert "Git LFS pointer" in text


def test_wrong_shape_is_caught_by_the_manifest_tensors(tiny_bge_m3, caplog):
    """A manifest whose digests match a swapped head still refuses it by its ``tensors`` shapes."""
    good = tiny_bge_m3_manifest(tiny_bge_m3)
    _wrong_shape(tiny_bge_m3 / "sparse_linear.pt")
    rebuilt = tiny_bge_m3_manifest(tiny_bge_m3)
    files = tuple(replace(e, tensors=good.file(e.path).tensors) if e.path.endswith("_linear.pt") else e
                  for e in rebuilt.files)
    save_manifest(replace(rebuilt, files=files), tiny_bge_m3 / "modelguard.yaml")
    err = refused(tiny_bge_m3, caplog)
    assert err.component == "sparse"
    assert ("has the wrong shape: weight [16, 32], bias [16], expected weight [1, 32], bias [1]") in str(err)


def test_wrong_dtype_is_caught_by_the_manifest_tensors(tiny_bge_m3, caplog):
    path = tiny_bge_m3 / "colbert_linear.pt"
    with warnings.catch_warnings():  # no manifest covers the head yet: the guard's direct-read check says so
        warnings.simplefilter("ignore", guard.UnknownModelWarning)
        state = torch.load(path, weights_only=True)
    torch.save({k: v.float() for k, v in state.items()}, path)
    manifest = tiny_bge_m3_manifest(tiny_bge_m3)  # digests of the float32 file
    files = tuple(
        replace(e, tensors={k: TensorSpec(shape=s.shape, dtype="float16") for k, s in e.tensors.items()})
        if e.path == "colbert_linear.pt" else e for e in manifest.files
    )
    save_manifest(replace(manifest, files=files), tiny_bge_m3 / "modelguard.yaml")
    err = refused(tiny_bge_m3, caplog)
    assert err.component == "colbert"
    assert "is float32, the manifest says float16" in str(err)


def test_same_size_corruption_is_a_digest_mismatch(with_manifest, caplog):
    path = with_manifest / "sparse_linear.pt"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    err = refused(with_manifest, caplog)
    assert err.component == "sparse"
    assert "sparse_linear.pt: digest_mismatch" in str(err)


# --------------------------------------------------------------------------- opt-out


def test_allow_random_init_colbert_loads_and_keeps_the_sparse_head_from_its_file(with_manifest):
    expected = unguarded_outputs(with_manifest)
    (with_manifest / "colbert_linear.pt").unlink()
    torch.manual_seed(1)
    with modelguard.allow_random_init("colbert"):
        first = m3_outputs(load_bge_m3(with_manifest))
    torch.manual_seed(2)
    with modelguard.allow_random_init("colbert"):
        second = m3_outputs(load_bge_m3(with_manifest))
    # Only the allowed head is new: sparse comes from sparse_linear.pt (FlagEmbedding alone
    # would have randomized it too), dense from the backbone.
    assert first["sparse"] == second["sparse"] == expected["sparse"]
    assert first["dense"] == expected["dense"]
    assert first["colbert"] != second["colbert"]


def test_allowing_the_other_head_does_not_help(with_manifest, caplog):
    (with_manifest / "colbert_linear.pt").unlink()
    with modelguard.allow_random_init("sparse"):
        err = refused(with_manifest, caplog)
    assert err.component == "colbert"


def test_allow_random_init_from_the_environment(tiny_bge_m3, monkeypatch):
    (tiny_bge_m3 / "colbert_linear.pt").unlink()
    (tiny_bge_m3 / "sparse_linear.pt").unlink()
    monkeypatch.setenv("MODELGUARD_ALLOW_RANDOM_INIT", "colbert,sparse")
    with pytest.warns(guard.UnknownModelWarning):
        model = load_bge_m3(tiny_bge_m3)
    assert m3_outputs(model)["colbert"]


def test_allowed_head_that_is_present_but_broken_is_still_refused(tiny_bge_m3, caplog):
    _truncate(tiny_bge_m3 / "colbert_linear.pt")
    with modelguard.allow_random_init("colbert"), pytest.warns(guard.UnknownModelWarning):
        err = refused(tiny_bge_m3, caplog)
    assert "cannot be loaded by torch.load" in str(err)


# --------------------------------------------------------------------------- hook lifecycle and paths


def test_uninstall_restores_the_original_loaders():
    from modelguard.hooks import is_wrapped

    if FE_13_OR_LATER:
        from FlagEmbedding.finetune.embedder.encoder_only.m3.runner import EncoderOnlyEmbedderM3Runner as owner
        from FlagEmbedding.inference.embedder.encoder_only.m3 import M3Embedder

        names = [(owner, "get_model"), (M3Embedder, "__init__")]
    else:
        from FlagEmbedding.BGE_M3.modeling import BGEM3Model

        names = [(BGEM3Model, "load_model")]
    assert all(is_wrapped(vars(cls)[name]) for cls, name in names)
    guard.uninstall()
    assert not any(is_wrapped(vars(cls)[name]) for cls, name in names)
    modelguard.install()
    assert all(is_wrapped(vars(cls)[name]) for cls, name in names)


@pytest.mark.skipif(not FE_13_OR_LATER, reason="EncoderOnlyEmbedderM3Runner exists from FlagEmbedding 1.3")
def test_fine_tuning_runner_get_model_is_guarded(with_manifest, caplog):
    from FlagEmbedding.finetune.embedder.encoder_only.m3.runner import EncoderOnlyEmbedderM3Runner

    parts = EncoderOnlyEmbedderM3Runner.get_model(str(with_manifest))
    assert torch.equal(parts["sparse_linear"].weight.detach(),
                       torch.load(with_manifest / "sparse_linear.pt", weights_only=True)["weight"].float())
    (with_manifest / "sparse_linear.pt").unlink()
    with caplog.at_level(logging.INFO), pytest.raises(MissingHeadError, match="sparse_linear.pt: missing"):
        EncoderOnlyEmbedderM3Runner.get_model(str(with_manifest))
    assert not any(FALLBACK_LOG in r.getMessage() for r in caplog.records)
    with modelguard.allow_random_init("colbert", "sparse"):
        parts = EncoderOnlyEmbedderM3Runner.get_model(str(with_manifest))
    assert parts["sparse_linear"].weight.shape == (1, 32)


@pytest.mark.skipif(not FE_13_OR_LATER, reason="FlagAutoModel exists from FlagEmbedding 1.3")
def test_flag_auto_model_is_guarded(tiny_bge_m3, caplog):
    from FlagEmbedding import FlagAutoModel

    (tiny_bge_m3 / "colbert_linear.pt").unlink()
    with pytest.warns(guard.UnknownModelWarning), pytest.raises(MissingHeadError) as info:
        FlagAutoModel.from_finetuned(str(tiny_bge_m3), model_class="encoder-only-m3", use_fp16=False,
                                     devices="cpu")
    assert info.value.component == "colbert"


def cached_snapshot(template: Path, commit: str, tmp_path: Path, monkeypatch) -> Path:
    """The tiny bge-m3 as a Hugging Face cache snapshot at ``commit`` (refs/main), its
    manifest on $MODELGUARD_MANIFEST_PATH, downloads off."""
    import shutil

    from modelguard.hfcache import hf_cache_dir, repo_folder_name

    repo = hf_cache_dir() / repo_folder_name(TINY_BGE_M3_ID)
    snapshot = Path(shutil.copytree(template, repo / "snapshots" / commit))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    manifests = tmp_path / "manifests"
    save_manifest(tiny_bge_m3_manifest(snapshot, revision=commit), manifests / f"{TINY_BGE_M3_ID}.yaml")
    monkeypatch.setenv("MODELGUARD_MANIFEST_PATH", str(manifests))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_hub_id_loads_the_verified_snapshot_from_the_cache(tiny_bge_m3_template, tmp_path, monkeypatch, caplog):
    """By Hub id, offline: the pinned snapshot in the HF cache is verified and loaded."""
    import os

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = cached_snapshot(tiny_bge_m3_template, commit, tmp_path, monkeypatch)

    expected = unguarded_outputs(snapshot)
    assert m3_outputs(load_bge_m3(TINY_BGE_M3_ID)) == expected

    os.unlink(snapshot / "colbert_linear.pt")
    err = refused(TINY_BGE_M3_ID, caplog)
    assert err.component == "colbert"
    assert f"modelguard fetch {TINY_BGE_M3_ID} --revision {commit}" in err.remedy


def test_import_modelguard_auto_before_flagembedding_guards_it(tiny_bge_m3):
    """A fresh interpreter: ``import modelguard.auto`` first imports neither torch nor
    FlagEmbedding; FlagEmbedding imported afterwards is patched and refuses a missing head."""
    import subprocess
    import sys

    (tiny_bge_m3 / "colbert_linear.pt").unlink()
    code = (
        "import sys, warnings\n"
        "import modelguard.auto\n"
        "assert 'torch' not in sys.modules and 'FlagEmbedding' not in sys.modules, 'imported too early'\n"
        "from modelguard import guard\n"
        "from modelguard.errors import MissingHeadError\n"
        "from helpers.bge_m3 import load_bge_m3\n"
        "warnings.simplefilter('ignore')\n"
        "try:\n"
        "    load_bge_m3(sys.argv[1])\n"
        "except MissingHeadError as exc:\n"
        "    print('refused:', exc.component)\n"
        "print('patched:', guard.patched_libraries().get('FlagEmbedding'))\n"
    )
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, "-c", code, str(tiny_bge_m3)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "patched: modelguard.hooks.flagembedding" in done.stdout
    assert "refused: colbert" in done.stdout


def test_a_directory_that_does_not_exist_is_a_usage_error(tmp_path):
    from modelguard.errors import UsageError

    missing = tmp_path / "no-such-model"
    with pytest.raises(UsageError) as info:
        load_bge_m3(missing)
    assert f"model directory {missing} does not exist" in str(info.value)
    assert info.value.exit_code == 2
    assert not missing.exists()


def test_the_caller_sees_the_name_it_passed(tiny_bge_m3_template, tmp_path, monkeypatch):
    if not FE_13_OR_LATER:
        pytest.skip("model_name_or_path is an attribute of the 1.3+ embedders")
    cached_snapshot(tiny_bge_m3_template, "89abcdef0123456789abcdef0123456789abcdef", tmp_path, monkeypatch)
    assert load_bge_m3(TINY_BGE_M3_ID).model_name_or_path == TINY_BGE_M3_ID
