"""Every reading a loader could take of a pickle-bearing file, each stream judged by the
pickle gate (:mod:`modelguard.pickle_gate`): pickle.load's and torch's legacy readings, joblib
(plain and compressed, array bytes skipped as joblib reads them), .npy object arrays, every zip
member and duplicate (nested zips too), and torch's legacy tar format."""

from __future__ import annotations

import os
from typing import Any, Callable

from .pickle_gate import (COMPRESSED_MAGIC, JOBLIB_ARRAY, JOBLIB_REAL, MAX_CONTAINER_NESTING, MAX_DECOMPRESSED_BYTES,
                          NPY_MAGIC, STORAGE_BYTES, TORCH_MAGIC, FdStream, Inert, Judgement, looks_like_pickle_start,
                          py3_name, read_pickles, stand_in)
from .sniff import ZIP_MAGIC


def judge_readings(fd: int, size: int, head: bytes, judgement: Judgement) -> Judgement:
    """Judge every reading a loader could take of the file at ``fd`` (``head``: its first
    bytes) into ``judgement``."""
    compressed = next((kind for magic, kind in COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
    if compressed is not None:
        try:
            stream = decompressed(fd, compressed)
            try:
                inner_head = stream.read(64)
            finally:
                stream.close()
        except Exception:  # noqa: BLE001 - not really compressed, or no decompressor: joblib cannot read it either
            inner_head = b""
        if looks_like_pickle_start(inner_head):
            # only joblib reads a compressed pickle, and it reads the array bytes between opcodes
            stream = decompressed(fd, compressed)
            try:
                if not judge_joblib(stream, judgement, ""):
                    stream.close()
                    stream = decompressed(fd, compressed)
                    read_pickles(stream, judgement, "", 1)
            finally:
                stream.close()
    # and as it is: "BZh" (bz2) is also a BINBYTES opcode pickle.load would run
    judge_stream_readings(lambda: FdStream(fd, size), head, judgement, "", 0)
    with os.fdopen(os.dup(fd), "rb") as fh:  # a duplicate shares the offset: start from 0
        fh.seek(0)
        judge_zip(fh, judgement, "", 0)
    if not head.startswith(ZIP_MAGIC):
        with os.fdopen(os.dup(fd), "rb") as fh:
            fh.seek(0)
            judge_tar(fh, judgement, "")
    return judgement


def judge_stream_readings(open_stream: Callable[[], Any], head: bytes, judgement: Judgement, where: str,
                           depth: int) -> None:
    """Every reading of one byte stream (a file, a zip member, a decompressed joblib)."""
    if head.startswith(NPY_MAGIC):
        _judge_npy(open_stream(), judgement, where)
        return
    # Read whatever the first byte: the unpickler takes any opcode first (no PROTO needed),
    # and stops at once, having imported nothing, on a byte that is not one.
    stream = open_stream()
    first = read_pickles(stream, judgement, where, 1)
    if first and type(first[0]) is int and first[0] == TORCH_MAGIC:  # torch's legacy format
        read_pickles(stream, judgement, where, 4)
    if JOBLIB_ARRAY in judgement.seen:
        judge_joblib(open_stream(), judgement, where)


def _judge_npy(stream: Any, judgement: Judgement, where: str) -> None:
    """An .npy whose dtype holds Python objects stores them as a pickle after the header
    (``numpy.load(allow_pickle=True)`` unpickles it)."""
    import ast

    magic = stream.read(8)
    if len(magic) < 8:
        return
    width = 2 if magic[6] == 1 else 4
    raw = stream.read(width)
    if len(raw) < width:
        return
    length = int.from_bytes(raw, "little")
    header = stream.read(min(length, 1 << 20))
    try:
        info = ast.literal_eval(header.decode("latin1"))
        descr = repr(info["descr"])
    except Exception:  # noqa: BLE001 - numpy refuses it too
        return
    if "'O'" in descr or "|O" in descr or "O'" in descr:
        read_pickles(stream, judgement, where, 1)


class _JoblibSkip(Exception):
    pass


def judge_joblib(stream: Any, judgement: Judgement, where: str) -> bool:
    """Read a joblib pickle as ``joblib.load`` does: array bytes follow each array wrapper in
    the stream (skipped here, never parsed as opcodes); an object array's inner pickle is
    judged like any other. False when joblib is not installed (nothing read)."""
    try:
        import pickle

        from joblib import numpy_pickle
    except ImportError:
        return False
    cache: dict = {}

    class JoblibGate(pickle._Unpickler):  # joblib's NumpyUnpickler is this Python unpickler too
        dispatch = dict(pickle._Unpickler.dispatch)

        def find_class(self, module: str, name: str) -> Any:
            key = py3_name(module, name) if self.proto < 3 else (module, name)
            judgement.record(*key, where)
            if key in JOBLIB_REAL:
                return super().find_class(*key)
            return stand_in(key, cache)

        def persistent_load(self, pid: Any) -> Any:
            return Inert()

        def load_build(self) -> None:
            pickle._Unpickler.load_build(self)
            wrapper = self.stack[-1]
            if isinstance(wrapper, numpy_pickle.NumpyArrayWrapper):
                self.stack[-1] = Inert()
                _skip_joblib_array(wrapper, self._file_handle, judgement, where)

        dispatch[pickle.BUILD[0]] = load_build

    unpickler = JoblibGate(stream, encoding="latin1")
    unpickler._file_handle = stream
    try:
        unpickler.load()
        judgement.pickles += 1
    except Exception:  # noqa: BLE001 - joblib stops at the same point
        pass
    return True


def _skip_joblib_array(wrapper: Any, stream: Any, judgement: Judgement, where: str) -> None:
    dtype = getattr(wrapper, "dtype", None)
    if dtype is None or not hasattr(dtype, "hasobject"):
        raise _JoblibSkip("no dtype")
    if dtype.hasobject:
        read_pickles(stream, judgement, where, 1)
        return
    if getattr(wrapper, "numpy_array_alignment_bytes", None) is not None:
        padding = stream.read(1)
        if padding and padding[0]:
            stream.read(padding[0])
    count = 1
    for d in getattr(wrapper, "shape", ()):
        count *= int(d)
    left = count * dtype.itemsize
    while left > 0:
        chunk = stream.read(min(left, 1 << 22))
        if not chunk:
            raise _JoblibSkip("truncated")
        left -= len(chunk)


def judge_zip(fh: Any, judgement: Judgement, where: str, depth: int) -> None:
    """Every member of a zip, each duplicate on its own (torch reads the first of two members
    with one name, Python's zipfile the last)."""
    import io
    import zipfile

    try:
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError):
        return
    with archive:
        for info in archive.infolist():
            label = f"{where}:{info.filename}" if where else info.filename
            try:
                with archive.open(info) as member:
                    head = member.read(64)
            except Exception as exc:  # noqa: BLE001 - encrypted, unsupported compression, damaged
                if info.filename.endswith((".pkl", ".pickle")):
                    judgement.problems.append(f"member {info.filename} cannot be read ({exc}), so it cannot be checked")
                continue
            named = info.filename.endswith((".pkl", ".pickle"))
            # a member of another name counts as a pickle only with a protocol 2+ header: raw
            # tensor bytes (data/0 ...) start with anything, protocol 0/1 opcodes included
            pickled = named or (head[:1] == b"\x80" and looks_like_pickle_start(head))
            nested = head.startswith(ZIP_MAGIC) or head.startswith(NPY_MAGIC)
            if not (pickled or nested):
                continue
            if named and info.file_size > judgement.member_limit:
                judgement.problems.append(
                    f"archive member {info.filename} would unpack to {info.file_size} bytes of pickle (over "
                    f"{judgement.member_limit}); not scanned, refused (a decompression bomb, or not a checkpoint)")
                continue
            if head.startswith(ZIP_MAGIC):
                if info.file_size > judgement.member_limit:
                    judgement.problems.append(
                        f"archive member {info.filename} is a zip of {info.file_size} bytes (over "
                        f"{judgement.member_limit}); not checked, refused")
                    continue
                if depth >= MAX_CONTAINER_NESTING:
                    judgement.problems.append(f"zip nested more than {MAX_CONTAINER_NESTING} deep at {label}; not checked")
                    continue
                with archive.open(info) as member:
                    data = member.read(judgement.member_limit + 1)
                judge_zip(io.BytesIO(data), judgement, label, depth + 1)
                continue
            judge_stream_readings(lambda: archive.open(info), head, judgement, label, depth)


def judge_tar(fh: Any, judgement: Judgement, where: str) -> None:
    """torch's legacy tar format: ``sys_info``, ``pickle``, ``storages`` and ``tensors``
    members, the last two pickles interleaved with raw data."""
    import struct as _struct
    import tarfile

    try:
        archive = tarfile.open(fileobj=fh, mode="r:")
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return
    with archive:
        for member in archive.getmembers():
            if not member.isfile():
                continue
            stream = archive.extractfile(member)
            if stream is None:
                continue
            label = f"{where}:{member.name}" if where else member.name
            if member.name == "storages":
                counts = read_pickles(stream, judgement, label, 1)
                total = counts[0] if counts and type(counts[0]) is int else 0
                for _ in range(min(total, 1 << 20)):
                    args = read_pickles(stream, judgement, label, 1)
                    storage_type = args[0][2] if args and isinstance(args[0], tuple) and len(args[0]) == 3 else None
                    name = getattr(storage_type, "_mg_global", ("", ""))[1]
                    width = STORAGE_BYTES.get(name[: -len("Storage")] if name.endswith("Storage") else "")
                    raw = stream.read(8)
                    if width is None or len(raw) < 8:
                        break
                    stream.seek(_struct.unpack("<q", raw)[0] * width, 1)
                read_pickles(stream, judgement, label, 1)
            elif member.name == "tensors":
                counts = read_pickles(stream, judgement, label, 1)
                total = counts[0] if counts and type(counts[0]) is int else 0
                for _ in range(min(total, 1 << 20)):
                    if not read_pickles(stream, judgement, label, 1):
                        break
                    raw = stream.read(8)
                    if len(raw) < 8:
                        break
                    ndim = _struct.unpack("<i", raw[:4])[0]
                    stream.seek(16 * max(ndim, 0) + 8, 1)
            else:
                head = stream.read(64)
                stream.seek(0)
                if member.name in ("pickle", "sys_info") or looks_like_pickle_start(head):
                    read_pickles(stream, judgement, label, 1)


def decompressed(fd: int, kind: str) -> Any:
    """A file object of the decompressed bytes (how joblib opens a compressed dump)."""
    import bz2
    import gzip
    import lzma

    raw = os.fdopen(os.dup(fd), "rb")  # a duplicate shares the offset: start from 0
    raw.seek(0)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if kind == "bz2":
        return bz2.BZ2File(raw)
    if kind in ("xz", "lzma"):
        return lzma.LZMAFile(raw)
    if kind == "lz4":
        import lz4.frame  # joblib's lz4 support needs it too

        return lz4.frame.LZ4FrameFile(raw)
    return _ZlibStream(raw)


class _ZlibStream:
    """A zlib stream read incrementally (joblib's ``.z`` files); stops at MAX_DECOMPRESSED_BYTES."""

    def __init__(self, raw: Any) -> None:
        import zlib

        self.raw, self.inflater, self.buffer, self.total = raw, zlib.decompressobj(), b"", 0

    def read(self, n: int = -1) -> bytes:
        want = MAX_DECOMPRESSED_BYTES if n is None or n < 0 else n
        while len(self.buffer) < want and not self.inflater.eof:
            chunk = self.raw.read(1 << 16)
            if not chunk:
                break
            self.buffer += self.inflater.decompress(chunk, max(want - len(self.buffer), 1 << 16))
            while self.inflater.unconsumed_tail and len(self.buffer) < want:
                self.buffer += self.inflater.decompress(self.inflater.unconsumed_tail, 1 << 16)
        out, self.buffer = self.buffer[:want], self.buffer[want:]
        self.total += len(out)
        if self.total > MAX_DECOMPRESSED_BYTES:
            raise ValueError("decompressed stream too large")
        return out

    def readline(self, limit: int = -1) -> bytes:
        out = bytearray()
        while len(out) < (1 << 20):
            c = self.read(1)
            if not c:
                break
            out += c
            if c == b"\n":
                break
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.raw.close()
