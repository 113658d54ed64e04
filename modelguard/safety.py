"""Is a model file safe to load? Pickle scanning, safetensors header checks, file types.

Nothing here loads a model file: every pickle stream a loader could read is parsed
by CPython's unpickler with each global replaced by an inert stand-in, and judged
against an allowlist (default deny; see "the pickle gate" below); safetensors headers are parsed as JSON with their offsets checked
against the file size. Every check opens the file without following it out of
the model directory (callers pass paths that verify already contained) and
refuses FIFOs and devices before opening them, so a scan never hangs.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import UnsafeFileError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib",
                   # containers a loader can unpickle from: numpy (allow_pickle), zip and tar members
                   ".npy", ".npz", ".zip", ".7z", ".tar")
# joblib.dump("x.pkl.z") compresses by suffix: a pickle suffix followed by one of these
COMPRESSED_SUFFIXES = (".z", ".gz", ".bz2", ".xz", ".lzma", ".lz4")
SAFETENSORS_SUFFIX = ".safetensors"
# safetensors refuses headers above 100 MB (HeaderTooLarge); so do we.
SAFETENSORS_MAX_HEADER = 100_000_000
LFS_PREFIX = b"version https://git-lfs.github.com/spec/v1"
ZIP_MAGIC = b"PK\x03\x04"

# Bytes per element of each safetensors dtype; sub-byte types count in bits below.
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "F64": 64, "I64": 64, "U64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

OK = "ok"


@dataclass(frozen=True)
class SafetyFinding:
    """The safety verdict on one file.

    ``diagnosis`` is a stable code: ``ok``, ``dangerous_pickle`` (a global outside the
    allowlist, or a pickle-bearing file that cannot be checked), ``suspicious_pickle``
    (no longer produced: kept so stored reports still read), ``bad_safetensors``,
    ``lfs_pointer``, ``mislabeled`` (content of another format than the name says),
    ``not_a_file``, ``unreadable``.
    """

    path: str
    kind: str  # "pickle", "safetensors" or "other"
    diagnosis: str
    message: str
    dangerous_globals: tuple[str, ...] = ()
    suspicious_globals: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def safe(self) -> bool:
        return self.diagnosis in (OK, "suspicious_pickle")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "safe": self.safe,
            "diagnosis": self.diagnosis,
            "message": self.message,
            "dangerous_globals": list(self.dangerous_globals),
            "suspicious_globals": list(self.suspicious_globals),
            "details": dict(self.details),
        }

    def raise_if_unsafe(self) -> None:
        if not self.safe:
            raise UnsafeFileError(
                f"refusing to load {self.path}: {self.message}",
                path=self.path, expected="a file that is safe to load", actual=self.diagnosis,
                remedy=_remedy(self),
            )


def _remedy(finding: SafetyFinding) -> str:
    if finding.diagnosis == "dangerous_pickle":
        return ("do not load this file; get the weights from a trusted source, preferably as .safetensors, "
                "and pin them in a manifest")
    if finding.diagnosis == "lfs_pointer":
        return "the file is a Git LFS pointer: run `git lfs pull` in the clone, or `modelguard fetch` the model"
    return "replace the file with the original from the model's source (modelguard fetch MODEL --revision REV)"


def file_kind(path: str | os.PathLike[str], head: bytes = b"") -> str:
    """``pickle`` / ``safetensors`` / ``other`` from the name, then the first bytes."""
    name = os.fspath(path).lower()
    if name.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    if name.endswith(PICKLE_SUFFIXES):
        return "pickle"
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)].endswith(PICKLE_SUFFIXES):
            return "pickle"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "other"


def sniff_format(head: bytes) -> str:
    """What the first bytes of a file look like: zip, npy, 7z, pickle, lfs_pointer, html, empty, safetensors, unknown."""
    if not head:
        return "empty"
    if head.startswith(LFS_PREFIX):
        return "lfs_pointer"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head[:1] == b"\x80" and head[1:2] in (b"\x01", b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "html"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= SAFETENSORS_MAX_HEADER and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading if it is a regular file; never blocks on a FIFO or device."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _NotRegular(st.st_mode)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):  # swapped between stat and open
        os.close(fd)
        raise _NotRegular(st.st_mode)
    return fd, st


class _NotRegular(OSError):
    def __init__(self, mode: int) -> None:
        super().__init__(f"not a regular file (mode {stat.filemode(mode)})")
        self.mode = mode


def _kind_name(mode: int) -> str:
    from .verify import _file_kind

    return _file_kind(mode)


def scan_file(path: str | os.PathLike[str], *, name: str | None = None,
              roots: Iterable[Path] | None = None) -> SafetyFinding:
    """Check one file without loading it. ``name`` is how it is shown (default: the path);
    ``roots``: folders the opened file must lie in (a link swapped to elsewhere is not read)."""
    p = Path(path)
    shown = name or str(p)
    try:
        fd, st = _open_regular(p)
    except _NotRegular as exc:
        return SafetyFinding(shown, file_kind(p), "not_a_file", f"is a {_kind_name(exc.mode)}, not a regular file; not opened")
    except OSError as exc:
        return SafetyFinding(shown, file_kind(p), "unreadable", f"cannot be read: {exc.strerror or exc}")
    if roots is not None:
        from .verify import _within, opened_path

        real = opened_path(fd)
        if real is not None and not _within(real, roots):
            os.close(fd)
            return SafetyFinding(shown, file_kind(p), "symlink_escape",
                                 f"links outside the model directory (to {real}); not read")
    try:
        head = os.pread(fd, 64, 0)
        kind = file_kind(p, head)
        fmt = sniff_format(head)
        if fmt == "lfs_pointer":
            hint = {"safetensors": "safetensors would fail with 'header too large' (HeaderTooLarge)",
                    "pickle": "torch.load would fail with \"invalid load key, 'v'\""}.get(kind, "not the real file")
            return SafetyFinding(shown, kind, "lfs_pointer",
                                 f"is a Git LFS pointer ({st.st_size} bytes), not the file: {hint}",
                                 details={"size": st.st_size})
        if kind == "safetensors":
            if fmt in ("zip", "pickle"):
                return SafetyFinding(shown, kind, "mislabeled",
                                     f"named .safetensors but holds a {fmt} (a pickle-based checkpoint); not loaded",
                                     details={"format": fmt})
            return check_safetensors_fd(fd, st.st_size, shown)
        if kind == "pickle" or fmt in ("pickle", "zip", "npy", "7z"):
            finding = judge_pickle_fd(fd, st.st_size, shown)
            if kind != "pickle" and finding.safe:
                return SafetyFinding(shown, "other", OK, f"ok ({fmt} without unsafe pickles)")
            return finding
        return SafetyFinding(shown, kind, OK, "ok (not a pickle or safetensors file)")
    finally:
        os.close(fd)


# A checkpoint's data.pkl holds tensor metadata only: a few MB even for the largest models.
MAX_PICKLE_MEMBER_BYTES = 256 * 1024 * 1024


def scan_pickle_fd(fd: int, shown: str) -> SafetyFinding:
    """Judge the pickle-bearing file at ``fd`` (see :func:`judge_pickle_fd`)."""
    return judge_pickle_fd(fd, os.fstat(fd).st_size, shown)


# --------------------------------------------------------------------------- the pickle gate
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

_MAX_NESTING = 3
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
MAX_DECOMPRESSED_BYTES = 64 * 1024**3
_NPY_MAGIC = b"\x93NUMPY"
_SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
_COMPRESSED_MAGIC = {
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
_JOBLIB_ARRAY = ("joblib.numpy_pickle", "NumpyArrayWrapper")

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    tuple(n.rsplit(".", 1)) for n in [*_TORCH_WEIGHTS_ONLY, *_NUMPY_ARRAYS, "builtins.frozenset", "builtins.slice"]
) | {_JOBLIB_ARRAY}
# Globals the joblib reading builds for real (to learn an array's dtype and size); every
# other global, allowed or not, stays an inert stand-in.
_JOBLIB_REAL = frozenset({_JOBLIB_ARRAY, ("numpy", "dtype")} | {g for g in ALLOWED_GLOBALS if g[0] == "numpy.dtypes"})
_STORAGE_BYTES = {"Double": 8, "Float": 4, "Half": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1, "Byte": 1,
                  "Bool": 1, "BFloat16": 2, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1, "QUInt8": 1,
                  "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1}


class _Inert:
    """What every global, persistent id and extension code becomes while a pickle is judged:
    callable, constructible and settable, and doing nothing."""

    _mg_global: tuple[str, str] = ("", "")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Inert":
        return _Inert()

    def __setstate__(self, state: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names as pickle's fix_imports maps them (``__builtin__.set`` is ``builtins.set``)."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _Judgement:
    """Globals seen by every reading of one file, with where each was seen."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], str] = {}
        self.problems: list[str] = []
        self.pickles = 0

    def record(self, module: str, name: str, where: str) -> None:
        self.seen.setdefault((module, name), where)

    @property
    def denied(self) -> list[tuple[str, str, str]]:
        return [(m, n, w) for (m, n), w in self.seen.items() if (m, n) not in ALLOWED_GLOBALS]


