"""Fuzzing the manifest loader: every input loads or raises ManifestError with a message.

No other exception, no hang, bounded memory. The number of inputs tried is printed
in the terminal summary ("manifest fuzz: N inputs ..."). MODELGUARD_FUZZ_EXAMPLES
scales the budget (default 400 per strategy, ~2,000 in all).
"""

from __future__ import annotations

import collections
import math
import os
import threading
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelguard import manifest as manifest_module
from modelguard.errors import ManifestError
from modelguard.manifest import Manifest, dump_manifest, load_manifest, parse_manifest_text

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "manifests").rglob("*.yaml"))
TEXTS = [p.read_text() for p in SHIPPED]
BUDGET = int(os.environ.get("MODELGUARD_FUZZ_EXAMPLES", "400"))
FUZZ = settings(max_examples=BUDGET, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

COUNTS: collections.Counter = collections.Counter()


class _FuzzSummary:
    """Prints the number of fuzz inputs at the end of the run (shown without -s)."""

    def pytest_terminal_summary(self, terminalreporter):
        if COUNTS:
            total = sum(v for k, v in COUNTS.items() if not k.startswith("outcome:"))
            parts = ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items()))
            terminalreporter.write_line(f"manifest fuzz: {total} inputs tried ({parts})")


@pytest.fixture(autouse=True, scope="module")
def _report_counts(request):
    plugin = "modelguard-manifest-fuzz-summary"
    if not request.config.pluginmanager.has_plugin(plugin):
        request.config.pluginmanager.register(_FuzzSummary(), plugin)
    yield


def check(data: str | bytes, strategy: str) -> Manifest | ManifestError:
    """The property: a Manifest that round-trips, or a ManifestError with a message."""
    COUNTS[strategy] += 1
    try:
        m = parse_manifest_text(data, source="fuzz.yaml")
    except ManifestError as exc:
        COUNTS["outcome:refused"] += 1
        assert exc.message.strip(), "ManifestError without a message"
        assert str(exc).startswith(exc.message)
        assert "fuzz.yaml" in exc.message, exc.message  # names the manifest
        return exc
    COUNTS["outcome:loaded"] += 1
    assert isinstance(m, Manifest) and m.files and m.components
    again = parse_manifest_text(dump_manifest(m), source="again.yaml")
    assert again.to_dict() == m.to_dict()
    return m


# --------------------------------------------------------------------------- strategies

YAML_ALPHABET = st.sampled_from(list(":-[]{}&*!|>'\"#%@`,?\n\t ~0123456789abcdefxyz/.\\\x00\u00e9\u2028\ufeff"))
snippets = st.text(YAML_ALPHABET, max_size=12) | st.sampled_from(
    ["&a ", "*a", "<<: ", "!!python/object/apply:os.system ['echo x']", "!!binary aGk=", "\n- ", ": ",
     "1e400", "9" * 60, "-1", "0x1F", "0o17", ".nan", "2001-12-14", "null", "yes", "~", "'''", "\t",
     "\n  - path: ../x\n", "/etc/passwd", "size: 3\n", "sha256: " + "0" * 64 + "\n", "---\n", "..."]
)


@st.composite
def mutated_manifest(draw):
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 80)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate", "splice"]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(snippets) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(snippets) + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            other = draw(st.sampled_from(TEXTS))
            k = draw(st.integers(0, len(other)))
            text = text[:i] + other[k:k + (j - i)] + text[j:]
    return text


scalars = (
    st.none() | st.booleans() | st.integers(-(2**200), 2**200) | st.integers(-5, 5)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
    | st.sampled_from(["model.safetensors", "../etc/passwd", "/abs", "a" * 64, "0" * 40, "dense", "sha256"])
)
structures = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.sampled_from(
        ["modelguard", "model", "files", "components", "path", "size", "sha256", "md5", "git_sha1",
         "component", "required", "tensors", "shape", "dtype", "revision"]), children, max_size=6),
    max_leaves=30,
)


