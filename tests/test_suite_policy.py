"""The suite's own promise: a library the guard tests need that cannot be imported fails the run
(with its import error) under CI and `make test`, instead of silently skipping those tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.cli import REPO


def _run_with_shadowed_flagembedding(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    shadow = tmp_path / "shadow" / "FlagEmbedding"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ImportError(\"cannot import name 'AttentionMaskConverter' from "
        "'transformers.modeling_attn_mask_utils' (shadowed for the test)\")\n")
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("CI", "MODELGUARD_TEST_STRICT", "MODELGUARD_TEST_ALLOW_MISSING")}
    full_env.update(env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), full_env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
         str(REPO / "tests" / "test_flagembedding_unguarded.py")],
        capture_output=True, text=True, cwd=REPO, env=full_env, timeout=600,
    )


def test_broken_flagembedding_fails_the_run_under_ci(tmp_path):
    proc = _run_with_shadowed_flagembedding(tmp_path, CI="true")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "FlagEmbedding cannot be imported: ImportError: cannot import name 'AttentionMaskConverter'" in output
    assert "shadowed for the test" in output
    assert "skipped" not in output.lower().split("error")[-1]


def test_broken_flagembedding_fails_the_run_under_make_test(tmp_path):
    proc = _run_with_shadowed_flagembedding(tmp_path, MODELGUARD_TEST_STRICT="1",
                                            MODELGUARD_TEST_ALLOW_MISSING="1")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "FlagEmbedding cannot be imported" in proc.stdout + proc.stderr


def test_outside_ci_a_developer_may_opt_into_a_skip_with_the_reason(tmp_path):
    shadow = tmp_path
    proc = _run_with_shadowed_flagembedding(shadow, MODELGUARD_TEST_ALLOW_MISSING="1")
    # --collect-only with a module-level skip: nothing collected, exit 5, the reason shown with -rs
    assert proc.returncode == 5, proc.stdout + proc.stderr
    rerun = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(REPO / "tests" / "test_flagembedding_unguarded.py")],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**{k: v for k, v in os.environ.items() if k not in ("CI", "MODELGUARD_TEST_STRICT")},
             "MODELGUARD_TEST_ALLOW_MISSING": "1",
             "PYTHONPATH": os.pathsep.join([str(shadow / "shadow"), os.environ.get("PYTHONPATH", "")])},
    )
    assert "SKIPPED" in rerun.stdout and "FlagEmbedding cannot be imported: ImportError" in rerun.stdout, rerun.stdout


def test_the_session_header_names_the_versions_under_test():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider",
         str(REPO / "tests" / "test_manifest.py")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    from importlib.metadata import version

    header = next((line for line in proc.stdout.splitlines() if line.startswith("modelguard test environment:")),
                  None)
    assert header is not None, proc.stdout[:2000]
    for name in ("torch", "transformers", "sentence-transformers", "FlagEmbedding", "huggingface_hub"):
        assert f"{name}=={version(name)}" in header
