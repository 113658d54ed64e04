"""The one resolver: every kind of target resolves to model id, revision, directory, the manifest
that applies and how it was found, the same way for every entry point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.st_model import write_st_shaped_model
from modelguard import resolve
from modelguard.build import build_manifest
from modelguard.errors import ManifestNotFoundError, UsageError
from modelguard.manifest import save_manifest
from modelguard.registry import looks_like_model_id

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def small_model(root: Path) -> Path:
    return write_st_shaped_model(root, weights=b"w" * 64, config='{"model_type": "bert"}\n',
                                 tokenizer='{"version": "1.0"}\n')


@pytest.fixture
def on_search_path(tmp_path, monkeypatch) -> Path:
    """A model folder whose manifest (acme/small at COMMIT) is on the manifest search path."""
    model = small_model(tmp_path / "small")
    save_manifest(build_manifest(model, "acme/small", COMMIT), tmp_path / "manifests" / "acme" / "small.yaml")
    monkeypatch.setenv("MODELGUARD_MANIFEST_PATH", str(tmp_path / "manifests"))
    return model


def cache_snapshot(model: Path, name: str = "acme/small") -> Path:
    """A copy of ``model`` laid out as the Hugging Face cache's snapshot of ``name`` at COMMIT."""
    repo = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + name.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    for path in sorted(model.rglob("*")):
        target = snapshot / path.relative_to(model)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.mark.parametrize("text, namespaced, expected", [
    ("BAAI/bge-m3", False, True), ("gpt2", False, True), ("gpt2", True, False), ("a/b/c", False, False),
    ("./local", False, False), ("~/models/x", False, False), ("/abs/path", False, False), ("org/..", False, False),
])
def test_is_this_a_model_id_has_one_answer(text, namespaced, expected):
    assert looks_like_model_id(text, namespaced=namespaced) is expected


def test_verify_target_from_a_model_id_and_a_directory(on_search_path):
    found = resolve.resolve_verify_target("acme/small", on_search_path)
    assert (found.model_id, found.revision, found.directory, found.how) == ("acme/small", COMMIT, on_search_path,
                                                                           "search-path")
    assert found.describe().startswith("manifest: manifest search path (") and "small.yaml" in found.source


def test_verify_target_from_a_manifest_file_without_a_directory_is_its_cache_snapshot(on_search_path, tmp_path):
    snapshot = cache_snapshot(on_search_path)
    found = resolve.resolve_verify_target(tmp_path / "manifests" / "acme" / "small.yaml")
    assert (found.directory, found.how) == (snapshot, "manifest-file")


def test_verify_target_not_in_the_cache_names_the_fetch_command(on_search_path):
    with pytest.raises(UsageError) as info:
        resolve.resolve_verify_target("acme/small")
    assert "acme/small @ 0123456789ab is not in the Hugging Face cache" in str(info.value)
    assert f"modelguard fetch acme/small --revision {COMMIT}" in info.value.remedy


def test_verify_target_of_an_unknown_model_id(on_search_path):
    with pytest.raises(ManifestNotFoundError, match="no manifest known for acme/other"):
        resolve.resolve_verify_target("acme/other", on_search_path)


def test_the_guard_resolves_a_cache_snapshot_path_to_its_model_and_commit(on_search_path):
    snapshot = cache_snapshot(on_search_path)
    found = resolve.resolve(snapshot / "1_Pooling")
    assert (found.model_id, found.revision, found.directory, found.how) == ("acme/small", COMMIT, snapshot,
                                                                           "hf-cache-snapshot")
    assert found.manifest is not None and found.manifest.model == "acme/small"


def test_the_guard_prefers_the_folders_own_manifest(on_search_path, tmp_path):
    own = small_model(tmp_path / "fine-tune")
    save_manifest(build_manifest(own, "me/fine-tune"), own / "modelguard.yaml")
    found = resolve.resolve(own)
    assert (found.model_id, found.how) == ("me/fine-tune", "local-manifest")
    assert found.describe() == f"manifest: modelguard.yaml in the model directory ({own / 'modelguard.yaml'})"


def test_the_guard_identifies_a_copy_by_file_names_and_sizes(on_search_path, tmp_path):
    copy = small_model(tmp_path / "copy")
    found = resolve.resolve(copy)
    assert (found.model_id, found.revision, found.directory, found.how) == ("acme/small", COMMIT, copy,
                                                                           "identified")


def test_the_guard_uses_a_declared_directory(on_search_path, tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    found = resolve.resolve(folder, directory_map={os.path.realpath(folder): ("acme/small", None)})
    assert (found.model_id, found.revision, found.how) == ("acme/small", COMMIT, "user-mapping")


def test_the_guard_resolves_a_hub_id_not_in_the_cache_to_its_pinned_revision(on_search_path):
    found = resolve.resolve("acme/small")
    assert (found.model_id, found.revision, found.directory, found.how) == ("acme/small", COMMIT, None, "hub-id")


def test_an_unknown_folder_and_a_non_id_resolve_to_no_manifest(tmp_path):
    folder = tmp_path / "nothing-known"
    folder.mkdir()
    assert resolve.resolve(folder) == resolve.Resolution(None, None, folder, None, "unknown")
    assert resolve.resolve("./not/an/id").how == "unknown"
    assert resolve.resolve(folder).describe() == "manifest: no manifest"


def test_audit_and_probe_locate_a_cached_model_id(on_search_path):
    snapshot = cache_snapshot(on_search_path)
    found = resolve.locate("acme/small")
    assert (found.model_id, found.revision, found.directory, found.how) == ("acme/small", COMMIT, snapshot, "hub-id")
    assert found.manifest is not None
    assert resolve.locate("acme/small", find=False).manifest is None


def test_locate_refuses_a_file_and_a_missing_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="is not a directory"):
        resolve.locate(tmp_path / "config.json")
    with pytest.raises(UsageError, match="model directory .*nowhere does not exist"):
        resolve.locate(str(tmp_path / "nowhere"))
