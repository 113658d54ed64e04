"""One read per file for every digest, in the calling thread or through the pipeline."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelguard import hashing
from modelguard.hashing import FileChangedError, hash_bytes, hash_fd, hash_file, hash_files, new_hasher

ALGORITHMS = ("sha256", "md5", "git_sha1")


def reference(data: bytes) -> dict[str, str]:
    """Digests computed straight with hashlib (and git's blob header), not by modelguard."""
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
        "git_sha1": hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest(),
    }


def hash_path(path, algorithms, *, threads, chunk_size=hashing.CHUNK_SIZE, progress=None):
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_fd(fd, algorithms, threads=threads, chunk_size=chunk_size, progress=progress)
    finally:
        os.close(fd)


@pytest.mark.parametrize("threads", [False, True], ids=["serial", "pipelined"])
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 5 * 4096 + 17, 64 * 4096])
def test_digests_match_hashlib(tmp_path, size, threads):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    # a 4 KiB chunk size makes the pipeline wrap around its ring of buffers many times
    got = hash_path(path, ALGORITHMS, threads=threads, chunk_size=4096)
    assert got == reference(data)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=50_000), chunk_size=st.integers(min_value=1, max_value=9000),
       threads=st.booleans())
def test_any_content_any_chunking(tmp_path_factory, data, chunk_size, threads):
    path = tmp_path_factory.mktemp("h") / "f.bin"
    path.write_bytes(data)
    assert hash_path(path, ("md5", "sha256"), threads=threads, chunk_size=chunk_size) == {
        k: v for k, v in reference(data).items() if k in ("md5", "sha256")
    }


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_sha1_is_gits_blob_id(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"hidden_size": 32}\n')
    git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert hash_file(path, ["git_sha1"]) == {"git_sha1": git.stdout.strip()}


@pytest.mark.parametrize("threads", [False, True], ids=["serial", "pipelined"])
def test_one_read_for_all_digests(tmp_path, monkeypatch, threads):
    data = os.urandom(300_000)
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    read_bytes = []
    real_preadv = os.preadv

    def counting_preadv(fd, buffers, offset, *flags):
        n = real_preadv(fd, buffers, offset, *flags)
        read_bytes.append(n)
        return n

    monkeypatch.setattr(os, "preadv", counting_preadv)
    got = hash_path(path, ALGORITHMS, threads=threads, chunk_size=65536)
    assert got == reference(data)
    assert sum(read_bytes) == len(data), "the file was read more than once"


def test_pipeline_hashes_each_digest_in_its_own_thread(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(200_000))
    threads_of: dict[str, set[int]] = {}
    real_new_hasher = hashing.new_hasher

    class Recording:
        def __init__(self, algorithm, size):
            self.inner = real_new_hasher(algorithm, size)
            self.algorithm = algorithm

        def update(self, chunk):
            threads_of.setdefault(self.algorithm, set()).add(threading.get_ident())
            self.inner.update(chunk)

        def hexdigest(self):
            return self.inner.hexdigest()

    monkeypatch.setattr(hashing, "new_hasher", Recording)
    got = hash_path(path, ("md5", "sha256"), threads=True, chunk_size=16384)
    assert got == {k: v for k, v in reference(path.read_bytes()).items() if k in ("md5", "sha256")}
    assert len(threads_of["md5"]) == 1 and len(threads_of["sha256"]) == 1
    md5_thread, = threads_of["md5"]
    sha_thread, = threads_of["sha256"]
    assert md5_thread != sha_thread, "md5 and sha256 were computed one after the other in one thread"
    assert threading.get_ident() not in (md5_thread, sha_thread)


