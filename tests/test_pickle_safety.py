"""Pickle scanning and safetensors header checks: unsafe files are found without loading them."""

from __future__ import annotations

import json
import os
import struct
import threading

import pytest

from helpers.cli import run_cli
from hostile import (
    make_fifo, make_small_model_dir, write_lfs_stub, write_malicious_pickle,
    write_malicious_torch_checkpoint, write_raw_safetensors, write_safetensors, write_torch_state_dict,
)
from modelguard.errors import UnsafeFileError
from modelguard.safety import check_safetensors, require_safe, scan_file, scan_paths

# The guard, where a test asks for it (the guarded fixture), allows unknown models.
pytestmark = pytest.mark.guard(unknown="allow")


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "PAYLOAD-RAN"
    yield m
    assert not m.exists(), "a malicious pickle's payload ran"


# --------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_plain_state_dict_is_safe(tmp_path, legacy):
    f = scan_file(write_torch_state_dict(tmp_path / "sparse_linear.pt", legacy=legacy))
    assert f.safe and f.diagnosis == "ok", f
    assert f.kind == "pickle"
    assert "only tensors" in f.message
    assert not f.dangerous_globals


@pytest.mark.parametrize("name,protocol", [("evil.pkl", 2), ("pytorch_model.bin", 2), ("head.pth", 4), ("x.ckpt", 5)])
def test_malicious_plain_pickle_is_refused(tmp_path, marker, name, protocol):
    f = scan_file(write_malicious_pickle(tmp_path / name, marker, protocol))
    assert not f.safe
    assert f.diagnosis == "dangerous_pickle"
    assert "posix.system" in f.dangerous_globals
    assert "posix.system" in f.message and "would run code" in f.message
    with pytest.raises(UnsafeFileError) as info:
        f.raise_if_unsafe()
    assert f"refusing to load {tmp_path / name}" in str(info.value)
    assert "safetensors" in info.value.remedy


def test_malicious_zip_checkpoint_is_refused_and_torch_agrees(tmp_path, marker):
    import torch

    path = write_malicious_torch_checkpoint(tmp_path / "colbert_linear.pt", marker)
    f = scan_file(path)
    assert f.diagnosis == "dangerous_pickle", f
    assert "posix.system" in f.dangerous_globals
    # The loader's own allowlist refuses it too (belt and braces): weights_only=True never runs it.
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)


def test_malicious_legacy_torch_checkpoint_is_refused(tmp_path, marker):
    import torch

    from hostile import RunsShellCommand, payload_command

    path = tmp_path / "pytorch_model.bin"
    torch.save({"weight": torch.ones(2), "hook": RunsShellCommand(payload_command(marker))}, path,
               _use_new_zipfile_serialization=False)
    f = scan_file(path)
    assert f.diagnosis == "dangerous_pickle" and "posix.system" in f.dangerous_globals


def test_non_pickle_binaries_named_bin_are_not_refused(tmp_path):
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 16)
    f = scan_file(tmp_path / "random.bin")
    assert f.diagnosis == "ok" and "no pickle imports" in f.message
    # starts like a protocol-0 GLOBAL, then breaks: pickle.load imports foo.bar before it
    # breaks, and foo.bar is not on the allowlist (default deny)
    (tmp_path / "odd.bin").write_bytes(b"cfoo\nbar\n\xff\xfe" + bytes(64))
    f = scan_file(tmp_path / "odd.bin")
    assert not f.safe and f.diagnosis == "dangerous_pickle" and f.dangerous_globals == ("foo.bar",)


def test_hand_written_protocol_0_pickle_is_refused(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"cos\nsystem\n(S'touch /tmp/never'\ntR.")
    f = scan_file(tmp_path / "w.bin")
    assert f.diagnosis == "dangerous_pickle" and f.dangerous_globals == ("os.system",)


def test_malicious_pickle_under_an_innocent_name_is_found_by_content(tmp_path, marker):
    path = write_malicious_pickle(tmp_path / "weights.data", marker)
    f = scan_file(path)
    assert f.diagnosis == "dangerous_pickle" and "posix.system" in f.dangerous_globals


def test_whole_module_pickle_is_refused(tmp_path):
    """A pickled nn.Module imports classes weights_only loading refuses: default deny."""
    import torch

    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    f = scan_file(tmp_path / "module.pt")
    assert not f.safe and f.diagnosis == "dangerous_pickle"
    assert "torch.nn.modules.linear.Linear" in f.dangerous_globals
    assert "(in module/data.pkl): not among the globals safe weight loading needs (default deny)" in f.message


