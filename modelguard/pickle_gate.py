"""The pickle gate: which globals a pickle stream imports, found by CPython's own
unpickler with every global replaced by an inert stand-in, judged against an allowlist
(default deny). The readers of containers (zip, tar, npy, joblib, compressed files) are in
:mod:`modelguard.pickle_containers`; the verdict on a file in :mod:`modelguard.safety`."""

from __future__ import annotations

import os
from typing import Any

# A checkpoint's data.pkl holds tensor metadata only: a few MB even for the largest models.
MAX_PICKLE_MEMBER_BYTES = 256 * 1024 * 1024

#
# Default deny: a pickle is safe only when every global it imports is one that safe weight
# loading needs (ALLOWED_GLOBALS); anything else is unsafe, whatever it is.
#
# How globals are found. Each pickle stream is run through CPython's own unpickler (the
# parser pickle.load, torch.load and joblib.load use) with every global, persistent id and
# extension code resolved to an inert stand-in: nothing is imported and nothing real is
# called, but opcodes, the memo, STACK_GLOBAL operands and dotted names are read exactly as a
# loader reads them. That is why this is not picklescan (the previous scanner here): it is a
# denylist (unknown names were "suspicious", exit 0), it resolves STACK_GLOBAL by looking back
# at earlier opcodes (fooled by memo tricks), and for a zip it reads the last of two members
# with one name while torch reads the first. torch's get_unsafe_globals_in_checkpoint reads
# zip checkpoints only, knows the protocol-2 GLOBAL opcode only, and needs torch imported;
# fickling is not installed and interprets opcodes with its own model. The allowlist itself is
# torch's: the globals its weights_only unpickler accepts (torch 2.13), plus numpy's array
# reconstruction and joblib's array wrapper (whose array bytes are read the way joblib reads
# them, an object array's inner pickle judged like any other).
#
# Which streams: every reading a loader could take of the file. A file starting with a pickle
# opcode is read as pickle.load reads it (one pickle) and, when its first pickle is torch's
# magic number, as torch's legacy loader reads it (five pickles); a file holding joblib's array
# wrapper also as joblib reads it (compressed joblib files are decompressed first); a zip (from
# its central directory, wherever it starts) member by member, every member and every
# duplicate, any name, nested zips and .npy members included; a tar as torch's legacy tar
# loader reads it; an .npy whose dtype holds objects (its data is a pickle). A polyglot is
# therefore judged by each of its readings.

MAX_CONTAINER_NESTING = 3
TORCH_MAGIC = 0x1950A86A20F9469CFC6C
MAX_DECOMPRESSED_BYTES = 64 * 1024**3
NPY_MAGIC = b"\x93NUMPY"
SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x5d\x00\x00": "lzma",
    b"\x04\x22\x4d\x18": "lz4", b"\x78\x01": "zlib", b"\x78\x5e": "zlib", b"\x78\x9c": "zlib",
    b"\x78\xda": "zlib",
}

