"""The command line as a user runs it (``python -m modelguard`` in a subprocess): exit codes,
human and JSON output, and a clear message, never a traceback, for a user's mistake."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.st_model import write_st_shaped_model
from modelguard import __version__
from modelguard.build import build_manifest
from modelguard.manifest import save_manifest

REVISION = "89abcdef0123456789abcdef0123456789abcdef"

REPORT_KEYS = ["modelguard", "ok", "model", "revision", "directory", "manifest", "summary",
               "failed_components", "missing_optional_components", "files", "extra_files",
               "strict_extra", "elapsed_s", "expectations"]
SUMMARY_KEYS = ["files", "ok", "failed", "skipped", "extra"]
FILE_KEYS = ["path", "component", "required", "status", "diagnosis", "message", "expected", "actual",
             "remedy", "cached"]
ERROR_KEYS = ["error", "message", "path", "expected", "actual", "remedy"]


@pytest.fixture
def tiny(tmp_path):
    """A small model folder and its manifest file."""
    root = write_st_shaped_model(tmp_path / "tiny", weights=os.urandom(40_000), config='{"hidden_size": 8}\n',
                                 tokenizer='{"model": {"vocab": {"a": 0}}}\n')
    manifest = tmp_path / "tiny.yaml"
    save_manifest(build_manifest(root, "org/tiny", REVISION), manifest)
    return root, manifest


def no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


def test_verify_ok_exits_0_with_one_line_per_file(tiny):
    root, manifest = tiny
    proc = run_cli("verify", str(manifest), str(root))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"org/tiny @ {REVISION[:12]}  in {root}"
    file_lines = [line for line in lines if line.startswith("  ok  ")]
    assert len(file_lines) == 4
    assert any("model.safetensors" in line and "ok (40.00 KB, sha256)" in line for line in file_lines)
    assert lines[-1] == "verified: 4 file(s) of org/tiny match the manifest"
    assert proc.stderr == ""


def test_verify_failure_exits_1_with_expected_actual_and_fix(tiny):
    root, manifest = tiny
    (root / "config.json").write_text("")
    proc = run_cli("verify", str(manifest), str(root))
    assert proc.returncode == 1
    out = proc.stdout
    assert re.search(r"^  FAIL  model +config\.json +is empty \(0 bytes\), expected 19 bytes$", out, re.M), out
    assert "        expected: size 19, md5 " in out
    assert "        actual:   size 0" in out
    assert f"        fix:      modelguard fetch org/tiny --revision {REVISION} --local-dir {root}" in out
    assert out.splitlines()[-1] == "FAILED: org/tiny: 1 of 4 file(s) failed (component(s): model)"
    no_traceback(proc)


def test_json_report_shape_and_stable_keys(tiny):
    root, manifest = tiny
    (root / "tokenizer.json").unlink()
    (root / "notes.txt").write_text("mine")
    proc = run_cli("verify", str(manifest), str(root), "--json")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert list(doc) == REPORT_KEYS
    assert list(doc["summary"]) == SUMMARY_KEYS
    assert all(list(f) == FILE_KEYS for f in doc["files"])
    assert doc["modelguard"] == __version__
    assert doc["ok"] is False and doc["model"] == "org/tiny" and doc["revision"] == REVISION
    assert doc["directory"] == str(root) and doc["manifest"] == str(manifest)
    assert doc["expectations"] == {"origin": "manifest", "source": str(manifest), "completeness_checked": True}
    assert doc["summary"] == {"files": 4, "ok": 3, "failed": 1, "skipped": 0, "extra": 1}
    assert doc["failed_components"] == ["tokenizer"]
    assert doc["extra_files"] == ["notes.txt"] and doc["strict_extra"] is False
    assert [f["path"] for f in doc["files"]] == sorted(f["path"] for f in doc["files"])
    bad = next(f for f in doc["files"] if f["path"] == "tokenizer.json")
    assert bad["status"] == "failed" and bad["diagnosis"] == "missing" and bad["required"] is True
    assert bad["actual"] == {"exists": False} and bad["expected"]["size"] == 31
    assert bad["remedy"].startswith("modelguard fetch org/tiny")
    good = next(f for f in doc["files"] if f["path"] == "model.safetensors")
    assert good["status"] == "ok" and good["actual"]["sha256"] == good["expected"]["sha256"]
    assert isinstance(doc["elapsed_s"], float)


def test_json_ok_report(tiny):
    root, manifest = tiny
    proc = run_cli("verify", str(manifest), str(root), "--json", "--all-digests")
    assert proc.returncode == 0
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["summary"]["ok"] == 4
    assert all(set(f["actual"]) == {"size", "md5", "sha256"} for f in doc["files"])


def test_json_error_document_for_a_bad_manifest(tiny, tmp_path):
    root, _ = tiny
    bad = tmp_path / "bad.yaml"
    bad.write_text("modelguard: 1\nmodel: org/tiny\ncomponents: {model: {}}\nfiles:\n- {path: a, size: -1, sha256: x}\n")
    proc = run_cli("verify", str(bad), str(root), "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert list(doc) == ["ok", "error"] and doc["ok"] is False
    assert list(doc["error"]) == ERROR_KEYS
    assert doc["error"]["error"] == "ManifestError"
    assert doc["error"]["message"] == f"manifest {bad}: files[0] (a).size: negative size"
    assert doc["error"]["path"] == str(bad)
    assert "negative size" in proc.stderr
    no_traceback(proc)


def test_quiet_prints_only_failures_and_the_summary(tiny):
    root, manifest = tiny
    ok = run_cli("verify", str(manifest), str(root), "--quiet")
    assert ok.returncode == 0
    assert ok.stdout == "verified: 4 file(s) of org/tiny match the manifest\n"
    (root / "model.safetensors").write_bytes(b"\x00" * 10)
    failed = run_cli("verify", str(manifest), str(root), "-q")
    assert failed.returncode == 1
    lines = failed.stdout.splitlines()
    assert lines[0].startswith("FAIL model.safetensors [model]: truncated: 10 of 40000 bytes present")
    assert lines[1].startswith("     fix: modelguard fetch org/tiny")
    assert lines[2] == "FAILED: org/tiny: 1 of 4 file(s) failed (component(s): model)"
    assert len(lines) == 3


def test_strict_makes_extra_files_fail(tiny):
    root, manifest = tiny
    (root / "notes.txt").write_text("mine")
    assert run_cli("verify", str(manifest), str(root)).returncode == 0
    proc = run_cli("verify", str(manifest), str(root), "--strict")
    assert proc.returncode == 1
    assert "FAIL  1 file(s) not in the manifest: notes.txt" in proc.stdout
    assert (root / "notes.txt").read_text() == "mine"  # listed, never deleted


def test_components_option(tiny):
    root, manifest = tiny
    (root / "tokenizer.json").unlink()
    assert run_cli("verify", str(manifest), str(root), "--components", "model").returncode == 0
    proc = run_cli("verify", str(manifest), str(root), "--components", "model,heads")
    assert proc.returncode == 2
    assert "modelguard: error: unknown component(s) heads for org/tiny" in proc.stderr
    no_traceback(proc)


def test_model_id_finds_its_manifest_and_its_hf_cache_snapshot(tiny, isolated_env):
    root, manifest = tiny
    user_dir = Path(os.environ["XDG_CONFIG_HOME"]) / "modelguard" / "manifests" / "org"
    user_dir.mkdir(parents=True)
    shutil.copy(manifest, user_dir / "tiny.yaml")
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / "models--org--tiny" / "snapshots" / REVISION
    shutil.copytree(root, snapshot)
    proc = run_cli("verify", "org/tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"in {snapshot}" in proc.stdout.splitlines()[0]
    # not in the cache: the message says where it looked and what to run
    shutil.rmtree(snapshot.parent.parent)
    proc = run_cli("verify", "org/tiny")
    assert proc.returncode == 2
    assert f"org/tiny @ {REVISION[:12]} is not in the Hugging Face cache ({os.environ['HF_HUB_CACHE']})" in proc.stderr
    assert f"modelguard fetch org/tiny --revision {REVISION}" in proc.stderr
    no_traceback(proc)


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("nonexistent dir", ["verify", "{manifest}", "{tmp}/nope"], "model directory {tmp}/nope does not exist"),
        ("file as dir", ["verify", "{manifest}", "{manifest}"], "{manifest} is not a directory"),
        ("bad manifest", ["verify", "{tmp}/bad.yaml", "{root}"], "manifest {tmp}/bad.yaml: top level: missing key 'modelguard'"),
        ("missing manifest", ["verify", "{tmp}/absent.yaml", "{root}"], "manifest {tmp}/absent.yaml does not exist"),
        ("unknown model id", ["verify", "nobody/nothing", "{root}"], "no manifest known for nobody/nothing"),
        ("directory as target", ["verify", "{root}"], "{root} is a directory with no source of expectations: no manifest names it"),
        ("not a model id", ["verify", "a/b/c", "{root}"], "'a/b/c' is not a model id"),
        ("build without --model", ["build", "{root}"], "build needs --model"),
        ("build without dir", ["build", "--model", "org/x"], "build needs a model directory"),
        ("build of a missing dir", ["build", "{tmp}/nope", "--model", "org/x"], "model directory {tmp}/nope does not exist"),
        ("build -o exists", ["build", "{root}", "--model", "org/x", "-o", "{manifest}"], "{manifest} exists; not overwritten"),
        ("build -o under a file", ["build", "{root}", "--model", "org/x", "-o", "{manifest}/x.yaml"],
         "cannot write {manifest}/x.yaml: {manifest} is not a directory"),
        ("verify without target", ["verify"], "verify needs a TARGET, or --lock to verify every locked model"),
        ("unknown option", ["verify", "--frobnicate", "x"],
         "unknown option '--frobnicate'; modelguard verify takes: --all-digests, --all-files, --cache-dir, "
         "--certificate-chain, --components, --help, --json, --local-dir, --lock, --no-cache, --public-key, --quiet, "
         "--rehash, --revision, "
         "--scan, --strict"),
        ("mistyped option", ["verify", "{manifest}", "{root}", "--strcit"], "unknown option '--strcit'; did you mean '--strict'?"),
        ("mistyped option with a value", ["build", "{root}", "--modle=org/x"], "unknown option '--modle'; did you mean '--model'?"),
        ("mistyped option of scan", ["scan", "--cache-dri", "{tmp}"], "unknown option '--cache-dri'; did you mean '--cache-dir'?"),
        ("mistyped top-level option", ["--verison"], "unknown option '--verison'; did you mean '--version'?"),
        ("extra argument", ["verify", "{manifest}", "{root}", "surplus"], "unrecognized arguments: surplus"),
    ],
)
def test_user_mistakes_exit_2_with_a_message_and_no_traceback(tiny, tmp_path, case, args, message):
    root, manifest = tiny
    (tmp_path / "bad.yaml").write_text("model: org/tiny\n")
    before = manifest.read_bytes()
    fill = {"manifest": manifest, "tmp": tmp_path, "root": root}
    proc = run_cli(*[a.format(**fill) for a in args])
    assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
    assert f"modelguard: error: {message.format(**fill)}" in proc.stderr
    no_traceback(proc)
    assert manifest.read_bytes() == before  # nothing the user owns was touched


def test_no_command_prints_help_and_exits_2():
    proc = run_cli()
    assert proc.returncode == 2
    assert "usage: modelguard" in proc.stderr and "verify" in proc.stderr


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"modelguard {__version__}"


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "modelguard"
    if not script.exists():
        pytest.skip("modelguard is not installed as a console script in this environment")
    import subprocess

    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"modelguard {__version__}"


class _Terminal:
    """A text stream that says it is a terminal, to see what a user's terminal would get."""

    def __init__(self, tty: bool):
        self.tty = tty
        self.text = ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("tty, total, drawn", [(True, 512 << 20, True), (False, 512 << 20, False),
                                                (True, 1 << 20, False)])
