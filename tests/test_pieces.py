"""Chunk digests: build writes the sha256 of each piece of a large file, verify checks the
pieces on every core, tells which piece differs, caches the verdict, and a guarded load that
hashes the pieces while the library loads still refuses a corrupted file."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from helpers.requires import need

import modelguard
from modelguard import build as build_module
from modelguard import hashing
from modelguard.errors import DownloadError, ManifestError, VerificationError
from modelguard.hashing import FileChangedError, hash_fd
from modelguard.manifest import dump_manifest, load_manifest, parse_manifest_text
from modelguard.pieces import CHUNKED, ChunkedSha256, chunk_root, piece_size_for
from modelguard.verifying import verify

MIB = 1 << 20


def piece_digests(data: bytes, piece: int) -> list[str]:
    return [hashlib.sha256(data[i:i + piece]).hexdigest() for i in range(0, len(data), piece)]


@pytest.mark.parametrize("feed", [1, 4095, 4096, 10_000, 1 << 20])
def test_the_chunked_hasher_gives_each_pieces_sha256_whatever_the_reads(feed):
    data = os.urandom(3 * 4096 + 123)
    hasher = ChunkedSha256(4096)
    for i in range(0, len(data), feed):
        hasher.update(data[i:i + feed])
    assert hasher.chunk_digests() == piece_digests(data, 4096)
    assert hasher.hexdigest() == chunk_root(4096, piece_digests(data, 4096))


def test_the_root_changes_with_any_piece_and_with_the_piece_size():
    a = piece_digests(b"a" * 10_000, 4096)
    b = list(a)
    b[1] = hashlib.sha256(b"x").hexdigest()
    assert len({chunk_root(4096, a), chunk_root(4096, b), chunk_root(8192, a)}) == 3


def test_pieces_hashed_on_several_threads_equal_one_sequential_read(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    data = os.urandom(5 * 65536 + 77)
    path.write_bytes(data)
    monkeypatch.setattr(hashing, "usable_cpus", lambda: 3)
    started = []
    real_start = threading.Thread.start

    def start(thread):
        started.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces: list[str] = []
        got = hash_fd(fd, (CHUNKED,), threads=True, piece_size=65536, pieces=pieces)
        monkeypatch.setattr(threading.Thread, "start", real_start)
        serial: list[str] = []
        again = hash_fd(fd, (CHUNKED, "sha256"), threads=False, piece_size=65536, pieces=serial)
    finally:
        os.close(fd)
    assert pieces == serial == piece_digests(data, 65536)
    assert got[CHUNKED] == again[CHUNKED] == chunk_root(65536, pieces)
    assert again["sha256"] == hashlib.sha256(data).hexdigest()
    assert started == ["modelguard-hash", "modelguard-hash"]  # two helpers beside this thread


def test_a_file_cut_short_while_its_pieces_are_hashed_is_not_given_digests(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    path.write_bytes(os.urandom(8 * 65536))
    monkeypatch.setattr(hashing, "usable_cpus", lambda: 2)
    cut = []

    def truncate(n):
        if not cut:
            cut.append(n)
            os.truncate(path, 3 * 65536)

    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(FileChangedError, match="changed while it was read"):
            hash_fd(fd, (CHUNKED,), threads=True, piece_size=65536, progress=truncate)
    finally:
        os.close(fd)


def test_piece_size_keeps_a_huge_file_to_at_most_4096_pieces():
    assert piece_size_for(200 * MIB) == 64 * MIB
    assert piece_size_for(4096 * 64 * MIB) == 64 * MIB
    assert piece_size_for(4096 * 64 * MIB + 1) == 128 * MIB
    assert piece_size_for(5000 << 30) is None  # past 1 GiB pieces: no chunk digests


@pytest.fixture
def small_pieces(monkeypatch):
    """build writes chunk digests for files of 2 MiB or more, in 1 MiB pieces."""
    monkeypatch.setattr(build_module, "CHUNKED_MIN_SIZE", 2 * MIB)
    monkeypatch.setattr(build_module, "piece_size_for", lambda size: MIB)


@pytest.fixture
def chunked_model(tmp_path, small_pieces):
    folder = tmp_path / "model"
    folder.mkdir()
    data = os.urandom(5 * MIB + 1000)
    (folder / "model.safetensors").write_bytes(data)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    old = 1_600_000_000
    for name in ("model.safetensors", "config.json"):
        os.utime(folder / name, (old, old))  # settled: the digest cache keeps what verifies
    manifest_path = tmp_path / "m.yaml"
    manifest_path.write_text(dump_manifest(modelguard.build_manifest(folder, "acme/chunked")))
    return folder, manifest_path, data


def test_build_writes_chunk_digests_for_a_large_file_only(chunked_model):
    folder, manifest_path, data = chunked_model
    text = manifest_path.read_text()
    assert "chunks:" in text and text.count("chunks:") == 1
    entries = {e.path: e for e in load_manifest(manifest_path).files}
    assert entries["config.json"].chunks is None
    chunks = entries["model.safetensors"].chunks
    assert chunks.size == MIB and list(chunks.sha256) == piece_digests(data, MIB)
    assert entries["model.safetensors"].digests["sha256"] == hashlib.sha256(data).hexdigest()


def test_verify_checks_the_pieces_and_says_which_one_differs(chunked_model, isolated_env):
    folder, manifest_path, _ = chunked_model
    report = verify(str(manifest_path), folder, cache=False)
    weights = {r.path: r for r in report.files}["model.safetensors"]
    assert report.ok and "sha256_chunks" in weights.message
    assert weights.actual[CHUNKED] == load_manifest(manifest_path).files[1].chunks.root
    everything = verify(str(manifest_path), folder, cache=False, all_digests=True)
    assert everything.ok and "sha256+md5+sha256_chunks" in {r.path: r for r in everything.files}["model.safetensors"].message

    with open(folder / "model.safetensors", "r+b") as fh:
        fh.seek(3 * MIB + 10)
        byte = fh.read(1)
        fh.seek(3 * MIB + 10)
        fh.write(bytes([byte[0] ^ 1]))
    broken = {r.path: r for r in verify(str(manifest_path), folder, cache=False).files}["model.safetensors"]
    assert broken.diagnosis == "digest_mismatch"
    assert "1 of 6 pieces of 1 MiB differ from their sha256 (first: bytes 3145728..4194304)" in broken.message
    assert broken.actual["chunks_differ"] == [3]
    assert broken.remedy


def test_a_verified_chunked_file_is_answered_from_the_cache_next_time(chunked_model, isolated_env, tmp_path):
    from modelguard.statcache import StatCache

    folder, manifest_path, _ = chunked_model
    cache = StatCache(tmp_path / "cache", racy_window_ns=0)  # files this test just wrote are stored
    first = verify(str(manifest_path), folder, cache=cache)
    second = verify(str(manifest_path), folder, cache=cache)
    assert first.ok and second.ok
    weights = {r.path: r for r in second.files}["model.safetensors"]
    assert weights.cached and "sha256_chunks, cached" in weights.message
    with open(folder / "model.safetensors", "r+b") as fh:  # same size, new mtime: read again
        fh.write(b"\0")
    assert not verify(str(manifest_path), folder, cache=cache).ok


ENTRY = """modelguard: 1
model: acme/x
components: {{model: {{required: true}}}}
files:
- path: model.safetensors
  size: {size}
  sha256: {sha}
  chunks: {chunks}
