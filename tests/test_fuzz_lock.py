"""Fuzzing the lock loader with the manifest fuzz harness's strategies: every input loads (and
round-trips byte for byte) or raises ManifestError with a message naming the lock file.

The seeds are locks made from the shipped manifests (each manifest's body, plus a commit, as
one entry). MODELGUARD_FUZZ_EXAMPLES scales the budget like the manifest fuzz.
"""

from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from test_fuzz_manifest import BILLION_LAUGHS, FUZZ, TEXTS, _run_bounded, snippets, structures

from helpers.cli import run_cli
from modelguard import manifest as manifest_module
from modelguard.errors import ManifestError
from modelguard.lockfile import Lock, dump_lock, parse_lock_text

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lock_text_of(manifest_text: str, n: int) -> str:
    data = yaml.safe_load(manifest_text)
    model = data.pop("model")
    data.pop("modelguard")
    data.pop("description", None)
    data["revision"] = f"{n:040x}" if n else COMMIT
    return yaml.safe_dump({"modelguard_lock": 1, "models": {model: data}}, sort_keys=False)


LOCKS = [lock_text_of(text, i) for i, text in enumerate(TEXTS)]
BASE = LOCKS[0]


def check(data: str | bytes) -> Lock | ManifestError:
    try:
        lock = parse_lock_text(data, source="fuzz.lock")
    except ManifestError as exc:
        assert exc.message.strip()
        assert str(exc).startswith(exc.message)
        assert "fuzz.lock" in exc.message, exc.message  # names the lock file
        return exc
    assert isinstance(lock, Lock)
    text = dump_lock(lock)
    again = parse_lock_text(text, source="again.lock")
    assert again.to_dict() == lock.to_dict() and dump_lock(again) == text
    return lock


@st.composite
def mutated_lock(draw):
    text = draw(st.sampled_from(LOCKS))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 80)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(snippets) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(snippets) + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


@FUZZ
@given(mutated_lock())
def test_fuzz_mutated_locks(text):
    check(text)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data):
    check(data)


@FUZZ
@given(structures, st.sampled_from([None, True, False]))
def test_fuzz_random_structures_as_entries(value, flow):
    check(yaml.safe_dump({"modelguard_lock": 1, "models": {"org/name": value}}, default_flow_style=flow))
    check(yaml.safe_dump(value, default_flow_style=flow))


def test_seed_locks_load_and_round_trip():
    for text in LOCKS:
        lock = check(text)
        assert isinstance(lock, Lock) and len(lock.entries) == 1


HOSTILE = {
    "alias-bomb": (BILLION_LAUGHS, "anchors (&name) are not allowed"),
    "python-tag": ("!!python/object/apply:os.system ['touch /tmp/modelguard-lock-fuzz-pwned']\n",
                   "YAML tag '!!python/object/apply:os.system' is not allowed"),
    "deep-flow": ("[" * 100_000, "nesting deeper than"),
    "duplicate-model": (BASE + BASE.split("models:\n", 1)[1], "duplicate key"),
    "too-large": ("# " + "x" * (8 * 1024 * 1024), "too large to be a lock file"),
    "non-utf8": (BASE.encode().replace(b"revision:", b"revision: \xff", 1), "not UTF-8 text"),
    "empty": ("", "top level: not a mapping: the file is empty"),
    "branch": (BASE.replace(COMMIT, "main"), ".revision: not a commit"),
    "schema": (BASE.replace("modelguard_lock: 1", "modelguard_lock: 2"), "unsupported lock schema version"),
    "bad-id": (BASE.replace("models:\n  ", "models:\n  ../", 1), "is not a model id"),
    "dotdot": (BASE.replace("path: ", "path: ../", 1), "'..' is not allowed"),
    "model-key": (BASE.replace("  revision:", "  model: other/x\n    revision:", 1), "unknown key 'model'"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_lock_inputs(name, monkeypatch):
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 8 * 1024 * 1024)
    data, expected = HOSTILE[name]
    result = _run_bounded(lambda: check(data))
    assert isinstance(result, ManifestError), f"{name} loaded"
    assert expected in str(result), str(result)
    assert not os.path.exists("/tmp/modelguard-lock-fuzz-pwned")


@pytest.mark.parametrize("name", ["python-tag", "duplicate-model", "branch", "dotdot", "empty"])
def test_hostile_locks_are_a_clear_error_from_every_command(name, tmp_path):
    data, expected = HOSTILE[name]
    lock = tmp_path / "modelguard.lock"
    lock.write_text(data) if isinstance(data, str) else lock.write_bytes(data)
    for args in (("verify", "--lock"), ("sync",), ("lock", "add", "org/name"), ("verify", "org/name")):
        proc = run_cli(*args, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith(f"modelguard: error: "), proc.stderr
        assert expected in proc.stderr and str(lock) in proc.stderr, (args, proc.stderr)