# torch._weights_only_unpickler._get_allowed_globals() of torch 2.13 (tests check it still holds).
_TORCH_WEIGHTS_ONLY = """
_codecs.encode builtins.bytearray builtins.complex builtins.set collections.Counter collections.OrderedDict
torch.BFloat16Storage torch.BFloat16Tensor torch.BoolStorage torch.BoolTensor torch.ByteStorage
torch.ByteTensor torch.CharStorage torch.CharTensor torch.ComplexDoubleStorage torch.ComplexFloatStorage
torch.DoubleStorage torch.DoubleTensor torch.FloatStorage torch.FloatTensor torch.HalfStorage
torch.HalfTensor torch.IntStorage torch.IntTensor torch.LongStorage torch.LongTensor torch.QInt32Storage
torch.QInt8Storage torch.QUInt2x4Storage torch.QUInt4x2Storage torch.QUInt8Storage torch.ShortStorage
torch.ShortTensor torch.Size torch.Tensor torch._tensor._rebuild_from_type_v2
torch._utils._rebuild_device_tensor_from_cpu_tensor torch._utils._rebuild_device_tensor_from_numpy
torch._utils._rebuild_meta_tensor_no_storage torch._utils._rebuild_nested_tensor
torch._utils._rebuild_parameter torch._utils._rebuild_parameter_with_state torch._utils._rebuild_qtensor
torch._utils._rebuild_sparse_tensor torch._utils._rebuild_tensor torch._utils._rebuild_tensor_v2
torch._utils._rebuild_tensor_v3 torch._utils._rebuild_wrapper_subclass torch.bfloat16 torch.bits16
torch.bits1x8 torch.bits2x4 torch.bits4x2 torch.bits8 torch.bool torch.complex128 torch.complex32
torch.complex64 torch.cuda.BFloat16Storage torch.cuda.BFloat16Tensor torch.cuda.BoolStorage
torch.cuda.BoolTensor torch.cuda.ByteStorage torch.cuda.ByteTensor torch.cuda.CharStorage
torch.cuda.CharTensor torch.cuda.ComplexDoubleStorage torch.cuda.ComplexFloatStorage
torch.cuda.DoubleStorage torch.cuda.DoubleTensor torch.cuda.FloatStorage torch.cuda.FloatTensor
torch.cuda.HalfStorage torch.cuda.HalfTensor torch.cuda.IntStorage torch.cuda.IntTensor
torch.cuda.LongStorage torch.cuda.LongTensor torch.cuda.ShortStorage torch.cuda.ShortTensor
torch.cuda.sparse.BFloat16Tensor torch.cuda.sparse.ByteTensor torch.cuda.sparse.CharTensor
torch.cuda.sparse.DoubleTensor torch.cuda.sparse.FloatTensor torch.cuda.sparse.HalfTensor
torch.cuda.sparse.IntTensor torch.cuda.sparse.LongTensor torch.cuda.sparse.ShortTensor torch.device
torch.float16 torch.float32 torch.float4_e2m1fn_x2 torch.float64 torch.float8_e4m3fn torch.float8_e4m3fnuz
torch.float8_e5m2 torch.float8_e5m2fnuz torch.float8_e8m0fnu torch.int1 torch.int16 torch.int2 torch.int3
torch.int32 torch.int4 torch.int5 torch.int6 torch.int64 torch.int7 torch.int8
torch.nn.parameter.Parameter torch.per_channel_affine torch.per_channel_affine_float_qparams
torch.per_channel_symmetric torch.per_tensor_affine torch.per_tensor_symmetric torch.qint32 torch.qint8
torch.quint2x4 torch.quint4x2 torch.quint8 torch.serialization._get_layout torch.sparse.BFloat16Tensor
torch.sparse.ByteTensor torch.sparse.CharTensor torch.sparse.DoubleTensor torch.sparse.FloatTensor
torch.sparse.HalfTensor torch.sparse.IntTensor torch.sparse.LongTensor torch.sparse.ShortTensor
torch.storage.TypedStorage torch.storage.UntypedStorage torch.uint1 torch.uint16 torch.uint2 torch.uint3
torch.uint32 torch.uint4 torch.uint5 torch.uint6 torch.uint64 torch.uint7 torch.uint8
""".split()

# numpy arrays and scalars as pickle writes them (numpy 1 and 2 module names); dtypes by class.
_NUMPY_ARRAYS = ["numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
                 "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
                 "numpy._core.multiarray.scalar", "numpy.core.numeric._frombuffer",
                 "numpy._core.numeric._frombuffer"] + [f"numpy.dtypes.{n}DType" for n in (
    "Bool Byte Bytes CLongDouble Complex128 Complex64 DateTime64 Float16 Float32 Float64 Int16 Int32 "
    "Int64 Int8 Int Long LongDouble LongLong Short Str TimeDelta64 UByte UInt16 UInt32 UInt64 UInt8 UInt "
    "ULong ULongLong UShort Void").split()]
