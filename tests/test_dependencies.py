"""A library that cannot be imported: absent (install the extra) or installed but broken (say
which neighbour breaks it, the versions, the cause and a working combination). The guard never
changes the exception of a user's own import.

Broken installs are made in tmp_path: packages that shadow the real ones, and dist-info folders
that say which versions are installed, put first on PYTHONPATH of a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import REPO, run_cli
from modelguard.dependencies import import_library
from modelguard.errors import UsageError


def dist_info(root: Path, name: str, version: str, *requires: str) -> None:
    d = root / f"{name}-{version}.dist-info"
    d.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    (d / "METADATA").write_text("\n".join(lines) + "\n")


def module(root: Path, dotted: str, source: str) -> None:
    """``root/a/b/c.py`` (with ``__init__.py`` in every package above) holding ``source``;
    a name ending in ``.__init__`` writes a package's own ``__init__.py``."""
    parts = dotted.split(".")
    for i in range(1, len(parts)):
        pkg = root.joinpath(*parts[:i])
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").touch()
    root.joinpath(*parts[:-1], parts[-1] + ".py").write_text(source)


def transformers_too_new(root: Path) -> Path:
    """FlagEmbedding 1.4.2 whose import needs transformers.modeling_attn_mask_utils, beside a
    transformers 5.24.0 that no longer has it (the break of 2026-12-01)."""
    dist_info(root, "FlagEmbedding", "1.4.2", "transformers<6.0.0,>=4.44.2")
    dist_info(root, "transformers", "5.24.0")
    module(root, "transformers.__init__", "__version__ = '5.24.0'\n")
    module(root, "FlagEmbedding.__init__", "from transformers.modeling_attn_mask_utils import AttentionMaskConverter\n")
    return root


def env_with(*paths: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join([*map(str, paths), str(REPO)])}


def python(code: str, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **env_with(*paths)))


REQUIRE = """
from modelguard.dependencies import import_library
from modelguard.errors import UsageError
try:
    import_library({module!r}, {extra!r}, needed_by="the probe")
except UsageError as exc:
    print(exc)
"""


def test_probe_names_the_neighbour_that_breaks_an_installed_library(tmp_path):
    shadow = transformers_too_new(tmp_path / "site")
    (tmp_path / "model").mkdir()
    result = run_cli("probe", str(tmp_path / "model"), "--kind", "bge-m3", env=env_with(shadow))
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "Traceback" not in err, err
    assert ("modelguard: error: the probe needs FlagEmbedding: FlagEmbedding 1.4.2 is installed but cannot be "
            "imported: ModuleNotFoundError: No module named 'transformers.modeling_attn_mask_utils'") in err, err
    assert ("  cause:    the installed transformers 5.24.0 is too new for the installed FlagEmbedding 1.4.2: "
            "FlagEmbedding 1.4.2 imports transformers.modeling_attn_mask_utils, which transformers 5.24.0 removed") in err
    assert "  actual:   installed: FlagEmbedding 1.4.2, transformers 5.24.0, sentence-transformers " in err, err
    assert "  fix:      pip install 'transformers<5.24' (the combination that imports: FlagEmbedding 1.4.2 with " \
           "transformers<5.24)" in err, err
    assert "modelguard[" not in err, err  # FlagEmbedding is installed: installing the extra fixes nothing


def test_a_package_shadowing_an_installed_library_is_named(tmp_path):
    site, shadow = tmp_path / "site", tmp_path / "work"
    dist_info(site, "FlagEmbedding", "1.4.2")
    module(shadow, "FlagEmbedding.__init__", "raise ImportError('half-written checkout')\n")
    out = python(REQUIRE.format(module="FlagEmbedding", extra="flagembedding"), shadow, site).stdout
    assert ("the probe needs FlagEmbedding: FlagEmbedding 1.4.2 is installed but cannot be imported: "
            "ImportError: half-written checkout") in out, out
    assert (f"  cause:    the FlagEmbedding that Python finds is {shadow / 'FlagEmbedding'}, not the installed "
            f"FlagEmbedding 1.4.2 in {site}: a file or folder of that name shadows it") in out, out
    assert f"  fix:      rename or remove {shadow / 'FlagEmbedding'}, or take its folder off PYTHONPATH/sys.path" in out
    assert "modelguard[" not in out, out


def test_a_broken_install_is_reinstalled_at_its_version(tmp_path):
    site = tmp_path / "site"
    dist_info(site, "FlagEmbedding", "1.4.2")
    module(site, "FlagEmbedding.__init__", "from .inference import M3Embedder\n")
    module(site, "FlagEmbedding.inference", "raise ImportError('a file lost in a partial upgrade')\n")
    out = python(REQUIRE.format(module="FlagEmbedding", extra="flagembedding"), site).stdout
    assert "FlagEmbedding 1.4.2 is installed but cannot be imported: ImportError: a file lost in a partial upgrade" in out
    assert "  cause:    a broken or partial install of FlagEmbedding 1.4.2" in out, out
    assert "  fix:      pip install --force-reinstall 'FlagEmbedding==1.4.2'" in out, out