def _stand_in(key: tuple[str, str], cache: dict) -> type:
    cls = cache.get(key)
    if cls is None:
        cls = cache[key] = type("Inert", (_Inert,), {"_mg_global": key})
    return cls


def _gate_unpickler(stream: Any, judgement: _Judgement, where: str) -> Any:
    import pickle

    cache: dict = {}

    class GateUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            key = _py3_name(module, name)
            judgement.record(*key, where)
            return _stand_in(key, cache)

        def persistent_load(self, pid: Any) -> Any:
            return _Inert()

    return GateUnpickler(stream, encoding="latin1")


def _read_pickles(stream: Any, judgement: _Judgement, where: str, count: int | None = 1) -> list[Any]:
    """Load up to ``count`` pickles one after another from ``stream`` the way successive
    ``pickle.load`` calls would (None: as many as parse); returns what each gave."""
    values = []
    while count is None or len(values) < count:
        try:
            values.append(_gate_unpickler(stream, judgement, where).load())
            judgement.pickles += 1
        except Exception:  # noqa: BLE001 - a loader stops at the same broken opcode
            break
    return values


class _FdStream:
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


def _looks_like_pickle_start(head: bytes) -> bool:
    """A protocol-2+ header, or an opcode a protocol 0/1 pickle can start with."""
    if head[:1] == b"\x80":
        return head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    return head[:1] in (b"(", b"c", b"}", b"]", b")", b"N", b"I", b"L", b"F", b"S", b"V", b"K", b"J", b"M",
                        b"U", b"T", b"X", b"G", b"i", b"\x88", b"\x89")


