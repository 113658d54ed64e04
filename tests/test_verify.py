"""The verify engine: every diagnosis, made with real files broken the way downloads and
clones break them, checked on behaviour (status, diagnosis code, values) and message text."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.st_model import write_st_shaped_model
from safetensors.numpy import save

import modelguard
from modelguard.build import build_manifest
from modelguard.errors import UsageError, VerificationError
from modelguard.manifest import Manifest, dump_manifest, parse_manifest_text
from modelguard.verifying import format_report, verify

ALL = ("md5", "sha256", "git_sha1")
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A small model folder: real safetensors weights, JSON configs, a tokenizer, optional ONNX."""
    rng = np.random.default_rng(0)
    weights = save({"embeddings": rng.standard_normal((128, 256)).astype(np.float32),
                    "bias": rng.standard_normal(256).astype(np.float32)})
    vocab = {f"tok{i}": i for i in range(2000)}
    return write_st_shaped_model(
        tmp_path_factory.mktemp("tiny") / "tiny", weights=weights,
        config=json.dumps({"model_type": "bert", "hidden_size": 256}, indent=2) + "\n",
        tokenizer=json.dumps({"version": "1.0", "model": {"vocab": vocab}}),
        extra={"onnx/model.onnx": rng.bytes(3000)},
    )


@pytest.fixture(scope="module")
def manifest(template) -> Manifest:
    built = build_manifest(template, "org/tiny", REVISION, algorithms=ALL)
    # through YAML and back, as a user's manifest file would be
    return parse_manifest_text(dump_manifest(built), source="tiny.yaml")


@pytest.fixture
def model(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "model"))


def check(manifest, directory, path, **kwargs):
    report = verify(manifest, directory, cache=False, **kwargs)
    result = report.result(path)
    assert result is not None
    return report, result


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_intact_copy_verifies(manifest, model):
    report = verify(manifest, model, cache=False)
    assert report.ok, format_report(report)
    assert [r.path for r in report.files] == sorted(e.path for e in manifest.files)
    assert all(r.status == "ok" and r.diagnosis == "ok" for r in report.files)
    assert report.failures == () and report.extra_files == ()
    assert report.summary() == f"verified: {len(manifest.files)} file(s) of org/tiny match the manifest"
    weights = report.result("model.safetensors")
    assert weights.actual["sha256"] == sha256((model / "model.safetensors").read_bytes())
    report.raise_for_errors()  # nothing to raise


def test_report_and_results_are_frozen(manifest, model):
    report = verify(manifest, model, cache=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.ok = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.files[0].status = "ok"  # type: ignore[misc]


def test_missing_file(manifest, model):
    (model / "tokenizer.json").unlink()
    report, r = check(manifest, model, "tokenizer.json")
    assert (r.status, r.diagnosis) == ("failed", "missing")
    assert r.message == f"missing: not in {model} (required component 'tokenizer')"
    assert r.remedy == f"modelguard fetch org/tiny --revision {REVISION} --local-dir {model}"
    assert not report.ok and report.failed_components == ("tokenizer",)
    assert report.summary() == f"FAILED: org/tiny: 1 of {len(manifest.files)} file(s) failed (component(s): tokenizer)"


def test_empty_file(manifest, model):
    size = (model / "config.json").stat().st_size
    (model / "config.json").write_bytes(b"")
    _, r = check(manifest, model, "config.json")
    assert r.diagnosis == "empty"
    assert r.message == f"is empty (0 bytes), expected {size} bytes"
    assert r.actual == {"size": 0}


def test_truncated_file_says_how_much_is_there(manifest, model):
    path = model / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 4])
    _, r = check(manifest, model, "model.safetensors")
    assert r.diagnosis == "truncated"
    present = len(data) // 4
    assert f"truncated: {present} of {len(data)} bytes present ({100 * present / len(data):.1f}%" in r.message
    assert "short); the download or copy stopped early" in r.message
    assert r.actual == {"size": present} and r.expected["size"] == len(data)


