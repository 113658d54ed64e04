"""The package's layers (ARCHITECTURE.md), checked on its source: a module imports only
modules of its own layer or below; a function-local import of a modelguard module is one
of the few listed, each there to keep an import cheap; no module touches another's
``_private`` names; module names never shadow the functions users call."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "modelguard"

# Lowest first. A module may import modules of its own layer or a lower one.
LAYERS: dict[str, tuple[str, ...]] = {
    "base": ("modelguard.errors", "modelguard.version", "modelguard.env", "modelguard.fs", "modelguard.sniff",
             "modelguard.hfcache", "modelguard.dependencies", "modelguard.remedy", "modelguard.private_dirs",
             "modelguard.recording"),
    "manifests and hashing": ("modelguard.manifest_schema", "modelguard.manifest", "modelguard.registry",
                              "modelguard.hashing", "modelguard.pieces", "modelguard.statcache", "modelguard.statindex",
                              "modelguard.hflisting", "modelguard.lockfile"),
    "verify engine": ("modelguard.report", "modelguard.diagnosis", "modelguard.engine", "modelguard.pickle_gate", "modelguard.pickle_containers",
                      "modelguard.safety", "modelguard.quickpath", "modelguard.indexhits", "modelguard.readplan",
                      "modelguard.unlisted"),
    "resolution": ("modelguard.resolve",),
    "features": ("modelguard.verifying", "modelguard.policy", "modelguard.randominit", "modelguard.importhooks",
                 "modelguard.overlap", "modelguard.preload", "modelguard.guard", "modelguard.hooks", "modelguard.hub",
                 "modelguard.hub.client", "modelguard.hub.place", "modelguard.hub.download", "modelguard.hub.scan",
                 "modelguard.hub.metadata", "modelguard.build", "modelguard.auditing", "modelguard.audit_report",
                 "modelguard.probing",
                 "modelguard.comparison", "modelguard.runners", "modelguard.determinism",
                 "modelguard.signature_bundle", "modelguard.signature_writing", "modelguard.signature_sigstore",
                 "modelguard.signing", "modelguard.signature_lock", "modelguard.locking"),
    "loader hooks": ("modelguard.hooks.transformers", "modelguard.hooks.sentence_transformers",
                     "modelguard.hooks.flagembedding", "modelguard.hooks.torch_load", "modelguard.hooks.remote_code",
                     "modelguard.hooks.files", "modelguard.hooks.safetensors", "modelguard.hooks.onnxruntime",
                     "modelguard.hooks.diffusers", "modelguard.hooks.peft", "modelguard.hooks.flag_models",
                     "modelguard.hooks.expectations",
                     "modelguard.auto"),
    "command line and package front": ("modelguard", "modelguard.__main__", "modelguard.cli", "modelguard.output",
                                       "modelguard._commands", "modelguard._commands._common",
                                       "modelguard._commands.verify", "modelguard._commands.build",
                                       "modelguard._commands.fetch", "modelguard._commands.scan",
                                       "modelguard._commands.audit", "modelguard._commands.probe",
                                       "modelguard._commands.sign", "modelguard._commands._signed",
                                       "modelguard._commands.lock", "modelguard._commands.sync",
                                       "modelguard._commands._locked", "modelguard._commands.run",
                                       "modelguard._commands.lock_record",
                                       "modelguard._bootstrap", "modelguard._bootstrap.sitecustomize",
                                       "modelguard.pytest_plugin"),
}
LAYER_OF = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}

# (importer, imported): the only function-local imports of modelguard modules, each to keep
# an import cheap (the module loads at program start with ``import modelguard.auto``).
CHEAP_IMPORTS = {
    ("modelguard.policy", "modelguard.registry"),  # map_directory: the manifest schema loads with the first model
    # pytest imports the plugin in every run: the guard loads only with --modelguard
    ("modelguard.pytest_plugin", "modelguard.guard"),
    # a guarded load imports what it uses: the Hub client for a download or an incomplete snapshot,
    # the signature checks when a key, identity or requirement is set or a lock entry names a signer,
    # the pickle gate for a pickle-based file (tests/test_import_cost.py)
    ("modelguard.preload", "modelguard.hub"),
    ("modelguard.preload", "modelguard.signing"),
    ("modelguard.preload", "modelguard.signature_lock"),
    ("modelguard.safety", "modelguard.pickle_containers"),
    ("modelguard.safety", "modelguard.pickle_gate"),
    # import modelguard.auto: the import-failure message (and typing behind it) only when a hook cannot patch
    ("modelguard.importhooks", "modelguard.dependencies"),
}
MAX_LOCAL_IMPORTS = 20


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def imports(name: str, path: Path):
    """``(imported module, imported names, node, function-local?)`` for every import of a modelguard module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    known = modules()
    local_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local_nodes.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    package = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        local = id(node) in local_nodes
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "modelguard":
                    yield alias.name, (), node, local
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "modelguard":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            if submodules:
                for sub in submodules:
                    yield sub, (), node, local
                rest = [n for n in names if f"{target}.{n}" not in known]
                if rest:
                    yield target, tuple(rest), node, local
            else:
                yield target, tuple(names), node, local