@st.composite
def field_mutated_manifest(draw):
    """A shipped manifest with one or more values replaced, deleted or added, dumped again."""
    data = yaml.safe_load(draw(st.sampled_from(TEXTS)))
    for _ in range(draw(st.integers(1, 3))):
        node, key = data, None
        for _depth in range(draw(st.integers(0, 4))):
            keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            if not isinstance(node[key], (dict, list)):
                break
            node = node[key]
        if not isinstance(node, (dict, list)) or not node:
            continue
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            node[key] = draw(structures)
        elif action == "delete":
            del node[key]
        elif isinstance(node, dict):
            node[draw(st.text(max_size=8))] = draw(structures)
        else:
            node.append(draw(structures))
    return yaml.safe_dump(data, default_flow_style=draw(st.sampled_from([None, True, False])),
                          allow_unicode=draw(st.booleans()))


# --------------------------------------------------------------------------- fuzz tests


@FUZZ
@given(mutated_manifest())
def test_fuzz_mutated_shipped_manifests(text):
    check(text, "mutated-text")


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes(data):
    check(data, "random-bytes")


@FUZZ
@given(mutated_manifest(), st.binary(min_size=1, max_size=8), st.data())
def test_fuzz_bytes_spliced_into_manifests(text, junk, data):
    raw = text.encode()
    i = data.draw(st.integers(0, len(raw)))
    check(raw[:i] + junk + raw[i:], "spliced-bytes")


@FUZZ
@given(structures, st.sampled_from([None, True, False]))
def test_fuzz_random_structures(value, flow):
    check(yaml.safe_dump(value, default_flow_style=flow), "random-structure")


@FUZZ
@given(field_mutated_manifest())
def test_fuzz_field_mutations(text):
    check(text, "field-mutation")


def test_shipped_manifests_load_and_round_trip():
    for text in TEXTS:
        assert isinstance(check(text, "shipped"), Manifest)


# --------------------------------------------------------------------------- hostile inputs

BASE = TEXTS[0]