def _judge_stream_readings(open_stream: Callable[[], Any], head: bytes, judgement: _Judgement, where: str,
                           depth: int) -> None:
    """Every reading of one byte stream (a file, a zip member, a decompressed joblib)."""
    if head.startswith(_NPY_MAGIC):
        _judge_npy(open_stream(), judgement, where)
        return
    # Read whatever the first byte: the unpickler takes any opcode first (no PROTO needed),
    # and stops at once, having imported nothing, on a byte that is not one.
    stream = open_stream()
    first = _read_pickles(stream, judgement, where, 1)
    if first and type(first[0]) is int and first[0] == _TORCH_MAGIC:  # torch's legacy format
        _read_pickles(stream, judgement, where, 4)
    if _JOBLIB_ARRAY in judgement.seen:
        _judge_joblib(open_stream(), judgement, where)


def _judge_npy(stream: Any, judgement: _Judgement, where: str) -> None:
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
        _read_pickles(stream, judgement, where, 1)


class _JoblibSkip(Exception):
    pass


def _judge_joblib(stream: Any, judgement: _Judgement, where: str) -> bool:
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
            key = _py3_name(module, name) if self.proto < 3 else (module, name)
            judgement.record(*key, where)
            if key in _JOBLIB_REAL:
                return super().find_class(*key)
            return _stand_in(key, cache)

        def persistent_load(self, pid: Any) -> Any:
            return _Inert()

        def load_build(self) -> None:
            pickle._Unpickler.load_build(self)
            wrapper = self.stack[-1]
            if isinstance(wrapper, numpy_pickle.NumpyArrayWrapper):
                self.stack[-1] = _Inert()
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


def _skip_joblib_array(wrapper: Any, stream: Any, judgement: _Judgement, where: str) -> None:
    dtype = getattr(wrapper, "dtype", None)
    if dtype is None or not hasattr(dtype, "hasobject"):
        raise _JoblibSkip("no dtype")
    if dtype.hasobject:
        _read_pickles(stream, judgement, where, 1)
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