def test_lfs_stub_named_bin(tmp_path):
    f = scan_file(write_lfs_stub(tmp_path / "pytorch_model.bin", b"x" * 1000))
    assert f.diagnosis == "lfs_pointer" and not f.safe
    assert "invalid load key, 'v'" in f.message


def test_fifo_named_like_weights_is_not_opened(tmp_path):
    path = make_fifo(tmp_path / "pytorch_model.bin")
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("f", scan_file(path)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "scanning a FIFO hung"
    assert out["f"].diagnosis == "not_a_file"
    assert "FIFO" in out["f"].message


def test_require_safe_lists_every_unsafe_file(tmp_path, marker):
    write_malicious_pickle(tmp_path / "a.bin", marker)
    write_lfs_stub(tmp_path / "b.safetensors", b"y" * 99)
    write_torch_state_dict(tmp_path / "c.pt")
    findings = scan_paths(tmp_path, ["a.bin", "b.safetensors", "c.pt", "absent.pt"])
    assert [f.path for f in findings] == ["a.bin", "b.safetensors", "c.pt"]
    with pytest.raises(UnsafeFileError) as info:
        require_safe(findings)
    text = str(info.value)
    assert "2 unsafe file(s)" in text and "a.bin" in text and "b.safetensors" in text and "c.pt" not in text


# --------------------------------------------------------------------------- safetensors headers


def _tensors_agree_unloadable(path):
    """The safetensors library itself must refuse the file our check refuses."""
    from safetensors import safe_open

    with pytest.raises(Exception):
        with safe_open(str(path), framework="pt") as fh:
            for k in fh.keys():
                fh.get_tensor(k)


def test_real_safetensors_file_passes(tmp_path):
    f = check_safetensors(write_safetensors(tmp_path / "model.safetensors"))
    assert f.safe and f.diagnosis == "ok" and f.details["tensors"] == 2


def test_real_minilm_weights_pass(minilm_dir):
    f = check_safetensors(minilm_dir / "model.safetensors")
    assert f.diagnosis == "ok", f
    assert f.details["tensors"] > 50


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header,data,header_length,expected",
    [
        (b'{"a": {"dtype": "F32"', b"", None, "not valid UTF-8 JSON"),
        (b"[1, 2]", b"", None, "JSON list, not an object"),
        ({"a": F32x2}, b"\0" * 8, 10**6, "runs past the end"),
        ({"a": F32x2}, b"\0" * 8, 2**40, "HeaderTooLarge"),
        ({"a": {**F32x2, "data_offsets": [0, 16]}}, b"\0" * 8, None, "outside the 8-byte data section"),
        ({"a": F32x2, "b": {**F32x2, "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlaps"),
        ({"a": {**F32x2, "shape": [3]}}, b"\0" * 8, None, "needs 12 bytes but data_offsets span 8"),
        ({"a": {**F32x2, "dtype": "F128"}}, b"\0" * 8, None, "unknown dtype 'F128'"),
        ({"a": {**F32x2, "shape": [-2]}}, b"\0" * 8, None, "invalid shape"),
        ({"a": {**F32x2, "data_offsets": [0, "8"]}}, b"\0" * 8, None, "invalid data_offsets"),
        ({"a": F32x2}, b"\0" * 12, None, "cover 8 of the 12 data bytes"),
        ({"a": {**F32x2, "data_offsets": [4, 12]}}, b"\0" * 12, None, "gap of 4 unused bytes"),
        ({"__metadata__": {"x": 1}, "a": F32x2}, b"\0" * 8, None, "__metadata__"),
    ],
    ids=["json", "not-object", "past-end", "too-large", "offset-out", "overlap", "shape-dtype", "dtype",
         "shape", "offsets-type", "trailing", "gap", "metadata"],
)
def test_malformed_safetensors_headers(tmp_path, header, data, header_length, expected):
    path = write_raw_safetensors(tmp_path / "model.safetensors", header, data, header_length)
    f = check_safetensors(path)
    assert f.diagnosis == "bad_safetensors" and not f.safe, f
    assert expected in f.message
    assert f.message.startswith("malformed safetensors header")
    _tensors_agree_unloadable(path)


def test_truncated_safetensors(tmp_path):
    path = write_safetensors(tmp_path / "model.safetensors")
    raw = path.read_bytes()
    path.write_bytes(raw[:-5])
    f = check_safetensors(path)
    assert f.diagnosis == "bad_safetensors" and "outside" in f.message
    path.write_bytes(raw[:6])
    assert "fewer than the 8-byte header length" in check_safetensors(path).message


def test_lfs_pointer_named_safetensors_explains_header_too_large(tmp_path):
    path = write_lfs_stub(tmp_path / "model.safetensors", b"z" * 4096)
    f = check_safetensors(path)
    assert f.diagnosis == "lfs_pointer"
    assert "Git LFS pointer" in f.message and "HeaderTooLarge" in f.message
    with pytest.raises(UnsafeFileError) as info:
        f.raise_if_unsafe()
    assert "git lfs pull" in info.value.remedy
    # what the user would otherwise see
    from safetensors import safe_open
    with pytest.raises(Exception, match="(?i)header ?too ?large"):
        safe_open(str(path), framework="pt")


def test_pickle_named_safetensors_is_mislabeled(tmp_path, marker):
    write_malicious_pickle(tmp_path / "model.safetensors", marker)
    f = scan_file(tmp_path / "model.safetensors")
    assert f.diagnosis == "mislabeled" and "holds a pickle" in f.message


# --------------------------------------------------------------------------- CLI


def _build(directory, out):
    r = run_cli("build", str(directory), "--model", "local/hostile", "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_verify_scan_reports_malicious_pickle(tmp_path, marker):
    model = make_small_model_dir(tmp_path / "model")
    write_malicious_pickle(model / "colbert_linear.pt", marker)
    manifest = _build(model, tmp_path / "m.yaml")
    plain = run_cli("verify", str(manifest), str(model))
    assert plain.returncode == 0, plain.stdout  # the bytes match the (hostile) manifest ...
    r = run_cli("verify", str(manifest), str(model), "--scan")
    assert r.returncode == 1, r.stdout + r.stderr  # ... but the scan refuses them
    assert "UNSAFE  colbert_linear.pt" in r.stdout and "posix.system" in r.stdout
    assert "1 of 3 scanned file(s) must not be loaded" in r.stdout
    assert "Traceback" not in r.stderr
    j = run_cli("verify", str(manifest), str(model), "--scan", "--json")
    assert j.returncode == 1
    doc = json.loads(j.stdout)
    assert doc["ok"] is False and doc["scan"]["unsafe"] == 1
    bad = [f for f in doc["scan"]["findings"] if not f["safe"]]
    assert bad[0]["path"] == "colbert_linear.pt" and bad[0]["dangerous_globals"] == ["posix.system"]


def test_verify_scan_clean_model_and_real_minilm(tmp_path, minilm_dir):
    model = make_small_model_dir(tmp_path / "model")
    manifest = _build(model, tmp_path / "m.yaml")
    r = run_cli("verify", str(manifest), str(model), "--scan")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scan: 2 pickle/safetensors file(s) scanned, none unsafe" in r.stdout
    shipped = run_cli("verify", "sentence-transformers/all-MiniLM-L6-v2", str(minilm_dir), "--scan", "--json",
                      "--components", "model")
    doc = json.loads(shipped.stdout)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    kinds = {f["path"]: f["diagnosis"] for f in doc["scan"]["findings"]}
    assert kinds.get("model.safetensors") == "ok"


# --------------------------------------------------------------------------- under the guard


@pytest.fixture
def guarded(installed_guard):
    """The loader guard installed with unknown models allowed (see the module's guard marker)."""
    return installed_guard


def _pinned(directory):
    import modelguard

    modelguard.save_manifest(modelguard.build_manifest(directory, "acme/hostile"), directory / "modelguard.yaml")
    return directory


@pytest.mark.parametrize("policy", ["refuse", "warn"])
def test_guard_refuses_a_pinned_malicious_head_whatever_the_policy(tmp_path, marker, guarded, policy):
    import modelguard

    model = make_small_model_dir(tmp_path / "model")
    write_malicious_pickle(model / "colbert_linear.pt", marker)
    _pinned(model)  # the bytes even match the manifest: the scan still refuses them
    modelguard.install(policy=policy)
    with pytest.raises(UnsafeFileError) as info:
        guarded.check_before_load(model)
    text = str(info.value)
    assert "1 unsafe file(s); not loaded" in text and "colbert_linear.pt" in text and "posix.system" in text


def test_guard_warn_policy_warns_on_a_bad_header(tmp_path, guarded):
    import modelguard

    model = make_small_model_dir(tmp_path / "model")
    _pinned(model)
    raw = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(raw[:8] + raw[8:].replace(b'"F32"', b'"X32"', 1))
    modelguard.install(policy="warn")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        guarded.check_before_load(model)
    messages = [str(w.message) for w in caught]
    assert any("model.safetensors: malformed safetensors header: tensor 'a' has unknown dtype 'X32'" in m
               for m in messages), messages
    modelguard.install(policy="refuse")
    with pytest.raises(Exception, match="digest|differ|wrong content"):
        guarded.check_before_load(model)


def test_transformers_from_pretrained_refuses_malicious_pytorch_model_bin(tmp_path, marker, guarded):
    import torch
    import transformers
    from safetensors.torch import load_file

    from helpers.tiny_bert import save_tiny_bert
    from hostile import RunsShellCommand, payload_command

    model = save_tiny_bert(tmp_path / "bert")
    state = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    torch.save({**state, "hook": RunsShellCommand(payload_command(marker))}, model / "pytorch_model.bin")
    _pinned(model)
    with pytest.raises(UnsafeFileError) as info:
        transformers.BertModel.from_pretrained(model)
    assert "pytorch_model.bin" in str(info.value) and "posix.system" in str(info.value)


def test_a_guarded_load_scans_each_pickle_once(tmp_path, guarded, monkeypatch):
    """The pre-load check scans pytorch_model.bin; torch.load inside the same load reuses that scan."""
    import torch
    import transformers
    from safetensors.torch import load_file

    from modelguard import safety

    from helpers.tiny_bert import save_tiny_bert

    model = save_tiny_bert(tmp_path / "bert")
    state = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    torch.save(state, model / "pytorch_model.bin")
    _pinned(model)
    scanned = []
    real_judge = safety.judge_pickle_fd

    def counting_judge(fd, size, shown):
        scanned.append(os.path.basename(shown))
        return real_judge(fd, size, shown)

    monkeypatch.setattr(safety, "judge_pickle_fd", counting_judge)
    transformers.BertModel.from_pretrained(model)
    assert scanned.count("pytorch_model.bin") == 1, scanned
    torch.load(model / "pytorch_model.bin", weights_only=True)  # outside a guarded load: not scanned
    assert scanned.count("pytorch_model.bin") == 1, scanned


def test_torch_load_inside_a_guarded_loader_scans_and_forces_weights_only(tmp_path, marker, guarded):
    import torch

    evil = write_malicious_torch_checkpoint(tmp_path / "evil.pt", marker)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    assert torch.load(tmp_path / "module.pt", weights_only=False).in_features == 2  # outside: untouched
    with guarded.verified_scope():
        with pytest.raises(UnsafeFileError, match="posix.system"):
            torch.load(evil, weights_only=False)
        with pytest.raises(UnsafeFileError, match="torch.nn.modules.linear.Linear"):
            torch.load(tmp_path / "module.pt", weights_only=False)  # refused before torch reads it
        state = torch.load(write_torch_state_dict(tmp_path / "head.pt"), weights_only=False)
        assert set(state) == {"weight", "bias"}
    guarded.uninstall()
    from modelguard.hooks import is_wrapped

    assert not is_wrapped(torch.load)


def test_audit_reports_unsafe_files_with_and_without_manifest(tmp_path, marker):
    model = make_small_model_dir(tmp_path / "model")
    write_malicious_pickle(model / "colbert_linear.pt", marker)
    r = run_cli("audit", str(model), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    safety = json.loads(r.stdout)["sections"]["safety"]
    bad = [f for f in safety if f["severity"] == "failed"]
    assert [(f["code"], f["source"], f["value"]) for f in bad] == [("dangerous_pickle", "colbert_linear.pt",
                                                                     ["posix.system"])]
    text = run_cli("audit", str(model), "--manifest", str(_build(model, tmp_path / "m.yaml")))
    assert text.returncode == 1
    assert "FAIL  colbert_linear.pt: pickle imports posix.system: not among the globals safe weight loading" in text.stdout
    (model / "colbert_linear.pt").unlink()
    clean = run_cli("audit", str(model), "--json")
    doc = json.loads(clean.stdout)
    assert [f["message"] for f in doc["sections"]["safety"]] == ["2 pickle/safetensors file(s) scanned, none unsafe"]


def test_zip_bomb_pickle_member_is_refused_without_unpacking(tmp_path, monkeypatch):
    import zipfile

    from modelguard import pickle_gate

    monkeypatch.setattr(pickle_gate, "MAX_PICKLE_MEMBER_BYTES", 1 << 20)
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"(" * (4 << 20))  # 4 MiB of MARK opcodes, deflated to a few KB
    assert path.stat().st_size < 64 * 1024
    f = scan_file(path)
    assert f.diagnosis == "dangerous_pickle" and not f.safe
    assert "archive member archive/data.pkl would unpack to 4194304 bytes" in f.message


def test_scan_refuses_a_link_swapped_to_outside_after_the_check(tmp_path, marker):
    from pathlib import Path

    model = tmp_path / "model"
    model.mkdir()
    write_torch_state_dict(model / "head.pt")
    outside = write_malicious_pickle(tmp_path / "evil.pt", marker)
    (model / "w.pt").symlink_to(outside)
    f = scan_file(model / "w.pt", name="w.pt", roots=[Path(model).resolve()])
    assert f.diagnosis == "symlink_escape" and "not read" in f.message
    assert scan_file(model / "head.pt", roots=[Path(model).resolve()]).diagnosis == "ok"


# --------------------------------------------------------------------------- header check vs the real parser

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_DTYPES = ["F32", "F16", "BF16", "I64", "I32", "U8", "BOOL", "F64", "I8", "X9"]
_tensor = st.fixed_dictionaries({
    "dtype": st.sampled_from(_DTYPES),
    "shape": st.lists(st.integers(-1, 4), max_size=3),
    "data_offsets": st.lists(st.integers(-2, 80), min_size=2, max_size=2),
})
_headers = st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]),
                           _tensor | st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
                           max_size=3)


