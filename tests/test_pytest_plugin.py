"""The pytest plugin: ``pytest --modelguard`` guards every model a test session loads; without
the option it does nothing and imports nothing of modelguard.

Each test runs pytest in a subprocess on a small test file, with the plugin named by
``-p modelguard.pytest_plugin`` and entry-point plugins off (PYTEST_DISABLE_PLUGIN_AUTOLOAD),
so the result is the same whether or not this environment registered the ``pytest11``
entry point (tests/test_packaging.py checks the wheel declares it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.requires import need

import modelguard
from modelguard import policy, pytest_plugin

need("transformers")

TEST_FILE = """
import os
from transformers import AutoModel


def test_loads_the_model():
    model = AutoModel.from_pretrained(os.environ["MODEL_DIR"])
    assert type(model).__name__ == "BertModel"
"""


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from helpers.tiny_bert import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("plugin-bert") / "bert")


@pytest.fixture
def corrupted_model(tiny_bert, tmp_path) -> Path:
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "tiny-bert"))
    modelguard.save_manifest(modelguard.build_manifest(folder, "acme/tiny-bert"), folder / "modelguard.yaml")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    return folder


def run_pytest(tmp_path: Path, *args: str, test_text: str = TEST_FILE, env: dict | None = None
               ) -> subprocess.CompletedProcess:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "test_model.py").write_text(textwrap.dedent(test_text))
    full_env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "modelguard.pytest_plugin", "-p", "no:cacheprovider",
         "--rootdir", str(suite), *args, str(suite)],
        capture_output=True, text=True, cwd=suite, env=full_env, timeout=300,
    )


def test_with_modelguard_a_corrupted_model_fails_the_test_with_the_verification_error(corrupted_model, tmp_path):
    proc = run_pytest(tmp_path, "--modelguard", env={"MODEL_DIR": str(corrupted_model)})
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-2000:]
    assert "1 failed" in out
    assert "modelguard: loader guard installed for this session" in out
    assert "VerificationError: modelguard refused to load acme/tiny-bert" in out
    assert "FAIL model.safetensors [model]: right size, wrong content" in out


def test_without_the_option_the_plugin_is_inactive_and_the_test_loads_garbage(corrupted_model, tmp_path):
    proc = run_pytest(tmp_path, env={"MODEL_DIR": str(corrupted_model)})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "1 passed" in proc.stdout
    assert "loader guard installed" not in proc.stdout and "VerificationError" not in proc.stdout


def test_options_reach_the_guard(tmp_path):
    probe = """
        from modelguard import guard

        def test_settings():
            policy = guard.current_policy()
            assert guard.is_installed()
            assert (policy.effective_on_failure(), policy.effective_unknown(), policy.effective_offline()) == \\
                ("warn", "refuse", True)
    """
    proc = run_pytest(tmp_path, "--modelguard", "--modelguard-policy", "warn", "--modelguard-unknown", "refuse",
                      "--modelguard-offline", test_text=probe, env={"HF_HUB_OFFLINE": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "policy warn, unknown models refuse, offline)" in proc.stdout
    bad = run_pytest(tmp_path, "--modelguard", "--modelguard-unknown", "sometimes", test_text=probe)
    assert bad.returncode == 4
    assert "argument --modelguard-unknown: invalid choice: 'sometimes'" in bad.stderr


def test_a_missing_lock_is_a_usage_error(tmp_path):
    missing = tmp_path / "nope.lock"
    proc = run_pytest(tmp_path, "--modelguard", "--modelguard-lock", str(missing), test_text="def test_x():\n    pass\n")
    assert proc.returncode == 4
    assert f"--modelguard-lock: lock file {missing} does not exist" in proc.stderr


def test_inactive_plugin_imports_nothing_of_modelguard(tmp_path):
    probe = """
        import json, sys

        def test_modules():
            names = sorted(m for m in sys.modules if m.startswith("modelguard"))
            print("MODULES", json.dumps(names))
    """
    proc = run_pytest(tmp_path, "-s", test_text=probe)
    assert proc.returncode == 0, proc.stdout[-3000:]
    line = next(line for line in proc.stdout.splitlines() if "MODULES " in line)
    assert json.loads(line.split("MODULES ", 1)[1].rstrip(". ")) == ["modelguard", "modelguard.pytest_plugin", "modelguard.version"]


def test_the_plugins_choices_are_the_guards():
    assert pytest_plugin.POLICIES == policy.POLICIES
    assert pytest_plugin.UNKNOWN_POLICIES == policy.UNKNOWN_POLICIES