def test_a_neighbour_outside_the_declared_range_gets_that_range(tmp_path):
    site = tmp_path / "site"
    dist_info(site, "FlagEmbedding", "1.4.2", "transformers<6.0.0,>=4.44.2")
    dist_info(site, "transformers", "4.30.0")
    module(site, "transformers.__init__", "")
    module(site, "FlagEmbedding.__init__", "from transformers.cache_utils import DynamicCache\n")
    out = python(REQUIRE.format(module="FlagEmbedding", extra="flagembedding"), site).stdout
    assert "No module named 'transformers.cache_utils'" in out, out
    assert ("  cause:    the installed transformers 4.30.0 is outside the range FlagEmbedding 1.4.2 declares "
            "(transformers<6.0.0,>=4.44.2)") in out, out
    assert "  fix:      pip install 'transformers<6.0.0,>=4.44.2'" in out, out


def test_an_unknown_break_with_a_neighbour_says_too_new_or_too_old(tmp_path):
    site = tmp_path / "site"
    dist_info(site, "sentence-transformers", "6.2.0", "transformers>=5.0.0")
    dist_info(site, "transformers", "5.30.1")
    module(site, "transformers.__init__", "")
    module(site, "sentence_transformers.__init__", "from transformers.gone_in_5_30 import X\n")
    out = python(REQUIRE.format(module="sentence_transformers", extra="transformers"), site).stdout
    assert ("  cause:    sentence-transformers 6.2.0 imports transformers.gone_in_5_30, which the installed "
            "transformers 5.30.1 does not have: transformers 5.30.1 is likely too new (the name was removed) or "
            "too old (not added yet) for sentence-transformers 6.2.0") in out, out
    assert ("  fix:      install a transformers release sentence-transformers 6.2.0 was made with, e.g. "
            "pip install 'transformers<5.30.1', or a sentence-transformers release that supports transformers "
            "5.30.1: pip install -U 'sentence-transformers'") in out, out


def test_an_absent_library_is_the_only_case_that_suggests_the_extra():
    with pytest.raises(UsageError) as info:
        import_library("modelguard_test_absent_library", "flagembedding", needed_by="the probe")
    text = str(info.value)
    assert text.startswith("the probe needs modelguard_test_absent_library, which is not installed "
                           "(ModuleNotFoundError: No module named 'modelguard_test_absent_library')"), text
    assert "  fix:      pip install 'modelguard[flagembedding]'" in text, text


USER_IMPORT = """
import json, sys, traceback, warnings
warnings.simplefilter("error")  # the guard may not add a warning to a failed import either
if sys.argv[1] == "guarded":
    import modelguard.auto
try:
    import {name}
except BaseException as exc:
    last = traceback.extract_tb(exc.__traceback__)[-1]
    print(json.dumps([type(exc).__module__, type(exc).__qualname__, str(exc), getattr(exc, "name", None),
                      last.filename, last.lineno, repr(exc.__cause__), repr(exc.__context__)]))
"""


@pytest.mark.parametrize("case", ["neighbour", "own-error", "sentence_transformers"])
def test_the_guard_never_changes_the_exception_of_a_users_import(tmp_path, case):
    site = tmp_path / "site"
    name = "FlagEmbedding"
    if case == "neighbour":
        transformers_too_new(site)
    elif case == "own-error":
        dist_info(site, "FlagEmbedding", "1.4.2")
        module(site, "FlagEmbedding.__init__", "import os\nraise ImportError('broken on purpose', name='FlagEmbedding.x')\n")
    else:
        name = "sentence_transformers"
        dist_info(site, "sentence-transformers", "6.2.0")
        module(site, "sentence_transformers.__init__", "raise ImportError('broken on purpose')\n")
    code = USER_IMPORT.format(name=name)
    runs = {}
    for mode in ("plain", "guarded"):
        proc = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, **env_with(site)))
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        runs[mode] = json.loads(proc.stdout)
    assert runs["guarded"] == runs["plain"]
    assert runs["plain"][4].startswith(str(site)), runs["plain"]  # raised by the library's own file
    if case == "neighbour":
        assert runs["plain"][1:4] == ["ModuleNotFoundError", "No module named 'transformers.modeling_attn_mask_utils'",
                                      "transformers.modeling_attn_mask_utils"]


def test_a_part_the_guard_wraps_that_cannot_be_imported_is_explained_in_its_warning(tmp_path):
    site = transformers_too_new(tmp_path / "site")
    # The top-level package imports; the module the hook wraps (the 1.3/1.4 runner) does not.
    module(site, "FlagEmbedding.__init__", "")
    module(site, "FlagEmbedding.finetune.embedder.encoder_only.m3.runner",
           "from transformers.modeling_attn_mask_utils import AttentionMaskConverter\n")
    code = ("import warnings, modelguard.auto\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    import FlagEmbedding\n"
            "print('\\n'.join(str(w.message) for w in seen))\n")
    out = python(code, site).stdout
    assert ("modelguard: could not guard FlagEmbedding 1.4.2 (ModuleNotFoundError: No module named "
            "'transformers.modeling_attn_mask_utils'; cause: the installed transformers 5.24.0 is too new for the "
            "installed FlagEmbedding 1.4.2: FlagEmbedding 1.4.2 imports transformers.modeling_attn_mask_utils, which "
            "transformers 5.24.0 removed; installed: FlagEmbedding 1.4.2, transformers 5.24.0") in out, out
    assert "fix: pip install 'transformers<5.24'" in out and "its loaders are NOT guarded" in out, out
    assert "BGE_M3" not in out, out  # not mistaken for the 1.2 layout