def test_oversized_file(manifest, model):
    path = model / "model.safetensors"
    size = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(b"\x01" * 10)
    _, r = check(manifest, model, "model.safetensors")
    assert r.diagnosis == "oversized"
    assert f"larger than expected: {size + 10} bytes, expected {size} (+10 bytes)" in r.message


def lfs_pointer(oid: str, size: int) -> str:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


def test_lfs_pointer_to_the_right_file(manifest, model):
    path = model / "model.safetensors"
    data = path.read_bytes()
    path.write_text(lfs_pointer(sha256(data), len(data)))
    _, r = check(manifest, model, "model.safetensors")
    assert r.diagnosis == "lfs_pointer"
    assert "is a Git LFS pointer stub" in r.message
    assert "this is the pointer to the right file: run `git lfs pull`" in r.message
    assert r.actual["lfs_oid_sha256"] == sha256(data) and r.actual["lfs_size"] == len(data)
    assert r.remedy == f"cd {model} && git lfs pull --include model.safetensors"


def test_lfs_pointer_to_another_file(manifest, model):
    path = model / "model.safetensors"
    other = sha256(b"another revision")
    path.write_text(lfs_pointer(other, 1234))
    _, r = check(manifest, model, "model.safetensors")
    assert r.diagnosis == "lfs_pointer"
    assert f"to a DIFFERENT file (oid {other}, size 1234)" in r.message
    assert "another revision" in r.message
    assert r.remedy == f"check out revision {REVISION} and run `git lfs pull`"


def test_html_error_page(manifest, model):
    page = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"
    (model / "model.safetensors").write_text(page)
    _, r = check(manifest, model, "model.safetensors")
    assert r.diagnosis == "error_page"
    assert r.message.startswith(f"is an HTML error page saved in place of the file ({len(page)} bytes")
    assert "'502 Bad Gateway'" in r.message
    assert r.actual["content"] == "HTML error page"


def test_html_error_page_larger_than_the_file(manifest, model):
    page = "<html><head><title>404 Not Found</title></head><body>" + "x" * 500 + "</body></html>"
    (model / "1_Pooling" / "config.json").write_text(page)
    _, r = check(manifest, model, "1_Pooling/config.json")
    assert r.diagnosis == "error_page", r.message
    assert "'404 Not Found'" in r.message


def test_json_error_page(manifest, model):
    body = '{"error": "Repository Not Found for url: https://huggingface.co/api/models/org/tiny"}'
    (model / "tokenizer.json").write_text(body)
    _, r = check(manifest, model, "tokenizer.json")
    assert r.diagnosis == "error_page"
    assert r.message.startswith(f"is a JSON error page saved in place of the file ({len(body)} bytes")
    assert "Repository Not Found" in r.message


def test_a_json_config_with_an_errors_key_is_not_an_error_page(manifest, model):
    # GPT-2 style tokenizer configs carry "errors": "replace"; a changed one is not a server's error body
    (model / "tokenizer.json").write_text(json.dumps(
        {"add_prefix_space": False, "bos_token": "<s>", "errors": "replace", "model_max_length": 512,
         "tokenizer_class": "GPT2Tokenizer"}))
    _, r = check(manifest, model, "tokenizer.json")
    assert r.diagnosis == "truncated", r.message
    assert "error page" not in r.message


def test_zero_filled_with_the_right_size(manifest, model):
    path = model / "model.safetensors"
    size = path.stat().st_size
    path.write_bytes(bytes(size))
    _, r = check(manifest, model, "model.safetensors")
    assert r.diagnosis == "zero_filled"
    assert "right size but every byte is zero" in r.message
    assert f"sha256: expected {manifest.file('model.safetensors').digests['sha256']}, got {sha256(bytes(size))}" in r.message
    assert r.actual["content"] == "all zero bytes"


# --------------------------------------------------------------------------- zero tail at memory speed

_BLOCK = 8 << 20