"""
SHA = "ab" * 32


@pytest.mark.parametrize("size, chunks, problem", [
    (3 * MIB, "{size: 1000000, sha256: []}", "not a power of two from 1 MiB to 1 GiB"),
    (3 * MIB, "{size: 1024, sha256: []}", "not a power of two from 1 MiB to 1 GiB"),
    (MIB, "{size: 1048576, sha256: [" + SHA + "]}", "a file of one piece needs no chunk digests"),
    (3 * MIB, "{size: 1048576, sha256: [" + SHA + "]}", "not a list of 3 digests"),
    (3 * MIB, "{size: 1048576, sha256: [" + SHA + ", " + SHA + ", xyz]}", "sha256[2]: malformed sha256 digest"),
    (5000 * MIB, "{size: 1048576, sha256: []}", "5000 pieces of 1048576 bytes"),
    (3 * MIB, "{size: 1048576, sha256: [], md5: x}", "unknown key 'md5'"),
    (3 * MIB, "[1, 2]", "chunks: not a mapping"),
])
def test_malformed_chunk_digests_are_refused_with_where_and_what(size, chunks, problem):
    with pytest.raises(ManifestError) as info:
        parse_manifest_text(ENTRY.format(size=size, sha=SHA, chunks=chunks), source="m.yaml")
    assert problem in info.value.message
    assert "files[0] (model.safetensors).chunks" in info.value.message


def test_a_large_list_of_chunk_digests_fits_the_yaml_node_budget(monkeypatch):
    from modelguard import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "MAX_NODES", 5_000)
    items = "".join(f"    - a{i:063x}\n" for i in range(4096))
    text = ENTRY.format(size=4096 * MIB, sha=SHA, chunks="\n    size: 1048576\n    sha256:\n" + items)
    entry = parse_manifest_text(text, source="m.yaml").files[0]
    assert len(entry.chunks.sha256) == 4096


# ----------------------------------------------------------------------------- guarded load

transformers = need("transformers")
torch = need("torch")


@pytest.fixture
def chunked_bert(tmp_path, small_pieces):
    """A small real BERT whose weights (about 4 MB) have chunk digests in 1 MiB pieces."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=16384, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    folder = tmp_path / "bert"
    transformers.BertModel(config).save_pretrained(folder)
    modelguard.save_manifest(modelguard.build_manifest(folder, "acme/chunked-bert"), folder / "modelguard.yaml")
    entries = {e.path: e for e in load_manifest(folder / "modelguard.yaml").files}
    assert entries["model.safetensors"].chunks is not None
    return folder