def _run_bounded(fn, timeout=120):
    """Run ``fn`` in a thread; fail (not hang) if it does not return."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the manifest loader hung"
    if "error" in out:
        raise out["error"]
    return out["value"]


BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(9))

HOSTILE = {
    "alias-bomb": (BILLION_LAUGHS, "anchors (&name) are not allowed"),
    "alias-only": ("modelguard: 1\nmodel: *x\n", "aliases (*name) are not allowed"),
    "merge-key": ("base: &b {size: 1}\nx:\n  <<: *b\n", "not allowed"),
    "python-tag": ("!!python/object/apply:os.system ['touch /tmp/modelguard-fuzz-pwned']\n",
                   "YAML tag '!!python/object/apply:os.system' is not allowed"),
    "deep-flow": ("[" * 100_000, "nesting deeper than"),
    "deep-block": ("".join("  " * i + "k:\n" for i in range(200)), "nesting deeper than"),
    "huge-int": (BASE.replace("size: ", "size: " + "9" * 10_000 + "", 1), "cannot be parsed"),
    "big-int": (BASE.replace("size: ", "size: 1" + "0" * 40 + " #", 1), "implausibly large size"),
    "float-size": (BASE.replace("size: ", "size: 1e400 #", 1), "not an integer"),
    "non-utf8": (BASE.encode().replace(b"model:", b"model: \xff\xfe", 1), "not UTF-8 text"),
    "utf16": (BASE.encode("utf-16"), "not UTF-8 text"),
    "too-large": ("# " + "x" * (8 * 1024 * 1024), "too large to be a manifest"),
    "too-large-bytes": (b"# " + b"x" * (8 * 1024 * 1024), "too large to be a manifest"),
    "nul": (BASE.replace("model:", "model: \x00", 1), "not valid YAML"),
    "two-documents": (BASE + "\n---\n" + BASE, "not valid YAML"),
    "empty": ("", "top level: not a mapping"),
    "wrong-types": ("modelguard: '1'\nmodel: [a]\ncomponents: 3\nfiles: {}\n", "unsupported schema version"),
    "dotdot": (BASE.replace("path: ", "path: ../", 1), "'..' is not allowed"),
    "absolute": (BASE.replace("path: ", "path: /etc/", 1), "absolute paths are not allowed"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_manifest_inputs(name, monkeypatch):
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 8 * 1024 * 1024)  # the too-large inputs' size
    data, expected = HOSTILE[name]
    result = _run_bounded(lambda: check(data, "hostile"))
    assert isinstance(result, ManifestError), f"{name} loaded"
    assert expected in result.message, result.message
    assert not os.path.exists("/tmp/modelguard-fuzz-pwned")


def test_node_budget_bounds_time_and_memory(monkeypatch):
    """A huge but valid YAML document is refused after MAX_NODES nodes, with bounded memory."""
    monkeypatch.setattr(manifest_module, "MAX_NODES", 5_000)
    doc = "files:\n" + "- 1\n" * 2_000_000  # 8 MB: ~2M nodes, minutes and >1 GB if composed
    tracemalloc.start()
    try:
        result = _run_bounded(lambda: check(doc, "hostile"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, ManifestError)
    assert "more than 5000 YAML nodes" in result.message
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_node_budget_scales_with_the_files_declared_and_stays_bounded(monkeypatch):
    entry = "- {path: f%d.bin, size: 1, component: model, sha256: " + "ab" * 32 + "}\n"
    head = "modelguard: 1\nmodel: org/big\ncomponents: {model: {required: true}}\nfiles:\n"
    n_ok = 12_000  # past the fixed 100,000-node limit this replaced (about 9,000 files)
    big = _run_bounded(lambda: parse_manifest_text(head + "".join(entry % i for i in range(n_ok))), timeout=120)
    assert len(big.files) == n_ok
    # nodes the declared files do not account for are still refused
    padded = head + entry % 0 + "extra: [" + "1, " * 150_000 + "1]\n"
    with pytest.raises(ManifestError, match="more than 100000 YAML nodes"):
        _run_bounded(lambda: parse_manifest_text(padded), timeout=120)
    assert manifest_module.node_budget(head + entry * 3) == manifest_module.MAX_NODES
    # and the budget has a ceiling whatever the text declares
    monkeypatch.setattr(manifest_module, "MAX_NODES_CAP", 20_000)
    with pytest.raises(ManifestError, match="more than 20000 YAML nodes"):
        _run_bounded(lambda: parse_manifest_text(head + "".join(entry % i for i in range(n_ok))), timeout=120)


def test_load_manifest_on_hostile_files(tmp_path):
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    err = _run_bounded(lambda: pytest.raises(ManifestError, load_manifest, fifo).value, timeout=20)
    assert "is not a regular file" in err.message
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as fh:
        fh.truncate(manifest_module.MAX_MANIFEST_BYTES + 2**20)  # sparse NULs; only MAX+1 bytes are ever read
    err = pytest.raises(ManifestError, load_manifest, huge).value
    assert "too large to be a manifest" in err.message
    link = tmp_path / "zero.yaml"
    os.symlink("/dev/zero", link)
    err = _run_bounded(lambda: pytest.raises(ManifestError, load_manifest, link).value, timeout=20)
    assert "is not a regular file" in err.message
    assert math.isfinite(len(err.message))


def _mutations(seed: int, count: int):
    import glob
    import random

    texts = [Path(p).read_text() for p in sorted(glob.glob(str(Path(__file__).parent.parent / "manifests" / "**" / "*.yaml"),
                                                          recursive=True))]
    rng = random.Random(seed)
    alphabet = "\n\r\t :-{}[],'\"#&*!|>%@`\\x?.0123\x85\xa0\u2028\ufeff\x00\x07\x1b"
    for _ in range(count):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(text))
            insert = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
            text = text[:pos] + insert + text[pos + rng.randint(0, 3):]
        yield text


def test_libyaml_path_agrees_with_the_pure_python_loader():
    """Manifests go through libyaml when it is there (a 100,000-file manifest loads in seconds,
    not minutes); whatever it loads, the strict pure-Python loader loads to the same value."""
    import yaml

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml: only the pure-Python loader runs")

    def strict(text):
        loader = manifest_module._StrictSafeLoader.get()(text)
        loader.max_nodes = manifest_module.node_budget(text)
        try:
            return ("loaded", loader.get_single_data())
        except yaml.YAMLError:
            return ("refused",)
        finally:
            loader.dispose()

    compared = 0
    for text in _mutations(seed=13, count=3000):
        try:
            fast = manifest_module._fast_load(text)
        except yaml.YAMLError:
            fast = ("refused",)
        else:
            if fast is manifest_module._SLOW:
                continue
            fast = ("loaded", fast)
        compared += 1
        assert fast == strict(text), text
    assert compared > 500