def _judge_zip(fh: Any, judgement: _Judgement, where: str, depth: int) -> None:
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
            pickled = named or (head[:1] == b"\x80" and _looks_like_pickle_start(head))
            nested = head.startswith(ZIP_MAGIC) or head.startswith(_NPY_MAGIC)
            if not (pickled or nested):
                continue
            if named and info.file_size > MAX_PICKLE_MEMBER_BYTES:
                judgement.problems.append(
                    f"archive member {info.filename} would unpack to {info.file_size} bytes of pickle (over "
                    f"{MAX_PICKLE_MEMBER_BYTES}); not scanned, refused (a decompression bomb, or not a checkpoint)")
                continue
            if head.startswith(ZIP_MAGIC):
                if info.file_size > MAX_PICKLE_MEMBER_BYTES:
                    judgement.problems.append(
                        f"archive member {info.filename} is a zip of {info.file_size} bytes (over "
                        f"{MAX_PICKLE_MEMBER_BYTES}); not checked, refused")
                    continue
                if depth >= _MAX_NESTING:
                    judgement.problems.append(f"zip nested more than {_MAX_NESTING} deep at {label}; not checked")
                    continue
                with archive.open(info) as member:
                    data = member.read(MAX_PICKLE_MEMBER_BYTES + 1)
                _judge_zip(io.BytesIO(data), judgement, label, depth + 1)
                continue
            _judge_stream_readings(lambda: archive.open(info), head, judgement, label, depth)


def _judge_tar(fh: Any, judgement: _Judgement, where: str) -> None:
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
                counts = _read_pickles(stream, judgement, label, 1)
                total = counts[0] if counts and type(counts[0]) is int else 0
                for _ in range(min(total, 1 << 20)):
                    args = _read_pickles(stream, judgement, label, 1)
                    storage_type = args[0][2] if args and isinstance(args[0], tuple) and len(args[0]) == 3 else None
                    name = getattr(storage_type, "_mg_global", ("", ""))[1]
                    width = _STORAGE_BYTES.get(name[: -len("Storage")] if name.endswith("Storage") else "")
                    raw = stream.read(8)
                    if width is None or len(raw) < 8:
                        break
                    stream.seek(_struct.unpack("<q", raw)[0] * width, 1)
                _read_pickles(stream, judgement, label, 1)
            elif member.name == "tensors":
                counts = _read_pickles(stream, judgement, label, 1)
                total = counts[0] if counts and type(counts[0]) is int else 0
                for _ in range(min(total, 1 << 20)):
                    if not _read_pickles(stream, judgement, label, 1):
                        break
                    raw = stream.read(8)
                    if len(raw) < 8:
                        break
                    ndim = _struct.unpack("<i", raw[:4])[0]
                    stream.seek(16 * max(ndim, 0) + 8, 1)
            else:
                head = stream.read(64)
                stream.seek(0)
                if member.name in ("pickle", "sys_info") or _looks_like_pickle_start(head):
                    _read_pickles(stream, judgement, label, 1)


def _decompressed(fd: int, kind: str) -> Any:
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


def judge_pickle_fd(fd: int, size: int, shown: str) -> SafetyFinding:
    """Judge every reading a loader could take of the file at ``fd`` against
    :data:`ALLOWED_GLOBALS` (default deny)."""
    judgement = _Judgement()
    head = os.pread(fd, 64, 0)
    if head.startswith(_SEVEN_ZIP_MAGIC):
        return SafetyFinding(shown, "pickle", "dangerous_pickle",
                             "is a 7z archive: its members cannot be checked, and no model loader reads 7z; "
                             "refused (unpack it and pin the files themselves)")
    compressed = next((kind for magic, kind in _COMPRESSED_MAGIC.items() if head.startswith(magic)), None)
    if compressed is not None:
        try:
            stream = _decompressed(fd, compressed)
            try:
                inner_head = stream.read(64)
            finally:
                stream.close()
        except Exception:  # noqa: BLE001 - not really compressed, or no decompressor: joblib cannot read it either
            inner_head = b""
        if _looks_like_pickle_start(inner_head):
            # only joblib reads a compressed pickle, and it reads the array bytes between opcodes
            stream = _decompressed(fd, compressed)
            try:
                if not _judge_joblib(stream, judgement, ""):
                    stream.close()
                    stream = _decompressed(fd, compressed)
                    _read_pickles(stream, judgement, "", 1)
            finally:
                stream.close()
    # and as it is: "BZh" (bz2) is also a BINBYTES opcode pickle.load would run
    _judge_stream_readings(lambda: _FdStream(fd, size), head, judgement, "", 0)
    with os.fdopen(os.dup(fd), "rb") as fh:  # a duplicate shares the offset: start from 0
        fh.seek(0)
        _judge_zip(fh, judgement, "", 0)
    if not head.startswith(ZIP_MAGIC):
        with os.fdopen(os.dup(fd), "rb") as fh:
            fh.seek(0)
            _judge_tar(fh, judgement, "")
    return _verdict(judgement, shown)