@pytest.mark.parametrize("last_nonzero", [0, 1, 65535, 65536, _BLOCK - 1, _BLOCK, _BLOCK + 1, 17 << 20])
def test_zero_region_finds_the_exact_start_of_the_zeros(tmp_path, last_nonzero):
    from modelguard.fs import zero_region as _zero_region

    size = (17 << 20) + 5
    data = bytearray(os.urandom(last_nonzero + 1)) + bytearray(size - last_nonzero - 1)
    data[last_nonzero] = 0xFF
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        expected = len(bytes(data).rstrip(b"\x00"))
        assert _zero_region(fd, size) == (None if expected == size else expected) == last_nonzero + 1
    finally:
        os.close(fd)


def test_zero_region_of_an_all_zero_file_and_of_a_file_ending_in_data(tmp_path):
    from modelguard.fs import zero_region as _zero_region

    (tmp_path / "zeros").write_bytes(bytes(9 << 20))
    (tmp_path / "data").write_bytes(bytes(9 << 20) + b"\x01")
    for name, expected in (("zeros", 0), ("data", None)):
        fd = os.open(tmp_path / name, os.O_RDONLY)
        try:
            assert _zero_region(fd, os.fstat(fd).st_size) == expected
        finally:
            os.close(fd)


def test_sparse_zero_tail_is_found_without_reading_it(tmp_path, monkeypatch):
    """A preallocated file's unwritten tail is a hole: SEEK_HOLE finds it, nothing is read."""
    from modelguard.fs import zero_region as _zero_region

    path = tmp_path / "sparse.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20) + b"\xff")
        f.truncate(4 << 30)  # 4 GiB, almost all hole
    read = []
    real_pread = os.pread

    def counting_pread(fd, n, offset):
        out = real_pread(fd, n, offset)
        read.append(len(out))
        return out

    monkeypatch.setattr(os, "pread", counting_pread)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _zero_region(fd, 4 << 30) == (1 << 20) + 1
    finally:
        os.close(fd)
    assert sum(read) <= (1 << 20) + 1 + (8 << 20), sum(read)  # the data before the hole, no more


def test_written_zero_tail_is_scanned_faster_than_it_is_hashed(tmp_path):
    """Zeros written out (no hole) are read once, compared a block at a time: the scan costs
    less than hashing the same bytes (the byte-wise strip it replaces cost twice the hash)."""
    import time

    from modelguard.fs import zero_region as _zero_region

    path = tmp_path / "zeros.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20) + b"\xff")
        for _ in range(24):
            f.write(bytes(8 << 20))
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        os.pread(fd, size, 0)  # both timings from the page cache
        started = time.perf_counter()
        assert _zero_region(fd, size) == (1 << 20) + 1
        scan = time.perf_counter() - started
        started = time.perf_counter()
        hashlib.sha256(os.pread(fd, size, 0)).hexdigest()
        hashing = time.perf_counter() - started
    finally:
        os.close(fd)
    assert scan < hashing, f"zero-tail scan {scan:.3f} s, sha256 {hashing:.3f} s"


def test_preallocated_download_that_stopped(manifest, model):
    path = model / "model.safetensors"
    data = path.read_bytes()
    written = len(data) // 3
    path.write_bytes(data[:written] + bytes(len(data) - written))
    _, r = check(manifest, model, "model.safetensors")
    assert r.diagnosis == "zero_filled"
    assert f"bytes {written}..{len(data)} are zero" in r.message
    assert f"({100 * written / len(data):.1f}% written)" in r.message
    assert r.actual["zero_from"] == written


def test_digest_mismatch_names_expected_and_actual(manifest, model):
    path = model / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _, r = check(manifest, model, "model.safetensors")
    expected = manifest.file("model.safetensors").digests["sha256"]
    assert r.diagnosis == "digest_mismatch"
    assert r.message == f"right size, wrong content: sha256: expected {expected}, got {sha256(bytes(data))}"
    assert r.actual["sha256"] == sha256(bytes(data)) and r.expected["sha256"] == expected


def test_digest_mismatch_with_all_digests_lists_every_algorithm(manifest, model):
    path = model / "onnx" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    _, r = check(manifest, model, "onnx/model.onnx", all_digests=True)
    entry = manifest.file("onnx/model.onnx")
    assert r.diagnosis == "digest_mismatch"
    assert f"sha256: expected {entry.digests['sha256']}, got {sha256(bytes(data))}" in r.message
    assert f"md5: expected {entry.digests['md5']}, got {hashlib.md5(bytes(data)).hexdigest()}" in r.message
    git = hashlib.sha1(b"blob %d\x00" % len(data) + bytes(data)).hexdigest()
    assert f"git_sha1: expected {entry.digests['git_sha1']}, got {git}" in r.message