@pytest.mark.guard(unknown="refuse")
@pytest.mark.usefixtures("installed_guard")
def test_a_guarded_load_of_chunked_weights_loads_and_refuses_a_flipped_byte(chunked_bert):
    model = transformers.AutoModel.from_pretrained(chunked_bert)
    assert model is not None
    weights = chunked_bert / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:  # a byte of the last tensor's data
        fh.seek(size - 5)
        byte = fh.read(1)
        fh.seek(size - 5)
        fh.write(bytes([byte[0] ^ 0x40]))
    returned = []
    with pytest.raises(VerificationError) as info:
        returned.append(transformers.AutoModel.from_pretrained(chunked_bert))
    assert not returned
    assert "pieces of 1 MiB differ from their sha256" in str(info.value)


# ----------------------------------------------------------------------------- fetch


def test_fetch_checks_a_download_by_its_pieces_as_verify_does(hub, tmp_path, small_pieces, isolated_env):
    """A download is judged by the same digests verify uses: pieces that do not match refuse
    the transfer even when the whole file's sha256 does."""
    import dataclasses

    from modelguard.hub.download import fetch, fetch_files
    from modelguard.pieces import ChunkDigests

    source = tmp_path / "source"
    source.mkdir()
    data = os.urandom(3 * MIB + 5)
    (source / "model.safetensors").write_bytes(data)
    (source / "config.json").write_text('{"model_type": "bert"}')
    commit = hub.add_directory("acme/chunked", source)
    manifest = modelguard.build_manifest(source, "acme/chunked", commit)
    weights = next(e for e in manifest.files if e.path == "model.safetensors")
    assert weights.chunks is not None and len(weights.chunks.sha256) == 4

    report = fetch(manifest, local_dir=tmp_path / "good")
    assert report.ok
    assert "sha256_chunks" in {r.path: r for r in report.files}["model.safetensors"].message
    assert (tmp_path / "good" / "model.safetensors").read_bytes() == data

    wrong = list(weights.chunks.sha256)
    wrong[2] = hashlib.sha256(b"another piece").hexdigest()
    lying = dataclasses.replace(manifest, files=tuple(
        dataclasses.replace(e, chunks=ChunkDigests(MIB, tuple(wrong))) if e is weights else e for e in manifest.files))
    with pytest.raises(DownloadError) as info:
        fetch_files(lying, local_dir=tmp_path / "bad")
    action = {a.path: a for a in info.value.result.actions}["model.safetensors"]
    assert action.action == "failed" and len(action.errors) == 3
    assert all("wrong bytes" in e and "pieces differ from the manifest's chunks" in e for e in action.errors)
    assert not (tmp_path / "bad" / "model.safetensors").exists()