def _verdict(judgement: _Judgement, shown: str) -> SafetyFinding:
    denied = judgement.denied
    names = sorted({f"{m}.{n}" for m, n, _ in denied})
    if denied:
        places = sorted({w for _, _, w in denied if w})
        where = f" (in {', '.join(places[:5])})" if places else ""
        return SafetyFinding(
            shown, "pickle", "dangerous_pickle",
            "pickle imports " + ", ".join(names) + where + ": not among the globals safe weight loading needs "
            "(default deny); loading it with pickle, joblib, numpy (allow_pickle) or "
            "torch.load(weights_only=False) would run code",
            dangerous_globals=tuple(names),
            details={"denied": [{"global": f"{m}.{n}", "where": w} for m, n, w in denied[:50]]},
        )
    if judgement.problems:
        return SafetyFinding(shown, "pickle", "dangerous_pickle", judgement.problems[0],
                             details={"problems": judgement.problems[:10]})
    if not judgement.pickles:
        return SafetyFinding(shown, "pickle", OK, "ok (no pickle imports: plain data, or not a pickle at all)")
    return SafetyFinding(shown, "pickle", OK, "ok (pickle holds only tensors and plain containers)",
                         details={"globals": sorted(f"{m}.{n}" for m, n in judgement.seen)})


# --------------------------------------------------------------------------- safetensors


