"""The FlagEmbedding hook loading bge-m3 by Hub id, from the test Hub on 127.0.0.1
(tests/hubserver.py) through the real huggingface_hub client."""

from __future__ import annotations

import os
import warnings

import pytest

from helpers.requires import need

need("FlagEmbedding")

import modelguard  # noqa: E402
from modelguard import guard  # noqa: E402
from modelguard.errors import MissingHeadError  # noqa: E402
from modelguard.hfcache import repo_folder  # noqa: E402
from modelguard.manifest import save_manifest  # noqa: E402

from helpers.bge_m3 import TINY_BGE_M3_ID, load_bge_m3, m3_outputs, tiny_bge_m3_manifest  # noqa: E402


# Every test runs with the loader guard freshly installed (conftest.installed_guard).
pytestmark = pytest.mark.usefixtures("installed_guard")


def files_of(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def publish_with_manifest(hub, directory, tmp_path, monkeypatch) -> str:
    commit = hub.add_repo(TINY_BGE_M3_ID, files_of(directory))
    manifests = tmp_path / "manifests"
    save_manifest(tiny_bge_m3_manifest(directory, revision=commit), manifests / f"{TINY_BGE_M3_ID}.yaml")
    monkeypatch.setenv("MODELGUARD_MANIFEST_PATH", str(manifests))
    return commit


def unguarded_outputs(path) -> dict:
    guard.uninstall()
    try:
        return m3_outputs(load_bge_m3(path))
    finally:
        modelguard.install()


def test_hub_id_with_manifest_downloads_the_pinned_files_verifies_and_loads(
        hub, tiny_bge_m3, tmp_path, monkeypatch):
    expected = unguarded_outputs(tiny_bge_m3)
    commit = publish_with_manifest(hub, tiny_bge_m3, tmp_path, monkeypatch)
    model = load_bge_m3(TINY_BGE_M3_ID)
    assert m3_outputs(model) == expected
    snapshot = repo_folder(TINY_BGE_M3_ID) / "snapshots" / commit
    assert (snapshot / "colbert_linear.pt").read_bytes() == (tiny_bge_m3 / "colbert_linear.pt").read_bytes()


def test_hub_id_without_manifest_and_without_a_head_is_refused_before_the_model_is_built(
        hub, tiny_bge_m3, tmp_path):
    files = files_of(tiny_bge_m3)
    del files["colbert_linear.pt"]
    commit = hub.add_repo(TINY_BGE_M3_ID, files)
    # FlagEmbedding's snapshot_download saves the Hub's listing, so the model is not unknown:
    # its files are checked against that listing (no unknown-model warning), and the head is absent.
    with warnings.catch_warnings():
        warnings.simplefilter("error", guard.UnknownModelWarning)
        with pytest.raises(MissingHeadError) as info:
            load_bge_m3(TINY_BGE_M3_ID)
    err = info.value
    assert err.component == "colbert"
    assert "the colbert head file colbert_linear.pt is missing" in str(err)
    if (repo_folder(TINY_BGE_M3_ID) / "trees" / f"{commit}.json").is_file():
        assert f"(expectations: the Hub's listing of commit {commit} saved at download (" in str(err)
        assert err.remedy.startswith(f"the Hub's listing of {TINY_BGE_M3_ID} at commit {commit} (saved at download) "
                                     "has no colbert_linear.pt: that commit does not publish it"), err.remedy
    else:  # huggingface_hub before 1.22 saves no listing: the blobs' content addresses are the source
        assert huggingface_hub_version() < (1, 22), "the listing was not saved"
        assert "(expectations: the content addresses of the cache's blobs; completeness not checked" in str(err)
    # The files were downloaded (the way FlagEmbedding downloads them), nothing was built from them.
    assert (repo_folder(TINY_BGE_M3_ID) / "snapshots" / commit / "sparse_linear.pt").is_file()


def test_policy_repair_re_downloads_a_corrupted_head_and_loads(hub, tiny_bge_m3, tmp_path, monkeypatch):
    expected = unguarded_outputs(tiny_bge_m3)
    commit = publish_with_manifest(hub, tiny_bge_m3, tmp_path, monkeypatch)
    load_bge_m3(TINY_BGE_M3_ID)  # into the cache
    head = repo_folder(TINY_BGE_M3_ID) / "snapshots" / commit / "colbert_linear.pt"
    blob = head.resolve()
    data = blob.read_bytes()
    os.chmod(blob, 0o644)
    blob.write_bytes(data[: len(data) // 2])

    with pytest.raises(MissingHeadError, match=r"colbert \(colbert_linear.pt: truncated\)"):
        load_bge_m3(TINY_BGE_M3_ID)
    monkeypatch.setenv("MODELGUARD_POLICY", "repair")
    assert m3_outputs(load_bge_m3(TINY_BGE_M3_ID)) == expected
    assert head.read_bytes() == data


def huggingface_hub_version() -> tuple[int, ...]:
    from importlib.metadata import version

    from modelguard.hooks import version_tuple

    return version_tuple(version("huggingface_hub"))
