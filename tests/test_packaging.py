"""A non-editable install (a wheel built from the source, installed into its own folder)
finds the shipped manifests and verifies a model by its id."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from helpers.cli import REPO

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "modelguard", "manifests")
BUILD_LOG: dict[str, str] = {}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this source tree, built from a copy so no build output lands in the repository."""
    work = tmp_path_factory.mktemp("pkg")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            shutil.copy(path, src / name)
    if not (src / "README.md").exists():  # pyproject names it; the text does not matter here
        (src / "README.md").write_text("modelguard\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-v", "-w", str(work / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    BUILD_LOG["output"] = proc.stdout + proc.stderr
    wheels = list((work / "dist").glob("modelguard-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_the_shipped_manifests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("BAAI/bge-m3", "BAAI/bge-large-en-v1.5", "sentence-transformers/all-MiniLM-L6-v2"):
        assert f"modelguard/_manifests/{model}.yaml" in names
    assert "modelguard/__main__.py" in names and "modelguard/_commands/verify.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "modelguard = modelguard.cli:entry_point" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_wheel_verifies_a_model_by_id(wheel, tmp_path, minilm_dir):
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (target / "modelguard" / "_manifests" / "BAAI" / "bge-m3.yaml").is_file()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import modelguard, modelguard.registry as r; "
                               "print(modelguard.__file__); print(r.shipped_manifest_dir())"],
        capture_output=True, text=True, cwd=outside, env=env, timeout=120,
    )
    assert where.returncode == 0, where.stderr
    module_file, manifest_dir = where.stdout.split()
    # the installed copy is the one in use, and its manifests come from inside it
    assert Path(module_file).is_relative_to(target), module_file
    assert Path(manifest_dir) == (target / "modelguard" / "_manifests").resolve()
    proc = subprocess.run(
        [sys.executable, "-m", "modelguard", "verify", "sentence-transformers/all-MiniLM-L6-v2", str(minilm_dir)],
        capture_output=True, text=True, cwd=outside, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "verified: 3 file(s) of sentence-transformers/all-MiniLM-L6-v2 match the manifest"
    json_proc = subprocess.run(
        [sys.executable, "-m", "modelguard", "verify", "sentence-transformers/all-MiniLM-L6-v2", str(minilm_dir),
         "--json"],
        capture_output=True, text=True, cwd=outside, env=env, timeout=300,
    )
    assert '"manifest": "' + str((target / "modelguard" / "_manifests").resolve()) in json_proc.stdout


def test_pyproject_declares_the_pytest_plugin_at_an_importable_module():
    import importlib
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    plugins = project["entry-points"]["pytest11"]
    assert plugins == {"modelguard": "modelguard.pytest_plugin"}
    module = importlib.import_module(plugins["modelguard"])
    assert callable(module.pytest_addoption) and callable(module.pytest_configure)


def test_wheel_carries_the_run_bootstrap_and_the_pytest_entry_point(wheel):
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    assert {"modelguard/_bootstrap/sitecustomize.py", "modelguard/pytest_plugin.py"} <= names
    entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "[pytest11]\nmodelguard = modelguard.pytest_plugin" in entry_points


def test_installed_wheel_runs_a_program_guarded(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import modelguard; from modelguard import guard; print(guard.is_installed(), modelguard.__file__)"
    proc = subprocess.run([sys.executable, "-m", "modelguard", "run", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    installed, where = proc.stdout.split()
    assert installed == "True" and Path(where).is_relative_to(target), proc.stdout


def test_wheel_builds_without_warnings(wheel):
    """A quiet install: no 'Package ... is absent from the packages configuration', no deprecations."""
    output = BUILD_LOG["output"]
    assert "running bdist_wheel" in output or "Building wheel" in output, output[-2000:]
    noisy = [line.strip() for line in output.splitlines()
             if "Warning" in line or "absent from the `packages` configuration" in line
             or "would be ignored" in line]
    assert noisy == [], "\n".join(noisy)


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = pinned
    return pins


def test_every_extra_admits_the_pinned_versions():
    """The extras users install and the lock the tests run on must agree: a range that excludes
    the tested version (or a pin missing from the lock) is a failure."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = _pins()
    checked = []
    for extra, requirements in extras.items():
        for text in requirements:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "modelguard":
                continue
            name = canonicalize_name(requirement.name)
            assert name in pins, f"extra {extra!r}: {requirement.name} is not pinned in constraints.txt"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"extra {extra!r} asks for {text!r}, but constraints.txt pins {name}=={pins[name]}")
            checked.append(name)
    assert {"flagembedding", "transformers", "sentence-transformers", "torch"} <= set(checked)


def test_core_dependencies_admit_the_pinned_versions():
    import tomllib

    pins = _pins()
    for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins and requirement.specifier.contains(pins[name]), (text, pins.get(name))


def test_the_environment_under_test_is_the_locked_one():
    """`make test` installs exactly constraints.txt: any other version here means the run does not
    test what the lock says (refresh it with `make lock`)."""
    from importlib.metadata import distributions

    pins = _pins()
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    differ = {name: (pinned, installed[name]) for name, pinned in pins.items()
              if name in installed and Version(installed[name]).public != Version(pinned).public}
    assert differ == {}, f"installed versions differ from constraints.txt (pinned, installed): {differ}"
    missing = sorted(name for name in pins if name not in installed)
    assert missing == [], f"pinned in constraints.txt but not installed: {missing}"