JOBLIB_ARRAY = ("joblib.numpy_pickle", "NumpyArrayWrapper")

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    tuple(n.rsplit(".", 1)) for n in [*_TORCH_WEIGHTS_ONLY, *_NUMPY_ARRAYS, "builtins.frozenset", "builtins.slice"]
) | {JOBLIB_ARRAY}
# Globals the joblib reading builds for real (to learn an array's dtype and size); every
# other global, allowed or not, stays an inert stand-in.
JOBLIB_REAL = frozenset({JOBLIB_ARRAY, ("numpy", "dtype")} | {g for g in ALLOWED_GLOBALS if g[0] == "numpy.dtypes"})
STORAGE_BYTES = {"Double": 8, "Float": 4, "Half": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1, "Byte": 1,
                  "Bool": 1, "BFloat16": 2, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1, "QUInt8": 1,
                  "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1}


class Inert:
    """What every global, persistent id and extension code becomes while a pickle is judged:
    callable, constructible and settable, and doing nothing."""

    _mg_global: tuple[str, str] = ("", "")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "Inert":
        return Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names as pickle's fix_imports maps them (``__builtin__.set`` is ``builtins.set``)."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class Judgement:
    """Globals seen by every reading of one file, with where each was seen."""

    def __init__(self, member_limit: int = MAX_PICKLE_MEMBER_BYTES) -> None:
        self.member_limit = member_limit  # the largest zip member read as a pickle or a nested zip
        self.seen: dict[tuple[str, str], str] = {}
        self.problems: list[str] = []
        self.pickles = 0

    def record(self, module: str, name: str, where: str) -> None:
        self.seen.setdefault((module, name), where)

    @property
    def denied(self) -> list[tuple[str, str, str]]:
        return [(m, n, w) for (m, n), w in self.seen.items() if (m, n) not in ALLOWED_GLOBALS]


def stand_in(key: tuple[str, str], cache: dict) -> type:
    cls = cache.get(key)
    if cls is None:
        cls = cache[key] = type("Inert", (Inert,), {"_mg_global": key})
    return cls


def gate_unpickler(stream: Any, judgement: Judgement, where: str) -> Any:
    import pickle

    cache: dict = {}

    class GateUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            key = py3_name(module, name)
            judgement.record(*key, where)
            return stand_in(key, cache)

        def persistent_load(self, pid: Any) -> Any:
            return Inert()

    return GateUnpickler(stream, encoding="latin1")


def read_pickles(stream: Any, judgement: Judgement, where: str, count: int | None = 1) -> list[Any]:
    """Load up to ``count`` pickles one after another from ``stream`` the way successive
    ``pickle.load`` calls would (None: as many as parse); returns what each gave."""
    values = []
    while count is None or len(values) < count:
        try:
            values.append(gate_unpickler(stream, judgement, where).load())
            judgement.pickles += 1
        except Exception:  # noqa: BLE001 - a loader stops at the same broken opcode
            break
    return values


class FdStream:
    """A read-only file object over ``fd`` from ``offset`` (pread: no shared position, and no
    read larger than what is left, whatever length a hostile opcode asks for)."""

    def __init__(self, fd: int, size: int, offset: int = 0) -> None:
        self.fd, self.size, self.pos = fd, size, offset

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.pos)
        n = left if n is None or n < 0 else min(n, left)
        data = os.pread(self.fd, n, self.pos) if n else b""
        self.pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        out = bytearray()
        while True:
            chunk = self.read(4096)
            if not chunk:
                break
            cut = chunk.find(b"\n")
            if cut >= 0:
                out += chunk[: cut + 1]
                self.pos -= len(chunk) - cut - 1
                break
            out += chunk
            if len(out) > 1 << 20:
                break
        return bytes(out)

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos


def looks_like_pickle_start(head: bytes) -> bool:
    """A protocol-2+ header, or an opcode a protocol 0/1 pickle can start with."""
    if head[:1] == b"\x80":
        return head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    return head[:1] in (b"(", b"c", b"}", b"]", b")", b"N", b"I", b"L", b"F", b"S", b"V", b"K", b"J", b"M",
                        b"U", b"T", b"X", b"G", b"i", b"\x88", b"\x89")
