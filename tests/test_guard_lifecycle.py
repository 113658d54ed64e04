"""The guard's life cycle, configuration, manifest resolution, policies and the random-init opt-out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import modelguard
from modelguard import guard
from modelguard.errors import (
    DownloadError, ManifestNotFoundError, ModelGuardError, OfflineError, UsageError, VerificationError,
)
from modelguard.hooks import HOOKS, is_wrapped, version_tuple

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


# Every test starts and ends with the guard uninstalled (conftest.installed_guard).
pytestmark = [pytest.mark.guard(installed=False), pytest.mark.usefixtures("installed_guard")]


def run_python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


# --------------------------------------------------------------------------- install / uninstall


def test_import_auto_installs_and_imports_no_heavy_library():
    proc = run_python(
        "import sys, json, modelguard.auto\n"
        "from modelguard import guard\n"
        "heavy = ['torch', 'transformers', 'FlagEmbedding', 'sentence_transformers', 'huggingface_hub']\n"
        "print(json.dumps({'installed': guard.is_installed(), 'patched': guard.patched_libraries(),\n"
        "                  'imported': [m for m in heavy if m in sys.modules]}))\n"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"installed": True, "patched": {}, "imported": []}


def test_install_before_import_patches_when_the_program_imports_the_library():
    proc = run_python(
        "import sys, json, modelguard\n"
        "modelguard.install()\n"
        "before = 'transformers.modeling_utils' in sys.modules\n"
        "import transformers.modeling_utils as mu\n"
        "from modelguard.hooks import is_wrapped\n"
        "from modelguard.guard import _LoaderProxy\n"
        "print(json.dumps({'before': before, 'wrapped': is_wrapped(mu.PreTrainedModel.__dict__['from_pretrained']),\n"
        "  'spec_loader_is_real': not isinstance(mu.__spec__.loader, _LoaderProxy),\n"
        "  'loader_is_real': not isinstance(mu.__loader__, _LoaderProxy),\n"
        "  'patched': sorted(__import__('modelguard.guard').guard.patched_libraries())}))\n"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # also patched by then (which, depends on the transformers version): torch (torch.load inside
    # guarded loaders), transformers.dynamic_module_utils (remote code)
    assert "transformers.modeling_utils" in result.pop("patched")
    assert result == {"before": False, "wrapped": True, "spec_loader_is_real": True, "loader_is_real": True}


def test_importing_transformers_alone_does_not_pull_in_torch_through_the_guard():
    code = ("import sys, modelguard\n{install}\nimport transformers\n"
            "print('torch' in sys.modules, 'transformers.modeling_utils' in sys.modules)\n")
    guarded = run_python(code.format(install="modelguard.install()"))
    plain = run_python(code.format(install=""))
    assert guarded.returncode == 0 and plain.returncode == 0, guarded.stderr + plain.stderr
    assert guarded.stdout == plain.stdout  # whatever transformers itself imports, the guard adds nothing
    assert guarded.stdout.split()[1] == "False"


def test_install_after_import_patches_at_once_and_uninstall_restores_the_originals():
    import transformers.modeling_utils as mu

    original = mu.PreTrainedModel.__dict__["from_pretrained"]
    assert not is_wrapped(original)
    modelguard.install()
    wrapped = mu.PreTrainedModel.__dict__["from_pretrained"]
    assert is_wrapped(wrapped)
    assert wrapped.__func__.__wrapped__ is original.__func__
    assert guard.is_installed()
    assert "transformers.modeling_utils" in guard.patched_libraries()

    modelguard.uninstall()
    assert mu.PreTrainedModel.__dict__["from_pretrained"] is original
    assert not guard.is_installed()
    assert guard.patched_libraries() == {}
    assert not any(isinstance(f, guard._PostImportFinder) for f in sys.meta_path)


def test_sentence_transformers_constructor_is_restored_exactly():
    import sentence_transformers

    if version_tuple(sentence_transformers.__version__) >= (6,):
        from sentence_transformers.base.model import BaseModel as owner
    else:
        owner = sentence_transformers.SentenceTransformer
    assert "__init__" in owner.__dict__
    original = owner.__dict__["__init__"]
    modelguard.install()
    assert is_wrapped(owner.__dict__["__init__"])
    modelguard.uninstall()
    assert owner.__dict__["__init__"] is original


def test_double_install_is_a_no_op_and_uninstall_is_idempotent():
    import transformers.modeling_utils as mu

    modelguard.install()
    first = mu.PreTrainedModel.__dict__["from_pretrained"]
    modelguard.install()
    modelguard.install("warn")
    assert mu.PreTrainedModel.__dict__["from_pretrained"] is first
    assert sum(isinstance(f, guard._PostImportFinder) for f in sys.meta_path) == 1
    assert guard.current_policy().effective_on_failure() == "warn"
    modelguard.uninstall()
    modelguard.uninstall()
    assert not is_wrapped(mu.PreTrainedModel.__dict__["from_pretrained"])


@pytest.mark.parametrize("version, expected", [
    ("4.39.3", False), ("4.40.0", True), ("4.57.1", True), ("4.40.0.dev0", True), ("5.23.0", True),
    ("3.4.1", False), ("5.0.0rc1", True),
])
def test_transformers_hook_version_check(version, expected):
    from modelguard.hooks import transformers as hook

    assert hook.supported(version) is expected


@pytest.mark.parametrize("version, expected", [
    ("2.7.0", False), ("3.0.0", True), ("3.4.1", True), ("5.1.2", True), ("6.2.0", True),
])
def test_sentence_transformers_hook_version_check(version, expected):
    from modelguard.hooks import sentence_transformers as hook

    assert hook.supported(version) is expected


def test_installed_library_versions_are_supported():
    from importlib import metadata

    from modelguard.hooks import sentence_transformers, transformers

    assert transformers.supported(metadata.version("transformers"))
    assert sentence_transformers.supported(metadata.version("sentence-transformers"))
    assert version_tuple("4.40.0.dev0") == (4, 40, 0)
    assert version_tuple("5.0.0rc1") == (5, 0, 0)


def test_hook_table_names_real_modules():
    import importlib

    for import_name, module_name in HOOKS.items():
        hook = importlib.import_module(module_name)
        for name in ("supported", "patch", "unpatch"):
            assert callable(getattr(hook, name)), f"{module_name} lacks {name}()"


# --------------------------------------------------------------------------- configuration


def test_bad_policy_in_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MODELGUARD_POLICY", "lenient")
    with pytest.raises(UsageError) as info:
        guard.current_policy().effective_on_failure()
    text = str(info.value)
    assert "$MODELGUARD_POLICY='lenient' is not a valid setting" in text
    assert "refuse, repair, warn" in text


def test_bad_policy_argument_is_refused():
    with pytest.raises(UsageError, match="policy 'ignore' is not valid"):
        modelguard.install("ignore")
    with pytest.raises(UsageError, match="unknown-model policy 'skip' is not valid"):
        modelguard.install(unknown="skip")
    assert not guard.is_installed()


def test_arguments_win_over_environment(monkeypatch):
    monkeypatch.setenv("MODELGUARD_POLICY", "warn")
    monkeypatch.setenv("MODELGUARD_UNKNOWN", "refuse")
    modelguard.install()
    assert guard.current_policy().effective_on_failure() == "warn"
    assert guard.current_policy().effective_unknown() == "refuse"
    modelguard.uninstall()
    modelguard.install("repair", unknown="allow", offline=True)
    policy = guard.current_policy()
    assert (policy.effective_on_failure(), policy.effective_unknown(), policy.effective_offline()) == \
        ("repair", "allow", True)


# --------------------------------------------------------------------------- allow_random_init


def test_allow_random_init_is_narrow_nested_and_scoped():
    assert not guard.random_init_allowed("colbert")
    assert not guard.random_init_allowed(key="classifier.weight")
    with modelguard.allow_random_init("colbert"):
        assert guard.random_init_allowed("colbert")
        assert not guard.random_init_allowed("sparse")
        with modelguard.allow_random_init(keys=["classifier.*", "score.weight"]):
            assert guard.random_init_allowed("colbert")
            assert guard.random_init_allowed(key="classifier.bias")
            assert guard.random_init_allowed(key="score.weight")
            assert not guard.random_init_allowed(key="score.bias")
        assert not guard.random_init_allowed(key="classifier.bias")
    assert not guard.random_init_allowed("colbert")


def test_allow_random_init_works_as_a_decorator():
    @modelguard.allow_random_init("colbert", keys="classifier.*")
    def build():
        return guard.random_init_allowed("colbert"), guard.random_init_allowed(key="classifier.weight")

    assert build() == (True, True)
    assert build() == (True, True)  # reusable
    assert not guard.random_init_allowed("colbert")


def test_allow_random_init_needs_a_name():
    with pytest.raises(UsageError) as info:
        with modelguard.allow_random_init():
            pass
    assert "needs at least one component or key pattern" in str(info.value)
    with pytest.raises(UsageError, match="non-empty strings"):
        with modelguard.allow_random_init(""):
            pass


def test_allow_random_init_from_environment(monkeypatch):
    monkeypatch.setenv("MODELGUARD_ALLOW_RANDOM_INIT", "colbert, sparse ,keys=classifier.*")
    assert guard.random_init_allowed("colbert") and guard.random_init_allowed("sparse")
    assert guard.random_init_allowed(key="classifier.weight")
    assert not guard.random_init_allowed("dense")
    assert not guard.random_init_allowed(key="pooler.dense.weight")


def test_refuse_random_init_message_names_keys_and_the_opt_out():
    from modelguard.errors import RandomInitError

    with pytest.raises(RandomInitError) as info:
        guard.refuse_random_init({"classifier.weight", "classifier.bias"}, model="m", loader="test")
    err = info.value
    assert err.keys == ("classifier.bias", "classifier.weight")
    assert err.exit_code == 1
    text = str(err)
    assert "2 weight(s) were not in the checkpoint and would be randomly initialized" in text
    assert "allow_random_init(keys='classifier.*')" in text
    assert "MODELGUARD_ALLOW_RANDOM_INIT=keys=classifier.*" in text
    with modelguard.allow_random_init(keys="classifier.*"):
        guard.refuse_random_init({"classifier.weight"}, model="m", loader="test")


# --------------------------------------------------------------------------- which manifest applies


def _tiny_model_dir(root: Path) -> Path:
    import numpy as np
    from safetensors.numpy import save

    from helpers.st_model import write_st_shaped_model

    # real safetensors bytes: the guard checks the header before any load
    return write_st_shaped_model(root / "tiny", weights=save({"w": np.arange(4096, dtype=np.float32)}),
                                 config='{"model_type": "bert"}\n', tokenizer='{"version": "1.0"}\n')


def _save_manifest(directory: Path, model: str, target: Path, revision: str | None = None) -> None:
    manifest = modelguard.build_manifest(directory, model, revision)
    modelguard.save_manifest(manifest, target)


def test_resolve_hub_id_with_shipped_manifest_not_in_cache():
    resolved = guard.resolve_model("BAAI/bge-m3")
    assert resolved.how == "hub-id"
    assert resolved.model_id == "BAAI/bge-m3"
    assert resolved.revision == "5617a9f61b028005a4858fdac845db406aefb181"
    assert resolved.directory is None
    assert resolved.manifest.source.endswith("bge-m3.yaml")


def test_resolve_hf_cache_snapshot_path(isolated_env):
    snap = Path(os.environ["HF_HUB_CACHE"]) / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / COMMIT
    (snap / "1_Pooling").mkdir(parents=True)
    for via in (snap, snap / "1_Pooling"):
        resolved = guard.resolve_model(via)
        assert (resolved.how, resolved.model_id, resolved.revision) == ("hf-cache-snapshot", MINILM, COMMIT)
        assert resolved.directory == snap
        assert resolved.manifest.model == MINILM


def test_resolve_local_manifest_mapping_identification_and_unknown(tmp_path, isolated_env):
    d = _tiny_model_dir(tmp_path)
    unknown = guard.resolve_model(d)
    assert (unknown.how, unknown.manifest) == ("unknown", None)

    # identification by names and sizes against a manifest on the search path
    mdir = tmp_path / "manifests"
    _save_manifest(d, "acme/tiny", mdir / "acme" / "tiny.yaml")
    guard.install(manifest_dirs=[mdir])
    identified = guard.resolve_model(d)
    assert (identified.how, identified.model_id) == ("identified", "acme/tiny")

    # a user mapping, in Python and in the config file
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.bin").write_bytes(b"x")
    guard.map_directory(other, "acme/tiny")
    assert guard.resolve_model(other).how == "user-mapping"
    guard._directory_map.clear()
    mapping = guard.directory_map_file()
    mapping.parent.mkdir(parents=True, exist_ok=True)
    mapping.write_text(f"{other}: acme/tiny\n")
    mapped = guard.resolve_model(other)
    assert (mapped.how, mapped.model_id, mapped.directory) == ("user-mapping", "acme/tiny", other)

    # a manifest saved in the directory wins over everything else
    _save_manifest(d, "acme/tiny-local", d / "modelguard.yaml")
    local = guard.resolve_model(d)
    assert (local.how, local.model_id) == ("local-manifest", "acme/tiny-local")


def test_user_mapping_to_a_model_without_manifest_says_so(tmp_path, isolated_env):
    d = _tiny_model_dir(tmp_path)
    guard.map_directory(d, "acme/nothing")
    try:
        with pytest.raises(ManifestNotFoundError) as info:
            guard.resolve_model(d)
    finally:
        guard._directory_map.clear()
    assert "no manifest known for acme/nothing" in str(info.value)


def test_broken_mapping_file_is_a_clear_error(tmp_path, isolated_env):
    d = _tiny_model_dir(tmp_path)
    mapping = guard.directory_map_file()
    mapping.parent.mkdir(parents=True, exist_ok=True)
    mapping.write_text("- just\n- a list\n")
    with pytest.raises(UsageError) as info:
        guard.resolve_model(d)
    assert f"directory mapping {mapping} is not a mapping" in str(info.value)


# --------------------------------------------------------------------------- policies


@pytest.fixture
def guarded_tiny(tmp_path):
    d = _tiny_model_dir(tmp_path)
    _save_manifest(d, "acme/tiny", d / "modelguard.yaml")
    return d


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


def test_check_before_load_passes_a_good_model(guarded_tiny):
    modelguard.install()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = guard.check_before_load(guarded_tiny)
    assert (resolved.how, resolved.model_id) == ("local-manifest", "acme/tiny")


def test_refuse_policy_raises_with_file_diagnosis_and_fix(guarded_tiny):
    _corrupt(guarded_tiny / "model.safetensors")
    modelguard.install()
    with pytest.raises(VerificationError) as info:
        guard.check_before_load(guarded_tiny, loader="test loader")
    err = info.value
    text = str(err)
    assert f"modelguard refused to load acme/tiny (test loader) from {guarded_tiny}" in text
    assert "model.safetensors [model]: right size, wrong content" in text
    assert "modelguard.yaml in the model directory" in text
    assert "fix:" in text and "MODELGUARD_POLICY=repair" in text
    assert err.report.failed_components == ("model",)
    assert [r.path for r in err.report.failures] == ["model.safetensors"]


def test_components_limit_the_check(guarded_tiny):
    _corrupt(guarded_tiny / "model.safetensors")
    modelguard.install()
    guard.check_before_load(guarded_tiny, components=["tokenizer", "sentence_transformers"])
    guard.check_before_load(guarded_tiny, components=["no-such-component"])
    with pytest.raises(VerificationError, match="model.safetensors"):
        guard.check_before_load(guarded_tiny, components=["model"])


def test_warn_policy_warns_and_goes_on(guarded_tiny, monkeypatch):
    (guarded_tiny / "tokenizer.json").write_text("")
    monkeypatch.setenv("MODELGUARD_POLICY", "warn")
    modelguard.install()
    with pytest.warns(guard.GuardWarning) as record:
        resolved = guard.check_before_load(guarded_tiny)
    assert resolved.model_id == "acme/tiny"
    text = str(record[0].message)
    assert "loading despite failed checks: acme/tiny" in text
    assert "tokenizer.json [tokenizer]: is empty (0 bytes)" in text


def test_repair_policy_goes_through_the_hub_and_reports_its_failure(guarded_tiny):
    # The Hub is a closed port here: repair is attempted and fails loudly; the
    # download path itself is tested with the Hub test server.
    _corrupt(guarded_tiny / "model.safetensors")
    modelguard.install("repair")
    with pytest.raises(DownloadError) as info:
        guard.check_before_load(guarded_tiny)
    assert "127.0.0.1:9" in str(info.value)
    assert (guarded_tiny / "model.safetensors").exists()


def test_repair_policy_offline_refuses_without_downloading(guarded_tiny, monkeypatch):
    _corrupt(guarded_tiny / "model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    modelguard.install("repair")
    with pytest.raises(VerificationError) as info:
        guard.check_before_load(guarded_tiny)
    assert "could not repair acme/tiny" in str(info.value)
    assert "repair skipped: downloads are off, HF_HUB_OFFLINE" in str(info.value)


def test_unknown_model_policies(tmp_path, monkeypatch):
    d = _tiny_model_dir(tmp_path)
    modelguard.install()
    with pytest.warns(guard.UnknownModelWarning) as record:
        resolved = guard.check_before_load(d, loader="test loader")
    assert resolved.how == "unknown"
    text = str(record[0].message)
    assert f"no manifest applies to {d} (loaded by test loader)" in text
    assert "random initialization is still refused" in text
    assert f"modelguard build {d} --model ORG/NAME -o {d / 'modelguard.yaml'}" in text

    monkeypatch.setenv("MODELGUARD_UNKNOWN", "refuse")
    with pytest.raises(ManifestNotFoundError) as info:
        guard.check_before_load(d)
    assert "the unknown-model policy 'refuse' forbids loading unverified models" in str(info.value)

    monkeypatch.setenv("MODELGUARD_UNKNOWN", "allow")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard.check_before_load(d)


def test_hub_model_not_in_cache_offline_is_refused(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    modelguard.install()
    with pytest.raises(OfflineError) as info:
        guard.check_before_load("BAAI/bge-m3")
    text = str(info.value)
    assert "BAAI/bge-m3 is not in the Hugging Face cache and downloads are off" in text
    assert "modelguard fetch BAAI/bge-m3 --revision 5617a9f61b028005a4858fdac845db406aefb181" in text


def test_hub_model_not_in_cache_is_fetched_and_a_failed_download_is_reported():
    modelguard.install()
    with pytest.raises(DownloadError) as info:
        guard.check_before_load(MINILM, components=["tokenizer"])
    text = str(info.value)
    assert info.value.exit_code == 1
    assert f"cannot reach {MINILM} @ main: config.json on http://127.0.0.1:9: ConnectError" in text, text
    assert "fix:      check the network, HF_ENDPOINT and proxy settings" in text, text


def test_a_failed_download_leaves_no_empty_snapshot_so_the_next_load_names_the_network_again():
    modelguard.install()
    commit = "5617a9f61b028005a4858fdac845db406aefb181"  # the shipped, pinned bge-m3 manifest
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / "models--BAAI--bge-m3" / "snapshots" / commit
    for attempt in (1, 2):
        with pytest.raises(DownloadError) as info:
            guard.check_before_load("BAAI/bge-m3", components=["tokenizer"])
        text = str(info.value)
        assert f"fetch of BAAI/bge-m3 @ {commit} did not end with verified files" in text, (attempt, text)
        assert "127.0.0.1:9" in text and "ConnectError" in text, (attempt, text)
        assert not snapshot.exists(), (attempt, sorted(p.name for p in snapshot.iterdir()))


def test_an_empty_snapshot_folder_left_by_a_killed_download_counts_as_absent():
    modelguard.install()
    commit = "5617a9f61b028005a4858fdac845db406aefb181"
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / "models--BAAI--bge-m3" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    with pytest.raises(DownloadError) as info:  # fetched again (and the network named), not "files missing"
        guard.check_before_load("BAAI/bge-m3", components=["tokenizer"])
    text = str(info.value)
    assert f"fetch of BAAI/bge-m3 @ {commit} did not end with verified files" in text, text
    assert "127.0.0.1:9" in text and "ConnectError" in text, text


def test_local_files_only_never_downloads():
    modelguard.install()
    with pytest.raises(OfflineError) as info:
        guard.check_before_load("BAAI/bge-m3", local_files_only=True)
    assert "downloads are off" in str(info.value)


def test_a_path_that_does_not_exist_is_left_to_the_loader(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELGUARD_UNKNOWN", "refuse")
    modelguard.install()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolved = guard.check_before_load(str(tmp_path / "no-such-model"))
    assert (resolved.how, resolved.directory) == ("unknown", None)


def _hook_for_pytest(monkeypatch, supported, patch):
    """A hook (for the real, imported pytest) to exercise the guard's own version and failure handling."""
    import types

    hook = types.ModuleType("modelguard_test_hook")
    hook.DISTRIBUTION, hook.SUPPORTED = "pytest", "pytest < 1"
    hook.supported, hook.patch, hook.unpatch = supported, patch, lambda: None
    monkeypatch.setitem(sys.modules, "modelguard_test_hook", hook)
    monkeypatch.setitem(HOOKS, "pytest", "modelguard_test_hook")


