"""``modelguard run -- CMD``: an unmodified Python program runs with the loader guard installed
(a sitecustomize first on PYTHONPATH), the command replaces ``run`` (same process, its exit
code), and a user's own sitecustomize still runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need

import modelguard
from modelguard._bootstrap import DIRECTORY as BOOTSTRAP

need("transformers")

LOAD_SCRIPT = """
import sys
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1])
print("BUILT", type(model).__name__, flush=True)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from helpers.tiny_bert import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("run-bert") / "bert")


@pytest.fixture
def model_dir(tiny_bert, tmp_path) -> Path:
    """A copy of the tiny BERT with its manifest (modelguard.yaml) in the folder."""
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "tiny-bert"))
    modelguard.save_manifest(modelguard.build_manifest(folder, "acme/tiny-bert"), folder / "modelguard.yaml")
    return folder


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def script(tmp_path: Path, text: str, name: str = "script.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


OFFLINE = {"HF_HUB_OFFLINE": "1"}


def test_a_corrupted_model_is_refused_before_it_is_built(model_dir, tmp_path):
    flip_byte(model_dir / "model.safetensors")
    load = script(tmp_path, LOAD_SCRIPT)
    # unguarded, the same script builds a model from the damaged weights
    plain = python(str(load), str(model_dir), env=OFFLINE)
    assert plain.returncode == 0 and "BUILT BertModel" in plain.stdout, plain.stderr[-2000:]
    proc = run_cli("run", "--", sys.executable, str(load), str(model_dir), env=OFFLINE)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "BUILT" not in proc.stdout
    assert "VerificationError: modelguard refused to load acme/tiny-bert" in proc.stderr
    assert "FAIL model.safetensors [model]: right size, wrong content: sha256: expected" in proc.stderr
    assert "manifest: modelguard.yaml in the model directory" in proc.stderr


def test_an_intact_model_loads_and_the_scripts_exit_code_passes_through(model_dir, tmp_path):
    load = script(tmp_path, LOAD_SCRIPT)
    # `python` as a user types it: the environment's interpreter first on PATH, as in an activated venv
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    proc = run_cli("run", "--", "python", str(load), str(model_dir), "3", env={**OFFLINE, "PATH": path})
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "BUILT BertModel" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_the_command_replaces_run_and_gets_the_guard_without_heavy_imports(tmp_path):
    probe = script(tmp_path, """
        import os, sys
        from modelguard import guard
        heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'huggingface_hub',
                                                                'sentence_transformers', 'FlagEmbedding'})
        print(os.getpid(), guard.is_installed(), guard.current_policy().effective_unknown(), heavy,
              os.environ.get('HF_HUB_OFFLINE'))
    """)
    child = subprocess.Popen([sys.executable, "-m", "modelguard", "run", "--unknown", "refuse", "--offline", "--",
                              sys.executable, str(probe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    pid, installed, unknown, heavy, offline = out.split(maxsplit=4)
    # exec: the program runs in the process `modelguard run` started as, so signals reach it directly
    assert int(pid) == child.pid
    assert (installed, unknown, heavy, offline.strip()) == ("True", "refuse", "[]", "1")


def test_a_user_sitecustomize_still_runs(tmp_path):
    user = tmp_path / "user-site"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import os\nos.environ['USER_SITECUSTOMIZE'] = 'ran'\n")
    probe = script(tmp_path, """
        import os, sys, sitecustomize
        from modelguard import guard
        print(guard.is_installed(), os.environ.get('USER_SITECUSTOMIZE'), sitecustomize.__file__)
        print([p for p in sys.path if 'modelguard' in p and '_bootstrap' in p])
    """)
    pythonpath = os.pathsep.join([str(user), os.environ.get("PYTHONPATH", "")])
    proc = run_cli("run", "--", sys.executable, str(probe), env={"PYTHONPATH": pythonpath})
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == f"True ran {user / 'sitecustomize.py'}"
    assert second == "[]"  # the bootstrap folder is taken off sys.path once it ran


def test_grandchild_pythons_are_guarded_too(tmp_path):
    inner = script(tmp_path, "from modelguard import guard\nprint('inner', guard.is_installed())\n", "inner.py")
    outer = script(tmp_path, f"import subprocess, sys\nsubprocess.run([sys.executable, {str(inner)!r}], check=True)\n",
                   "outer.py")
    proc = run_cli("run", "--", sys.executable, str(outer))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "inner True"
    # and the environment does not pile up bootstrap folders when run is nested
    nested = run_cli("run", "--", sys.executable, "-m", "modelguard", "run", "--", sys.executable, "-c",
                     "import os; print(os.environ['PYTHONPATH'].split(os.pathsep).count(%r))" % BOOTSTRAP)
    assert nested.returncode == 0, nested.stderr
    assert nested.stdout.strip() == "1"


def test_a_command_that_is_not_found_is_exit_2_with_the_fix():
    proc = run_cli("run", "--", "no-such-program-here", "--flag")
    assert proc.returncode == 2
    assert "modelguard run: cannot run no-such-program-here: no such command on PATH" in proc.stderr
    assert "fix:      check the spelling, install the program, or give its full path" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_file_that_is_not_executable_is_exit_2(tmp_path):
    plain = script(tmp_path, "print('never')\n")
    proc = run_cli("run", "--", str(plain))
    assert proc.returncode == 2
    assert f"cannot run {plain}: the file is not executable" in proc.stderr
    assert f"fix:      chmod +x {plain}, or start it with its interpreter (python {plain})" in proc.stderr


def test_no_command_and_a_missing_lock_are_exit_2(tmp_path):
    proc = run_cli("run", "--unknown", "refuse")
    assert proc.returncode == 2
    assert "modelguard run: no command to run" in proc.stderr
    assert "fix:      name the program, e.g. modelguard run -- python app.py" in proc.stderr
    missing = tmp_path / "nope.lock"
    proc = run_cli("run", "--lock", str(missing), "--", sys.executable, "-c", "print('never')")
    assert proc.returncode == 2 and "never" not in proc.stdout
    assert f"modelguard run: lock file {missing} does not exist" in proc.stderr
    bad = run_cli("run", "--unknown", "sometimes", "--", "python")
    assert bad.returncode == 2 and "invalid choice: 'sometimes'" in bad.stderr


def test_a_python_that_cannot_import_modelguard_stops_instead_of_running_unguarded(tmp_path):
    broken = tmp_path / "broken" / "modelguard"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('a broken install')\n")
    env = {"PYTHONPATH": os.pathsep.join([BOOTSTRAP, str(broken.parent)])}
    proc = python("-c", "print('the program ran')", env=env)
    assert proc.returncode == 2
    assert "the program ran" not in proc.stdout
    assert f"modelguard run: this Python ({sys.executable}) cannot import modelguard: a broken install" in proc.stderr
    assert "fix: install modelguard in the environment of the command" in proc.stderr


def test_the_bootstrap_module_imported_by_name_does_nothing():
    proc = python("-c", "import sys, modelguard._bootstrap.sitecustomize as s; from modelguard import guard; "
                        "print(guard.is_installed(), 'modelguard.auto' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False False"