def check_safetensors_fd(fd: int, size: int, shown: str) -> SafetyFinding:
    """Check a safetensors header against the file: length, JSON, dtypes, shapes, offsets."""

    def bad(problem: str, **details: Any) -> SafetyFinding:
        return SafetyFinding(shown, "safetensors", "bad_safetensors",
                             f"malformed safetensors header: {problem}", details=details)

    if size < 8:
        return bad(f"file has {size} bytes, fewer than the 8-byte header length", size=size)
    (n,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if n > SAFETENSORS_MAX_HEADER:
        return bad(f"header length {n} exceeds {SAFETENSORS_MAX_HEADER} bytes (HeaderTooLarge): "
                   "not a safetensors file, or its first bytes are damaged", header_length=n, size=size)
    if 8 + n > size:
        return bad(f"header length {n} runs past the end of the {size}-byte file (truncated?)",
                   header_length=n, size=size)
    raw = os.pread(fd, n, 8)
    if len(raw) != n:
        return bad("file shrank while it was read", header_length=n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return bad(f"header is not valid UTF-8 JSON ({type(exc).__name__}: {str(exc)[:120]})")
    if not isinstance(header, dict):
        return bad(f"header is a JSON {type(header).__name__}, not an object")
    buffer_len = size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for key, info in header.items():
        if key == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                return bad("__metadata__ is not a mapping of strings")
            continue
        if not isinstance(info, dict):
            return bad(f"tensor '{key}' is not described by an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPE_BITS:
            return bad(f"tensor '{key}' has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            return bad(f"tensor '{key}' has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets)):
            return bad(f"tensor '{key}' has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_len:
            return bad(f"tensor '{key}' data_offsets [{begin}, {end}] lie outside the {buffer_len}-byte data "
                       "section (truncated file?)", tensor=key, buffer_length=buffer_len)
        elements = 1
        for d in shape:
            elements *= d
        nbits = elements * _DTYPE_BITS[dtype]
        if (nbits + 7) // 8 != end - begin:
            return bad(f"tensor '{key}' of dtype {dtype} and shape {shape} needs {(nbits + 7) // 8} bytes "
                       f"but data_offsets span {end - begin}", tensor=key)
        spans.append((begin, end, key))
    spans.sort()
    position = 0
    for begin, end, key in spans:
        if begin < position:
            return bad(f"tensor '{key}' overlaps the previous tensor (offset {begin} < {position})", tensor=key)
        if begin > position:
            return bad(f"gap of {begin - position} unused bytes before tensor '{key}'", tensor=key)
        position = end
    if position != buffer_len:
        return bad(f"tensors cover {position} of the {buffer_len} data bytes (extra data appended?)",
                   covered=position, buffer_length=buffer_len)
    return SafetyFinding(shown, "safetensors", OK, f"ok (safetensors header: {len(spans)} tensor(s))",
                         details={"tensors": len(spans)})


def check_safetensors(path: str | os.PathLike[str]) -> SafetyFinding:
    """Header sanity check of one .safetensors file (see :func:`check_safetensors_fd`)."""
    finding = scan_file(path)
    if finding.kind != "safetensors" and finding.diagnosis == OK:
        return SafetyFinding(finding.path, "safetensors", "mislabeled", "not a safetensors file")
    return finding


# --------------------------------------------------------------------------- directories


def needs_scan(path: str) -> bool:
    """Whether a manifest path is a format that can carry code or a header to check."""
    return file_kind(path) in ("pickle", "safetensors")


def scan_paths(directory: str | os.PathLike[str], paths: Iterable[str]) -> tuple[SafetyFinding, ...]:
    """Scan the given relative paths of ``directory`` (paths that escape it are refused, not opened)."""
    from .verify import _containing_roots, _within

    root = Path(directory)
    roots = _containing_roots(root)
    out = []
    for rel in sorted(paths):
        full = root / rel
        try:
            resolved = full.resolve(strict=False)
        except (OSError, RuntimeError) as exc:
            out.append(SafetyFinding(rel, file_kind(rel), "unreadable", f"cannot be resolved: {exc}"))
            continue
        if not _within(resolved, roots):
            out.append(SafetyFinding(rel, file_kind(rel), "symlink_escape",
                                     f"links outside the model directory (to {resolved}); not opened"))
            continue
        if not os.path.lexists(full):
            continue
        out.append(scan_file(full, name=rel, roots=roots))
    return tuple(out)


def scan_manifest_files(manifest: Any, directory: str | os.PathLike[str],
                        components: Iterable[str] | None = None) -> tuple[SafetyFinding, ...]:
    """Scan the pickle and safetensors files a manifest lists (optionally only ``components``)."""
    entries = manifest.files if components is None else manifest.files_of(*components)
    return scan_paths(directory, [e.path for e in entries if needs_scan(e.path)])


def require_safe(findings: Iterable[SafetyFinding]) -> None:
    """Raise :class:`UnsafeFileError` naming every unsafe file, if any."""
    bad = [f for f in findings if not f.safe]
    if not bad:
        return
    lines = [f"{len(bad)} unsafe file(s); not loaded:"] + [f"  {f.path}: {f.message}" for f in bad]
    raise UnsafeFileError("\n".join(lines), path=bad[0].path, expected="files safe to load",
                          actual=", ".join(f"{f.path} ({f.diagnosis})" for f in bad), remedy=_remedy(bad[0]))


def format_findings(findings: Iterable[SafetyFinding], *, quiet: bool = False) -> str:
    """Human-readable scan results: unsafe files always, safe ones unless ``quiet``."""
    findings = tuple(findings)
    lines = []
    for f in findings:
        if not f.safe:
            lines.append(f"  UNSAFE  {f.path}: {f.message}")
            lines.append(f"          fix: {_remedy(f)}")
        elif not quiet or f.diagnosis != OK:
            lines.append(f"  {'note' if f.diagnosis != OK else 'safe'}    {f.path}: {f.message}")
    unsafe = sum(not f.safe for f in findings)
    if unsafe:
        lines.append(f"scan: UNSAFE: {unsafe} of {len(findings)} scanned file(s) must not be loaded")
    else:
        lines.append(f"scan: {len(findings)} pickle/safetensors file(s) scanned, none unsafe")
    return "\n".join(lines)