def test_all_digests_checks_md5_too(manifest, model):
    wrong_md5 = {**manifest.to_dict()}
    for f in wrong_md5["files"]:
        if f["path"] == "config.json":
            f["md5"] = "0" * 32
    broken = parse_manifest_text(json.dumps(wrong_md5), source="wrong-md5.yaml")
    # the default checks the strongest digest (sha256), which is right
    assert verify(broken, model, cache=False).ok
    report, r = check(broken, model, "config.json", all_digests=True)
    assert not report.ok and r.diagnosis == "digest_mismatch"
    assert r.message.startswith(f"right size, wrong content: md5: expected {'0' * 32}, got ")
    assert "sha256" not in r.message  # only the digest that disagrees is named
    assert r.actual["md5"] == hashlib.md5((model / "config.json").read_bytes()).hexdigest()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_sha1_is_gits_blob_id(manifest, model):
    for entry in manifest.files:
        out = subprocess.run(["git", "hash-object", str(model / entry.path)], capture_output=True, text=True, check=True)
        assert entry.digests["git_sha1"] == out.stdout.strip(), entry.path
    # a manifest holding only git_sha1 verifies, and catches a flipped byte
    only_git = manifest.to_dict()
    for f in only_git["files"]:
        del f["md5"], f["sha256"]
    only = parse_manifest_text(json.dumps(only_git), source="git-only.yaml")
    assert verify(only, model, cache=False).ok
    data = bytearray((model / "config.json").read_bytes())
    data[3] ^= 0x20
    (model / "config.json").write_bytes(bytes(data))
    _, r = check(only, model, "config.json")
    assert r.diagnosis == "digest_mismatch" and r.message.startswith("right size, wrong content: git_sha1: expected ")


class ReadCounter:
    """Counts the bytes read from each file, through every read call the engine may use."""

    def __init__(self, monkeypatch):
        self.bytes: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        for name in ("read", "readv", "pread", "preadv"):
            if hasattr(os, name):
                monkeypatch.setattr(os, name, self.wrap(getattr(os, name)))

    def wrap(self, real):
        def counted(fd, *args):
            result = real(fd, *args)
            n = result if isinstance(result, int) else len(result)
            name = os.readlink(f"/proc/self/fd/{fd}")
            self.bytes[name] = self.bytes.get(name, 0) + n
            self.calls[name] = self.calls.get(name, 0) + 1
            return result
        return counted


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name open files")
def test_one_read_per_file_for_all_digests(manifest, model, monkeypatch):
    counter = ReadCounter(monkeypatch)
    report = verify(manifest, model, cache=False, all_digests=True)
    assert report.ok
    assert all(set(r.actual) == {"size", *ALL} for r in report.files)  # three digests each
    for entry in manifest.files:
        name = os.path.realpath(model / entry.path)
        # every byte read exactly once, however many digests
        assert counter.bytes.get(name, 0) == entry.size, entry.path


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name open files")
def test_cheap_checks_read_no_content(manifest, model, monkeypatch):
    # a file larger than one read: a wrong size is told from stat, only a small head is read
    big = os.urandom(3 << 20)
    (model / "big.bin").write_bytes(big)
    with_big = dataclasses.replace(manifest, files=manifest.files + (
        dataclasses.replace(manifest.files[0], path="big.bin", size=len(big),
                            digests={"sha256": hashlib.sha256(big).hexdigest()}, chunks=None),))
    (model / "big.bin").write_bytes(big[:100_000])
    (model / "tokenizer.json").unlink()
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100_000])
    counter = ReadCounter(monkeypatch)
    report = verify(with_big, model, cache=False)
    assert report.result("big.bin").diagnosis == "truncated"
    assert counter.bytes.get(os.path.realpath(model / "big.bin"), 0) <= 1024
    assert os.path.realpath(model / "tokenizer.json") not in counter.bytes
    # a small file straight in the folder is read with one call before its size is known
    # (quickpath.read_batch: no fstat); a short one is read once, then its head is sniffed
    assert report.result("model.safetensors").diagnosis == "truncated"
    assert counter.bytes.get(os.path.realpath(weights), 0) <= 100_000 + 1024
    assert counter.calls[os.path.realpath(weights)] <= 2