def in_type_checking_block(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out.update(id(n) for n in ast.walk(node))
    return out


def test_every_module_has_a_layer():
    unassigned = sorted(set(modules()) - set(LAYER_OF))
    assert not unassigned, f"give these modules a layer in tests/test_architecture.py and ARCHITECTURE.md: {unassigned}"
    gone = sorted(set(LAYER_OF) - set(modules()))
    assert not gone, f"layers name modules that no longer exist: {gone}"


def test_the_checker_sees_an_upward_import(tmp_path):
    # the check itself can fail: a base module importing the guard is reported
    path = PACKAGE / "fs.py"
    tree_imports = list(imports("modelguard.fs", path))
    assert all(LAYER_OF[target] <= LAYER_OF["modelguard.fs"] for target, *_ in tree_imports)
    fake = tmp_path / "fake.py"
    fake.write_text("from . import guard\n\ndef f():\n    from .hub import fetch\n")
    found = [(t, local) for t, _, _, local in imports("modelguard.fs", fake)]
    assert found == [("modelguard.guard", False), ("modelguard.hub", True)]


def test_imports_go_down_the_layers_only():
    layer_names = list(LAYERS)
    upward = []
    for name, path in modules().items():
        for target, _, node, _ in imports(name, path):
            if LAYER_OF.get(target, -1) > LAYER_OF[name]:
                upward.append(f"{name} ({layer_names[LAYER_OF[name]]}) imports {target} "
                              f"({layer_names[LAYER_OF[target]]}) at line {node.lineno}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_function_local_imports_only_keep_imports_cheap():
    local = []
    for name, path in modules().items():
        skip = in_type_checking_block(ast.parse(path.read_text(encoding="utf-8")))
        for target, _, node, is_local in imports(name, path):
            if is_local and id(node) not in skip:
                local.append((name, target, node.lineno))
    unlisted = [f"{n} line {line}: {t}" for n, t, line in local if (n, t) not in CHEAP_IMPORTS]
    assert not unlisted, "function-local imports of modelguard modules (import at the top, or list the " \
                         "cheap-import reason in CHEAP_IMPORTS):\n" + "\n".join(unlisted)
    assert len(local) <= MAX_LOCAL_IMPORTS


def test_no_module_reaches_into_another_modules_private_names():
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        bound: set[str] = set()
        for target, names, node, _ in imports(name, path):
            if target == name:
                continue
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    found.append(f"{name} line {node.lineno}: from {target} import {imported}")
            for alias in node.names:  # names bound to a modelguard module
                if isinstance(node, ast.Import) or target.endswith(f".{alias.name}"):
                    bound.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{name} line {node.lineno}: {node.value.id}.{node.attr}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                    and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in bound
                    and isinstance(node.args[1], ast.Constant) and str(node.args[1].value).startswith("_")):
                found.append(f"{name} line {node.lineno}: getattr({node.args[0].id}, {node.args[1].value!r})")
    assert not found, "private names used across modules (give the name a public one):\n" + "\n".join(found)


def test_module_names_never_shadow_the_functions_users_call():
    code = (
        "import importlib, inspect, pkgutil, modelguard\n"
        "for m in pkgutil.walk_packages(modelguard.__path__, 'modelguard.'):\n"
        "    if not m.name.startswith('modelguard.hooks.') and m.name != 'modelguard.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "import modelguard.engine as engine\n"
        "print(inspect.ismodule(engine), [n for n in ('verify', 'probe', 'audit', 'fetch', 'install') "
        "if not inspect.isfunction(getattr(modelguard, n))])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "True []", proc.stdout


@pytest.mark.parametrize("name", ["AuditReport", "ProbeReport", "FetchResult", "VerifyReport", "FileResult",
                                  "GuardWarning", "UnknownModelWarning"])
def test_result_and_warning_types_are_exported(name):
    import modelguard

    assert name in modelguard.__all__
    assert isinstance(getattr(modelguard, name), type)


def test_download_error_takes_its_result_in_the_constructor():
    from modelguard.errors import DownloadError

    error = DownloadError("fetch failed", result="the fetch result", path="/models/x")
    assert error.result == "the fetch result" and error.exit_code == 1
    assert DownloadError("no result").result is None


def test_modules_stay_small():
    """No module over 600 lines; at most two over 450, each saying why in a comment on its first line."""
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert max(sizes.values()) <= 600, sorted(sizes.items(), key=lambda item: -item[1])[:3]
    large = [name for name, n in sizes.items() if n > 450]
    assert len(large) <= 2, large
    for name in large:
        first = modules()[name].read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("# over 450 lines:"), f"{name} ({sizes[name]} lines) says not why it is large"