_BITS = {"F32": 32, "F16": 16, "BF16": 16, "I64": 64, "I32": 32, "U8": 8, "BOOL": 8, "F64": 64, "I8": 8}


@st.composite
def _valid_then_mutated(draw):
    """A consistent header (contiguous offsets, sizes from dtype x shape), then maybe one change."""
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), unique=True, max_size=4))
    header, offset = {}, 0
    for name in names:
        dtype = draw(st.sampled_from(sorted(_BITS)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        n = 1
        for d in shape:
            n *= d
        size = n * _BITS[dtype] // 8
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    if header and draw(st.booleans()):
        victim = header[draw(st.sampled_from(sorted(header)))]
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        victim[field] = draw({"dtype": st.sampled_from(_DTYPES), "shape": st.lists(st.integers(0, 3), max_size=3),
                              "data_offsets": st.lists(st.integers(0, offset + 4), min_size=2, max_size=2)}[field])
    return header, offset + draw(st.sampled_from([0, 0, 0, 1, -1]))


@settings(max_examples=int(os.environ.get("MODELGUARD_FUZZ_EXAMPLES", "400")) // 2, deadline=None,
          database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.tuples(_headers, st.integers(0, 96)) | _valid_then_mutated(),
       length_delta=st.sampled_from([0, 0, 0, -1, 1, 1 << 40]))
def test_header_check_agrees_with_the_safetensors_parser(tmp_path, case, length_delta):
    """Differential: whatever our check accepts, safetensors loads; whatever it refuses, safetensors refuses."""
    from safetensors import safe_open

    header, data_len = case
    data_len = max(0, data_len)
    raw = json.dumps(header).encode()
    path = write_raw_safetensors(tmp_path / "x.safetensors", raw, bytes(data_len), max(0, len(raw) + length_delta))
    ours = check_safetensors(path)
    assert ours.diagnosis in ("ok", "bad_safetensors"), ours
    try:
        with safe_open(str(path), framework="pt") as fh:  # torch knows every dtype (numpy lacks bfloat16)
            for key in fh.keys():
                fh.get_tensor(key)
        theirs = True
    except Exception:  # noqa: BLE001 - any refusal by the real parser
        theirs = False
    assert ours.safe == theirs, (ours.message, header, data_len, length_delta)