def test_directory_in_place_of_a_file(manifest, model):
    (model / "config.json").unlink()
    (model / "config.json").mkdir()
    _, r = check(manifest, model, "config.json")
    assert r.diagnosis == "not_a_file"
    assert r.message == "is a directory, not a regular file; not opened"
    assert r.actual == {"type": "directory"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_in_place_of_a_file_is_not_opened(manifest, model):
    (model / "config.json").unlink()
    os.mkfifo(model / "config.json")
    _, r = check(manifest, model, "config.json")  # would hang if it were opened for reading
    assert r.diagnosis == "not_a_file" and "FIFO" in r.message


def test_symlink_out_of_the_model_directory_is_not_followed(manifest, model, tmp_path):
    outside = tmp_path / "outside.json"
    shutil.copy(model / "config.json", outside)
    (model / "config.json").unlink()
    (model / "config.json").symlink_to(outside)
    _, r = check(manifest, model, "config.json")
    assert r.diagnosis == "symlink_escape"
    assert f"links outside the model directory (to {outside.resolve()})" in r.message


def _drop_file_read_override() -> list[str] | None:
    """A command prefix under which root cannot read a mode-000 file, or None."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_unreadable_file_permission_denied(manifest, model, tmp_path):
    prefix = _drop_file_read_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    manifest_file = tmp_path / "tiny.yaml"
    manifest_file.write_text(dump_manifest(manifest))
    target = model / "config.json"
    target.chmod(0)
    probe = subprocess.run([*prefix, "cat", str(target)], capture_output=True)
    if probe.returncode == 0:
        target.chmod(0o644)
        pytest.skip("this system lets the process read a mode-000 file")
    folder = model / "1_Pooling"
    folder.chmod(0)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "modelguard", "verify", str(manifest_file), str(model), "--json",
             "--no-cache"],
            capture_output=True, text=True, timeout=120,
        )
    finally:
        target.chmod(0o644)
        folder.chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    r = next(f for f in doc["files"] if f["path"] == "config.json")
    assert r["diagnosis"] == "unreadable" and r["status"] == "failed"
    assert r["message"] == ("permission denied: this user cannot read it "
                            f"(mode ----------, owner uid {os.getuid()}; this process runs as uid {os.geteuid()})")
    assert r["remedy"] == f"make {target} readable by this user (chmod/chown), then verify again"
    inside = next(f for f in doc["files"] if f["path"] == "1_Pooling/config.json")
    assert inside["diagnosis"] == "unreadable"
    assert inside["message"] == "permission denied: a folder on its path cannot be searched by this user"
    assert doc["summary"]["failed"] == 2 and doc["summary"]["ok"] == len(doc["files"]) - 2
    assert target.read_bytes()  # nothing was changed


def test_optional_component_missing_is_skipped_not_failed(manifest, model):
    shutil.rmtree(model / "onnx")
    report, r = check(manifest, model, "onnx/model.onnx")
    assert (r.status, r.diagnosis) == ("skipped", "optional_missing")
    assert r.message == "not present (optional component 'onnx')"
    assert report.ok and report.missing_optional_components == ("onnx",)
    assert report.summary().endswith("; optional component(s) not present: onnx")


def test_optional_component_present_but_broken_fails(manifest, model):
    (model / "onnx" / "model.onnx").write_bytes(b"")
    report, r = check(manifest, model, "onnx/model.onnx")
    assert (r.status, r.diagnosis) == ("failed", "empty")
    assert not report.ok and r.required is False


def test_extra_files_are_listed_and_fail_only_when_strict(manifest, model):
    (model / "notes.txt").write_text("mine")
    (model / "1_Pooling" / "extra.bin").write_bytes(b"\x00")
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / "x.lock").write_text("")
    report = verify(manifest, model, cache=False)
    assert report.ok
    assert report.extra_files == ("1_Pooling/extra.bin", "notes.txt")
    assert "note  2 file(s) not in the manifest (not checked): 1_Pooling/extra.bin, notes.txt" in format_report(report)
    strict = verify(manifest, model, cache=False, strict_extra=True)
    assert not strict.ok and strict.failures == ()
    assert strict.summary() == "FAILED: org/tiny: 2 file(s) not in the manifest"
    with pytest.raises(VerificationError) as info:
        strict.raise_for_errors()
    assert "notes.txt: not listed in the manifest" in str(info.value)


def test_components_filter(manifest, model):
    (model / "tokenizer.json").unlink()
    report = verify(manifest, model, cache=False, components=["model"])
    assert report.ok
    assert {r.component for r in report.files} == {"model"}
    assert {r.path for r in report.files} == {e.path for e in manifest.files_of("model")}
    assert not verify(manifest, model, cache=False, components=["tokenizer"]).ok
    with pytest.raises(UsageError) as info:
        verify(manifest, model, cache=False, components=["sparse"])
    assert info.value.message == "unknown component(s) sparse for org/tiny"
    assert info.value.expected.startswith("one of: ")


def test_raise_for_errors_lists_every_failure(manifest, model):
    (model / "tokenizer.json").unlink()
    (model / "config.json").write_bytes(b"")
    report = verify(manifest, model, cache=False)
    with pytest.raises(VerificationError) as info:
        report.raise_for_errors()
    exc = info.value
    assert exc.report is report and exc.exit_code == 1
    assert isinstance(exc, modelguard.ModelGuardError)
    text = str(exc)
    assert "config.json [model]: is empty (0 bytes)" in text
    assert "tokenizer.json [tokenizer]: missing" in text
    assert exc.remedy == f"modelguard fetch org/tiny --revision {REVISION} --local-dir {model}"


def test_manifest_path_is_accepted_and_missing_directory_is_a_usage_error(manifest, model, tmp_path):
    manifest_file = tmp_path / "tiny.yaml"
    manifest_file.write_text(dump_manifest(manifest))
    assert modelguard.verify(str(manifest_file), model, cache=False).ok
    with pytest.raises(UsageError) as info:
        verify(manifest, tmp_path / "absent", cache=False)
    assert info.value.message == f"model directory {tmp_path / 'absent'} does not exist"
    assert "modelguard fetch org/tiny" in info.value.remedy


def test_verify_never_changes_the_files(manifest, model):
    (model / "config.json").write_bytes(b"")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in model.rglob("*") if p.is_file()}
    verify(manifest, model, cache=False)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in model.rglob("*") if p.is_file()}
    assert before == after


def test_model_id_and_hf_cache_snapshot_by_default(manifest, model):
    # a user manifest for org/tiny, and the model laid out as a Hugging Face cache snapshot
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "modelguard" / "manifests" / "org"
    user.mkdir(parents=True)
    (user / "tiny.yaml").write_text(dump_manifest(manifest))
    with pytest.raises(UsageError) as info:
        modelguard.verify("org/tiny", cache=False)
    assert info.value.message == (f"org/tiny @ {REVISION[:12]} is not in the Hugging Face cache "
                                  f"({os.environ['HF_HUB_CACHE']})")
    assert info.value.remedy.endswith(f"modelguard fetch org/tiny --revision {REVISION}")
    snapshot = Path(os.environ["HF_HUB_CACHE"]) / "models--org--tiny" / "snapshots" / REVISION
    shutil.copytree(model, snapshot)
    report = modelguard.verify("org/tiny", cache=False)
    assert report.ok and report.directory == str(snapshot)
    assert modelguard.verify("org/tiny", model, cache=False).ok
    with pytest.raises(modelguard.ManifestNotFoundError) as info:
        modelguard.verify("org/absent", model, cache=False)
    assert info.value.message == "no manifest known for org/absent"