def test_unsupported_library_version_warns_and_is_not_patched(monkeypatch):
    from importlib import metadata

    patched = []
    _hook_for_pytest(monkeypatch, lambda v: version_tuple(v) < (1,), patched.append)
    with pytest.warns(guard.UnsupportedLibraryWarning) as record:
        modelguard.install()
    assert patched == []
    assert "pytest" not in guard.patched_libraries()
    text = str(record[0].message)
    assert f"pytest {metadata.version('pytest')} is not a version the guard supports (pytest < 1)" in text
    assert "NOT guarded" in text


def test_a_hook_that_fails_to_patch_warns_instead_of_breaking_the_program(monkeypatch):
    def patch(module):
        raise AttributeError("module 'pytest' has no attribute 'Loader'")

    _hook_for_pytest(monkeypatch, lambda v: True, patch)
    with pytest.warns(guard.UnsupportedLibraryWarning, match=r"could not guard pytest .*AttributeError.*NOT guarded"):
        modelguard.install()
    assert "pytest" not in guard.patched_libraries()


def test_snapshot_of_another_revision_than_the_manifest_pins_says_so(isolated_env):
    other = "0123456789abcdef0123456789abcdef01234567"
    snap = Path(os.environ["HF_HUB_CACHE"]) / "models--BAAI--bge-m3" / "snapshots" / other
    snap.mkdir(parents=True)
    modelguard.install()
    resolved = guard.resolve_model(snap)
    assert (resolved.how, resolved.model_id, resolved.manifest) == ("hf-cache-snapshot", "BAAI/bge-m3", None)
    with pytest.warns(guard.UnknownModelWarning) as record:
        guard.check_before_load(snap, loader="test loader")
    text = str(record[0].message)
    assert f"no manifest applies to BAAI/bge-m3 (loaded by test loader)" in text
    assert f"pins revision 5617a9f61b028005a4858fdac845db406aefb181, not {other}" in text
    assert "modelguard fetch BAAI/bge-m3 --revision 5617a9f61b028005a4858fdac845db406aefb181" in text