def test_large_files_use_the_pipeline_by_default(tmp_path, monkeypatch):
    calls = []
    real = hashing._read_pipelined

    def spy(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(hashing, "_read_pipelined", spy)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    hash_file(small)
    assert calls == []
    monkeypatch.setattr(hashing, "PIPELINE_MIN_SIZE", 1000)
    assert hash_file(small) == {"sha256": hashlib.sha256(b"x" * 1000).hexdigest()}
    assert len(calls) == 1


@pytest.mark.parametrize("threads", [False, True], ids=["serial", "pipelined"])
def test_progress_counts_every_byte(tmp_path, threads):
    path = tmp_path / "p.bin"
    path.write_bytes(os.urandom(100_001))
    seen = []
    hash_path(path, ["sha256"], threads=threads, chunk_size=8192, progress=seen.append)
    assert sum(seen) == 100_001
    assert len(seen) == 13


@pytest.mark.parametrize("threads", [False, True], ids=["serial", "pipelined"])
def test_file_growing_while_read_is_refused(tmp_path, threads):
    path = tmp_path / "growing.bin"
    path.write_bytes(os.urandom(64 * 1024))
    appended = []

    def writer(_n):
        if not appended:
            with open(path, "ab") as f:
                f.write(b"more bytes")
            appended.append(True)

    with pytest.raises(FileChangedError, match=r"file changed while it was read \(\d+ bytes read, size now 65546\)"):
        hash_path(path, ["sha256"], threads=threads, chunk_size=4096, progress=writer)


@pytest.mark.parametrize("threads", [False, True], ids=["serial", "pipelined"])
def test_file_shrinking_while_read_is_refused(tmp_path, threads):
    path = tmp_path / "shrinking.bin"
    path.write_bytes(os.urandom(64 * 1024))

    def truncate(_n):
        os.truncate(path, 10_000)

    with pytest.raises(FileChangedError, match=r"file changed while it was read \(\d+ bytes read, size now 10000\)"):
        hash_path(path, ["md5", "sha256"], threads=threads, chunk_size=4096, progress=truncate)


def test_read_error_in_pipeline_is_raised_and_threads_end(tmp_path):
    before = {t for t in threading.enumerate() if t.name == "modelguard-hash"}
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: fstat works, read fails
    try:
        with pytest.raises(IsADirectoryError):
            hash_fd(fd, ("md5", "sha256"), threads=True)
    finally:
        os.close(fd)
    after = {t for t in threading.enumerate() if t.name == "modelguard-hash"}
    assert after == before, "digest threads were left running"


def test_hash_files_in_parallel_matches_one_by_one(tmp_path):
    paths = []
    for i in range(12):
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(os.urandom(1000 * (i + 1)))
        paths.append(p)
    got = hash_files(paths, ("sha256", "md5"), max_workers=4)
    assert set(got) == {str(p) for p in paths}
    for p in paths:
        assert got[str(p)] == {k: v for k, v in reference(p.read_bytes()).items() if k in ("sha256", "md5")}


def test_hash_bytes_equals_hash_file(tmp_path):
    data = b"tokenizer bytes" * 999
    (tmp_path / "t").write_bytes(data)
    assert hash_bytes(data, ALGORITHMS) == hash_file(tmp_path / "t", ALGORITHMS) == reference(data)


def test_unknown_algorithm_is_named():
    with pytest.raises(ValueError, match="unknown digest algorithm 'sha3'"):
        new_hasher("sha3", 0)


def test_import_modelguard_loads_no_engine_and_keeps_verify_the_function():
    code = (
        "import sys; before = set(sys.modules); import modelguard; "
        "new = set(sys.modules) - before; "
        "heavy = {'modelguard.engine', 'modelguard.verifying', 'modelguard.hashing', 'modelguard.statcache', 'hashlib', "
        "'concurrent.futures', 'threading', 'dataclasses', 'json', 'sqlite3', 'yaml', 'torch', "
        "'transformers', 'huggingface_hub'}; "
        "print(sorted(new & heavy)); "
        "import modelguard.engine as engine; from modelguard.report import format_report; "
        "print(modelguard.verify is modelguard.verify.__globals__['verify'], callable(format_report))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines() == ["[]", "True True"], proc.stdout + proc.stderr


def test_verify_reads_in_parallel_through_the_pipeline(tmp_path, monkeypatch):
    """verify() with several files, the largest hashed in the pipeline, every digest checked."""
    from modelguard import verify
    from modelguard.manifest import parse_manifest_text

    monkeypatch.setattr(hashing, "PIPELINE_MIN_SIZE", 64 * 1024)
    files = {f"shard-{i}.bin": os.urandom(40_000 * (i + 1) if i < 5 else 1_200_000) for i in range(6)}
    pipelined = []
    real = hashing._read_pipelined
    monkeypatch.setattr(hashing, "_read_pipelined", lambda fd, size, *rest: pipelined.append(size) or real(fd, size, *rest))
    lines = ["modelguard: 1", "model: local/shards", "components:", "  w: {required: true}", "files:"]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        ref = reference(data)
        lines += [f"- path: {name}", f"  size: {len(data)}", "  component: w",
                  f"  sha256: {ref['sha256']}", f"  md5: {ref['md5']}"]
    manifest = parse_manifest_text("\n".join(lines) + "\n")
    seen = []
    report = verify(manifest, tmp_path, all_digests=True, cache=False, progress=seen.append, max_workers=3)
    assert report.ok, report.summary()
    assert sum(seen) == sum(len(d) for d in files.values())
    assert report.result("shard-5.bin").message == "ok (1.20 MB, sha256+md5)"
    assert pipelined == [1_200_000]  # the others would keep the other readers busy meanwhile
    assert not [t for t in threading.enumerate() if t.name in ("modelguard-verify", "modelguard-hash")]
    with open(tmp_path / "shard-4.bin", "r+b") as f:
        f.seek(100_000)
        f.write(b"\xff" * 8)
    report = verify(manifest, tmp_path, all_digests=True, cache=False, max_workers=3)
    bad = report.result("shard-4.bin")
    assert [r.path for r in report.failures] == ["shard-4.bin"]
    assert bad.message.startswith("right size, wrong content: sha256: expected ")
    assert "; md5: expected " in bad.message


def test_benchmark_runs_and_cleans_up(tmp_path):
    """tools/bench.py end to end on tiny data (its figures are not checked here)."""
    from helpers.cli import REPO

    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench.py"), "--quick", "--size-gb", "0.004", "--scale", "0.0005",
         "--small-files", "4", "--shards", "2", "--shard-gb", "0.002", "--repeat", "1", "--import-repeat", "1",
         "--no-loads", "--dir", str(tmp_path), "--json", str(out_json)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for heading in ("(a) one 0.004 GiB file", "(b) bge-m3-shaped directory (12 files", "(c) 4 files of 4-64 KiB",
                    "(d) sharded model, 2 x 0.002 GiB", "warm verify (stat cache hit", "import time",
                    "targets (issues 5 and 15)"):
        assert heading in proc.stdout
    assert "files are in the page cache" in proc.stdout
    results = json.loads(out_json.read_text())
    assert set(results["large"]) >= {"modelguard verify sha256 (cold)", "huggingface_hub sha_fileobj (sha256)"}
    assert results["warm"]["(b) bge-m3-shaped dir, manifest file"]["warm_ms"] > 0
    assert results["warm"]["(c) 4 small files"]["us_per_file"] > 0
    targets = results["targets"]
    assert "(c) 4 small files cold vs one-thread loop >= 1.5x" in targets
    assert all(set(t) == {"value", "reference", "met"} for t in targets.values())
    verdicts = [line.rsplit(" ", 1)[-1] for line in proc.stdout.split("targets (issues 5 and 15)")[1].splitlines()
                if line.strip().endswith(("met", "NOT MET"))]
    assert len(verdicts) == len(targets)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"], "benchmark data left behind"


def test_fast_path_lookup_never_leaves_the_model_directory(tmp_path):
    """Entries built in code (not validated from YAML) with '..' still cannot reach outside."""
    import dataclasses

    from modelguard import verify
    from modelguard.manifest import parse_manifest_text

    model = tmp_path / "model"
    model.mkdir()
    (model / "a.bin").write_bytes(b"x")
    (tmp_path / "outside.bin").write_bytes(b"secret")
    manifest = parse_manifest_text(
        "modelguard: 1\nmodel: local/a\ncomponents:\n  w: {required: true}\nfiles:\n"
        f"- path: a.bin\n  size: 1\n  component: w\n  sha256: {hashlib.sha256(b'x').hexdigest()}\n"
    )
    entry = dataclasses.replace(manifest.files[0], path="../outside.bin", size=6,
                                digests={"sha256": hashlib.sha256(b"secret").hexdigest()})
    report = verify(dataclasses.replace(manifest, files=(entry,)), model, cache=False)
    result = report.files[0]
    assert (result.status, result.diagnosis) == ("failed", "symlink_escape")
    assert result.message == f"links outside the model directory (to {tmp_path / 'outside.bin'}); not followed"


@pytest.mark.parametrize(("sizes", "readers", "expected"), [
    ((3 << 20, 3 << 20), 2, []),  # two equal shards, two readers: each core reads and hashes one
    ((3 << 20, 3 << 20), 1, [3 << 20, 3 << 20]),  # one reader: the hashing thread takes the other core
    ((3 << 20, 1 << 20, 20_000), 2, [3 << 20]),  # one big file: the second core would sit idle
    ((3 << 20, 3 << 20, 3 << 20, 3 << 20), 4, []),
    ((4 << 20, 3 << 20, 1 << 20), 4, [4 << 20, 3 << 20]),  # four readers, three files: cores to spare
], ids=["two-shards-two-readers", "one-reader", "one-big-file", "four-shards-four-readers", "cores-to-spare"])
def test_verify_hashes_a_file_beside_its_read_only_while_a_core_would_sit_idle(tmp_path, monkeypatch, sizes,
                                                                                readers, expected):
    from modelguard import engine, verify
    from modelguard.manifest import parse_manifest_text

    monkeypatch.setattr(hashing, "PIPELINE_MIN_SIZE", 1 << 20)
    monkeypatch.setattr(engine, "usable_cpus", lambda: readers)  # a core per reader, none left over
    pipelined = []
    real = hashing._read_pipelined
    monkeypatch.setattr(hashing, "_read_pipelined", lambda fd, size, *rest: pipelined.append(size) or real(fd, size, *rest))
    lines = ["modelguard: 1", "model: local/shards", "components:", "  w: {required: true}", "files:"]
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        (tmp_path / f"part-{i}.bin").write_bytes(data)
        lines += [f"- path: part-{i}.bin", f"  size: {size}", "  component: w", f"  sha256: {reference(data)['sha256']}"]
    manifest = parse_manifest_text("\n".join(lines) + "\n")
    report = verify(manifest, tmp_path, cache=False, max_workers=readers)
    assert report.ok, report.summary()
    assert sorted(pipelined, reverse=True) == expected


def test_a_big_file_the_cache_answers_keeps_no_reader_busy(tmp_path, monkeypatch):
    """Of two shards, the one the folder's digest index still answers is not read: the other,
    read alone on two readers, is hashed beside its read (the second core would sit idle)."""
    from modelguard import engine, verify
    from modelguard.manifest import parse_manifest_text
    from modelguard.statcache import StatCache

    monkeypatch.setattr(hashing, "PIPELINE_MIN_SIZE", 1 << 20)
    monkeypatch.setattr(engine, "usable_cpus", lambda: 2)
    pipelined = []
    real = hashing._read_pipelined
    monkeypatch.setattr(hashing, "_read_pipelined", lambda fd, size, *rest: pipelined.append(size) or real(fd, size, *rest))
    model = tmp_path / "model"
    model.mkdir()
    lines = ["modelguard: 1", "model: local/shards", "components:", "  w: {required: true}", "files:"]
    shards = {f"part-{i}.bin": os.urandom(3 << 20) for i in range(2)}
    for name, data in shards.items():
        (model / name).write_bytes(data)
        lines += [f"- path: {name}", f"  size: {len(data)}", "  component: w", f"  sha256: {reference(data)['sha256']}"]
    manifest = parse_manifest_text("\n".join(lines) + "\n")
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=0, index_settle_ns=0)
    report = verify(manifest, model, cache=cache, max_workers=2)
    assert report.ok, report.summary()
    assert pipelined == []  # both read at once: each core reads and hashes one
    (model / "new.bin").write_bytes(shards["part-1.bin"])  # the same bytes, another file (a download again)
    os.replace(model / "new.bin", model / "part-1.bin")
    report = verify(manifest, model, cache=cache, max_workers=2)
    assert report.ok, report.summary()
    assert [r.message for r in report.files] == ["ok (3.15 MB, sha256, cached)", "ok (3.15 MB, sha256)"]
    assert pipelined == [3 << 20]


@pytest.mark.parametrize("chunked", [False, True], ids=["sha256", "pieces"])
def test_two_shards_on_a_machine_of_more_cores_than_readers_are_hashed_beside_their_reads(tmp_path, monkeypatch,
                                                                                          chunked):
    """Two shards, two readers, eight cores: six cores would sit idle, so each shard is hashed
    beside its read (its pieces on every core, when the manifest lists them)."""
    from modelguard import engine, verify
    from modelguard.manifest import parse_manifest_text

    monkeypatch.setattr(hashing, "PIPELINE_MIN_SIZE", 1 << 20)
    monkeypatch.setattr(hashing, "usable_cpus", lambda: 8)
    monkeypatch.setattr(engine, "usable_cpus", lambda: 8)
    pipelined = []
    real_pipeline, real_pieces = hashing._read_pipelined, hashing._hash_pieces
    monkeypatch.setattr(hashing, "_read_pipelined",
                        lambda fd, size, *rest: pipelined.append(size) or real_pipeline(fd, size, *rest))
    monkeypatch.setattr(hashing, "_hash_pieces",
                        lambda fd, size, *rest: pipelined.append(size) or real_pieces(fd, size, *rest))
    lines = ["modelguard: 1", "model: local/shards", "components:", "  w: {required: true}", "files:"]
    for i in range(2):
        data = os.urandom(3 << 20)
        (tmp_path / f"part-{i}.bin").write_bytes(data)
        lines += [f"- path: part-{i}.bin", f"  size: {len(data)}", "  component: w", f"  sha256: {reference(data)['sha256']}"]
        if chunked:
            lines += ["  chunks:", "    size: 1048576", "    sha256:"]
            lines += [f"    - {hashlib.sha256(data[k:k + (1 << 20)]).hexdigest()}" for k in range(0, len(data), 1 << 20)]
    manifest = parse_manifest_text("\n".join(lines) + "\n")
    report = verify(manifest, tmp_path, cache=False)
    assert report.ok, report.summary()
    assert {r.message for r in report.files} == {f"ok (3.15 MB, {'sha256_chunks' if chunked else 'sha256'})"}
    assert pipelined == [3 << 20, 3 << 20]
