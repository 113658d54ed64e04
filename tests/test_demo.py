"""tools/demo.py, the job behind `make demo`: real files pass, a broken copy is diagnosed,
and the installed package's files are left as they were."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from helpers.cli import REPO


def fingerprint(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns,
                                               hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_demo_passes_and_shows_each_diagnosis(minilm_dir):
    before = fingerprint(minilm_dir)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    # the good run, as the user sees it
    assert "verified: 3 file(s) of sentence-transformers/all-MiniLM-L6-v2 match the manifest\n(exit code 0)" in out
    # the broken run: each breakage named with its cause
    assert "right size, wrong content: sha256: expected 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db" in out
    assert "is a Git LFS pointer stub (131 bytes), not the file; this is the pointer to the right file" in out
    assert "truncated: 306 of 612 bytes present (50.0%" in out
    assert "FAILED: sentence-transformers/all-MiniLM-L6-v2: 3 of 3 file(s) failed" in out
    assert "(exit code 1)" in out
    assert out.rstrip().endswith("config.json: truncated")
    assert "demo passed" in out
    assert fingerprint(minilm_dir) == before  # the installed package was only read


def test_demo_fails_when_the_good_files_do_not_verify(tmp_path):
    # A manifest earlier on the search path that disagrees with the real files: the demo must say so.
    from modelguard import registry
    from modelguard.manifest import dump_manifest, parse_manifest_text

    shipped = registry.require_manifest("sentence-transformers/all-MiniLM-L6-v2").to_dict()
    for entry in shipped["files"]:
        if entry["path"] == "config.json":
            entry["sha256"] = "0" * 64
    folder = tmp_path / "manifests" / "sentence-transformers"
    folder.mkdir(parents=True)
    (folder / "all-MiniLM-L6-v2.yaml").write_text(dump_manifest(parse_manifest_text(json.dumps(shipped))))
    env = {**os.environ, "MODELGUARD_MANIFEST_PATH": str(tmp_path / "manifests")}
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 1
    assert "demo FAILED:" in proc.stdout
    assert "the intact files did not verify (exit 1, expected 0)" in proc.stdout
    assert "demo passed" not in proc.stdout
