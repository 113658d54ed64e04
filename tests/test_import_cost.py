"""Importing modelguard, its CLI, and verifying a model from the command line import none of
the heavy libraries (checked in a fresh interpreter, where nothing was imported before)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "FlagEmbedding", "huggingface_hub", "sentence_transformers",
         "model_signing", "sigstore", "OpenSSL", "cryptography",
         "diffusers", "peft", "onnxruntime", "onnx", "safetensors")

PROBE = """
import json, sys
{code}
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))
print(json.dumps(heavy))
"""


def imported_heavy(code: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_probe_sees_a_heavy_import():
    # the check itself can fail: importing huggingface_hub is seen
    assert imported_heavy("import huggingface_hub") == ["huggingface_hub"]


@pytest.mark.parametrize(
    "code",
    [
        "import modelguard",
        "import modelguard.auto",
        "import modelguard.cli",
        "import modelguard; modelguard.load_manifest, modelguard.build_manifest, modelguard.ModelGuardError",
        "from modelguard.cli import build_parser; build_parser()",
        "import modelguard.auto",
        # signatures: the library is imported only when a signature is checked (cache miss) or written
        "import modelguard.signing, modelguard._commands._signed, modelguard._commands.sign",
        # pytest imports the plugin in every run; `modelguard run` execs the command at once
        "import modelguard.pytest_plugin",
        "import modelguard._commands.run, modelguard.recording",
    ],
)
def test_import_is_cheap(code):
    assert imported_heavy(code) == []


# What a guarded program's start (`import modelguard.auto`) must not pay for: each costs
# milliseconds and none is needed before the first model loads.
START_UP_AVOIDED = ("dataclasses", "inspect", "yaml", "typing", "modelguard.manifest_schema", "modelguard.engine",
                    "modelguard.preload", "modelguard.statcache", "modelguard.hashing", "modelguard.dependencies")


def test_a_guarded_programs_start_imports_only_what_it_needs():
    code = ("import json, sys\nimport modelguard.auto\n"
            f"print(json.dumps(sorted(set(sys.modules) & set({START_UP_AVOIDED!r}))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    # the probe can fail: the manifest schema brings dataclasses with it
    probe = code.replace("import modelguard.auto", "import modelguard.auto, modelguard.manifest_schema")
    again = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert json.loads(again.stdout) == ["dataclasses", "inspect", "modelguard.manifest_schema", "typing"]


def test_cli_verify_imports_no_heavy_library(minilm_dir):
    code = (
        "from modelguard.cli import main\n"
        f"rc = main(['verify', 'sentence-transformers/all-MiniLM-L6-v2', {str(minilm_dir)!r}, '--quiet'])\n"
        "assert rc == 0, rc\n"
    )
    assert imported_heavy(code) == []


def test_the_progress_bar_library_is_imported_only_to_draw():
    code = ("import json, sys\n"
            "from modelguard._commands._common import Progress\n"
            "Progress(1 << 40, 'verifying').close()\n"  # stderr is a pipe here: nothing to draw
            "before = 'tqdm' in sys.modules\n"
            "class Terminal:\n"
            "    def isatty(self): return True\n"
            "    def write(self, s): return len(s)\n"
            "    def flush(self): pass\n"
            "sys.stderr = Terminal()\n"
            "Progress(1 << 40, 'verifying').close()\n"
            "print(json.dumps([before, 'tqdm' in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [False, True]


def test_auto_patches_the_loaders_when_the_program_imports_them():
    # modelguard imports none of them itself; importing them afterwards patches their loaders.
    code = (
        "import modelguard.auto\n"
        "import safetensors.torch, onnxruntime, peft, diffusers\n"
        "from diffusers import DiffusionPipeline, UNet2DModel\n"
        "from modelguard.hooks import is_wrapped\n"
        "wrapped = [is_wrapped(f) for f in (safetensors.torch.load_file, safetensors.safe_open,\n"
        "           onnxruntime.InferenceSession.__init__, peft.PeftModel.load_adapter,\n"
        "           DiffusionPipeline.from_pretrained, UNet2DModel.from_pretrained)]\n"
        "assert all(wrapped), wrapped\n"
    )
    assert set(imported_heavy(code)) >= {"diffusers", "peft", "onnxruntime", "safetensors"}


# What a guarded load of a model already on disk does not need: downloads, signatures (none
# configured), the pickle gate (safetensors weights only), manifest writing.
LOAD_LAZY = ("modelguard.hub", "modelguard.signing", "modelguard.signature_lock", "modelguard.signature_sigstore",
             "modelguard.pickle_containers", "modelguard.pickle_gate", "modelguard.build")


def modules_after_a_guarded_check(directory, tmp_path, **env) -> list[str]:
    import os

    code = (
        "import json, sys\n"
        "from modelguard import preload\n"
        "with preload.verified_scope():\n"
        f"    resolved = preload.check_before_load({str(directory)!r}, loader='test')\n"
        "assert resolved.manifest is not None, resolved\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m in {LOAD_LAZY!r})))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELGUARD_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(clean, MODELGUARD_CACHE_DIR=str(tmp_path / "cache"), MODELGUARD_UNKNOWN="refuse",
                                   HF_HUB_OFFLINE="1", **env))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_guarded_load_imports_only_what_it_uses(minilm_dir, tmp_path):
    assert modules_after_a_guarded_check(minilm_dir, tmp_path) == []
    # the probe sees them when a load needs them: a signature requirement loads the signature checks
    assert {"modelguard.signing", "modelguard.signature_lock"} <= set(
        modules_after_a_guarded_check(minilm_dir, tmp_path, MODELGUARD_REQUIRE_SIGNATURE="0"))


def test_a_command_imports_only_its_own_module():
    # `modelguard run -- CMD` execs CMD at once: its start must not pay for the other commands
    # (the Hub client code, the verify engine, signing), which cost it 0.3 s.
    code = ("import json, sys\nfrom modelguard.cli import build_parser\n"
            "parser = build_parser('run')\nparser.parse_known_args(['run', '--', 'true'])\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('modelguard._commands.',"
            " 'modelguard.engine', 'modelguard.hub', 'modelguard.signing')))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["modelguard._commands.run"]
    # with no command named, every command's parser is built (the help lists them all)
    proc = subprocess.run([sys.executable, "-m", "modelguard", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and all(f"    {name}" in proc.stdout for name in
                                        ("verify", "build", "fetch", "scan", "audit", "lock", "sync", "run")), proc.stdout