def test_progress_is_drawn_only_on_a_terminal_for_long_jobs(monkeypatch, tty, total, drawn):
    from modelguard._commands._common import Progress

    terminal = _Terminal(tty)
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = Progress(total, "verifying org/tiny", mininterval=0)
    progress(total // 2)
    drawing = terminal.text
    progress.close()
    if drawn:  # tqdm's bar: percent, bytes, time so far < time left, rate
        assert re.search(r"\rverifying org/tiny:  50%\|.*\| 256M/512M \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[KMGT]?B/s\]",
                         drawing), drawing
        assert terminal.text.endswith("\r") and len(terminal.text) > len(drawing)  # the line is cleared at the end
    else:
        assert terminal.text == ""


def test_revision_option_picks_the_cache_snapshot_of_a_branch(tiny, tmp_path):
    root, _ = tiny
    unpinned = tmp_path / "unpinned.yaml"
    save_manifest(build_manifest(root, "org/tiny"), unpinned)  # no revision recorded
    user_dir = Path(os.environ["XDG_CONFIG_HOME"]) / "modelguard" / "manifests" / "org"
    user_dir.mkdir(parents=True)
    shutil.copy(unpinned, user_dir / "tiny.yaml")
    repo = Path(os.environ["HF_HUB_CACHE"]) / "models--org--tiny"
    shutil.copytree(root, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(REVISION)
    proc = run_cli("verify", "org/tiny", "--revision", "v1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"in {repo / 'snapshots' / REVISION}" in proc.stdout.splitlines()[0]
    # without --revision, main is looked for, and the cache has no refs/main
    proc = run_cli("verify", "org/tiny")
    assert proc.returncode == 2 and "org/tiny is not in the Hugging Face cache" in proc.stderr


# --------------------------------------------------------------------------- any output encoding

NON_ASCII_DIR = "modèle-日本"
NON_ASCII_FILE = "poids-ß.bin"


@pytest.fixture
def non_ascii_model(tmp_path):
    folder = tmp_path / NON_ASCII_DIR
    folder.mkdir()
    (folder / NON_ASCII_FILE).write_bytes(os.urandom(2000))
    (folder / "config.json").write_text('{"a": 1}\n')
    manifest = tmp_path / "m.yaml"
    save_manifest(build_manifest(folder, "org/tiny"), manifest)
    return folder, manifest


ASCII = {"PYTHONIOENCODING": "ascii"}


def test_non_ascii_paths_print_on_an_ascii_only_output(non_ascii_model):
    folder, manifest = non_ascii_model
    proc = run_cli("verify", str(manifest), str(folder), env=ASCII)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "mod\\xe8le-\\u65e5\\u672c" in proc.stdout  # the folder, escaped
    assert "poids-\\xdf.bin" in proc.stdout
    (folder / NON_ASCII_FILE).write_bytes(os.urandom(2000))
    proc = run_cli("verify", str(manifest), str(folder), env=ASCII)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "FAIL" in proc.stdout and "poids-\\xdf.bin" in proc.stdout
    assert "fix:" in proc.stdout and "--local-dir" in proc.stdout


def test_error_about_a_non_ascii_path_on_an_ascii_only_output(tmp_path, non_ascii_model):
    _, manifest = non_ascii_model
    proc = run_cli("verify", str(manifest), str(tmp_path / "absent-é"), env=ASCII)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "absent-\\xe9 does not exist" in proc.stderr


def test_undecodable_file_name_prints_escaped(tmp_path):
    """A name that is not UTF-8 at all (kept by Python as lone surrogates) fails any encoding."""
    folder = tmp_path / "bytes"
    folder.mkdir()
    (folder / "ok.bin").write_bytes(b"x" * 10)
    manifest = tmp_path / "m.yaml"
    save_manifest(build_manifest(folder, "org/tiny"), manifest)
    with open(os.path.join(os.fsencode(folder), b"extra-\xff.bin"), "wb") as f:
        f.write(b"y")
    proc = run_cli("verify", str(manifest), str(folder), "--strict")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "extra-\\udcff.bin" in proc.stdout


def test_build_to_an_ascii_only_stdout_writes_a_utf8_manifest(tmp_path, non_ascii_model):
    import subprocess

    folder, _ = non_ascii_model
    proc = subprocess.run([sys.executable, "-m", "modelguard", "build", str(folder), "--model", "org/tiny"],
                          capture_output=True, env=dict(os.environ, **ASCII))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode("utf-8")
    assert f"path: {NON_ASCII_FILE}" in text
    saved = tmp_path / "from-stdout.yaml"
    saved.write_bytes(proc.stdout)
    check = run_cli("verify", str(saved), str(folder), env=ASCII)
    assert check.returncode == 0, check.stdout + check.stderr
