"""Fix lines print commands a user pastes into a shell: every path, model id and revision
in them is quoted for a POSIX shell, so a hostile folder name runs nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from modelguard import verify
from modelguard.errors import UsageError
from modelguard.manifest import parse_manifest_text

from helpers.cli import run_cli

HOSTILE = "dl $(touch PWNED) `touch PWNED2`; touch PWNED3 'x\""
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _manifest(model: str, files: dict[str, bytes], revision: str | None = REVISION) -> str:
    lines = ["modelguard: 1", f"model: {model}"] + ([f"revision: {revision}"] if revision else []) + [
        "components:", "  weights: {required: true}", "files:"]
    for name, data in files.items():
        lines += [f"- path: {name}", f"  size: {len(data)}", "  component: weights",
                  f"  sha256: {hashlib.sha256(data).hexdigest()}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def hostile(tmp_path):
    """A model folder whose name would run commands if pasted unquoted; cwd is a scratch folder
    where a PWNED file would appear."""
    work = tmp_path / "work"
    work.mkdir()
    folder = work / HOSTILE
    folder.mkdir()
    return work, folder


def _fix_lines(text: str) -> list[str]:
    return [line.split("fix:", 1)[1].strip() for line in text.splitlines() if "fix:" in line]


def _run_in_shell(command: str, cwd: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    """Run ``command`` with ``sh`` in ``cwd``, where ``git`` and ``modelguard`` are recorders
    that write their argv (one per line) to argv.txt."""
    bin_dir.mkdir(exist_ok=True)
    for name in ("git", "modelguard"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\nprintf "%s\\n" {name} "$@" > "{bin_dir}/argv.txt"\n')
        tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")
    return subprocess.run(["sh", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def _assert_nothing_ran(work: Path) -> None:
    leftovers = sorted(p.name for p in work.iterdir() if p.name.startswith("PWNED"))
    assert leftovers == [], f"a fix line ran code: {leftovers}"


def test_lfs_pointer_fix_line_survives_a_hostile_folder_name(hostile, tmp_path, isolated_env):
    work, folder = hostile
    data = os.urandom(4096)
    (work / "m.yaml").write_text(_manifest("org/tiny", {"model.bin": data}))
    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
               f"size {len(data)}\n")
    (folder / "model.bin").write_text(pointer)
    proc = run_cli("verify", str(work / "m.yaml"), str(folder), cwd=work)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "is a Git LFS pointer stub" in proc.stdout
    [fix] = _fix_lines(proc.stdout)
    assert shlex.split(fix) == ["cd", str(folder), "&&", "git", "lfs", "pull", "--include", "model.bin"]
    assert subprocess.run(["sh", "-n", "-c", fix]).returncode == 0
    ran = _run_in_shell(fix, work, tmp_path / "bin")
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "bin" / "argv.txt").read_text().splitlines() == ["git", "lfs", "pull", "--include", "model.bin"]
    _assert_nothing_ran(work)
    _assert_nothing_ran(folder)


def test_fetch_fix_line_quotes_the_local_dir(hostile, tmp_path, isolated_env):
    work, folder = hostile
    (work / "m.yaml").write_text(_manifest("org/tiny", {"model.bin": b"x" * 100}))
    proc = run_cli("verify", str(work / "m.yaml"), str(folder), cwd=work)
    assert proc.returncode == 1
    assert "model.bin" in proc.stdout and "missing" in proc.stdout
    [fix] = _fix_lines(proc.stdout)
    argv = ["modelguard", "fetch", "org/tiny", "--revision", REVISION, "--local-dir", str(folder)]
    assert shlex.split(fix) == argv
    ran = _run_in_shell(fix, work, tmp_path / "bin")
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "bin" / "argv.txt").read_text().splitlines() == argv
    _assert_nothing_ran(work)


def test_missing_model_directory_remedy_is_quoted(hostile):
    work, folder = hostile
    manifest = parse_manifest_text(_manifest("org/tiny", {"model.bin": b"x"}), "m.yaml")
    gone = folder / "not-here"
    with pytest.raises(UsageError, match="does not exist") as info:
        verify(manifest, gone)
    command = info.value.remedy.split(": ", 1)[1]
    assert shlex.split(command) == ["modelguard", "fetch", "org/tiny", "--revision", REVISION,
                                    "--local-dir", str(gone)]


def test_directory_as_target_remedy_is_quoted(hostile):
    work, folder = hostile
    proc = run_cli("verify", str(folder), cwd=work)
    assert proc.returncode == 2
    fix = _fix_lines(proc.stderr)[0]
    first = fix.split("name the manifest first: ", 1)[1].split(", or write one: ")[0]
    second = fix.split(", or write one: ", 1)[1].split("; or download the model", 1)[0]
    assert shlex.split(first) == ["modelguard", "verify", "MANIFEST.yaml", str(folder)]
    assert shlex.split(second) == ["modelguard", "build", str(folder), "--model", "ORG/NAME", "-o", "MANIFEST.yaml"]


def test_build_without_model_remedy_is_quoted(hostile):
    work, folder = hostile
    proc = run_cli("build", str(folder), cwd=work)
    assert proc.returncode == 2
    [fix] = _fix_lines(proc.stderr)
    assert shlex.split(fix) == ["modelguard", "build", str(folder), "--model", "ORG/NAME"]


def test_guard_unknown_model_remedy_is_quoted(hostile, isolated_env):
    from modelguard import guard

    work, folder = hostile
    (folder / "config.json").write_text("{}")
    with pytest.warns(guard.UnknownModelWarning) as caught:
        with guard.verified_scope():
            guard.check_before_load(folder)
    text = str(caught[0].message)
    command = text.split("fix: write a manifest: `", 1)[1].split("`; or ", 1)[0]
    assert shlex.split(command) == ["modelguard", "build", str(folder), "--model", "ORG/NAME",
                                    "-o", str(folder / "modelguard.yaml")]


def test_fetch_command_line_quotes_every_part(tmp_path):
    from modelguard.hub.download import _fetch_command

    manifest = parse_manifest_text(_manifest("org/tiny", {"model.bin": b"x"}), "m.yaml")
    local = tmp_path / HOSTILE
    assert shlex.split(_fetch_command(manifest, None, local)) == [
        "modelguard", "fetch", "org/tiny", "--revision", REVISION, "--local-dir", str(local)]
    assert shlex.split(_fetch_command(manifest, None, None, cache_dir=local)) == [
        "modelguard", "fetch", "org/tiny", "--revision", REVISION, "--cache-dir", str(local)]
