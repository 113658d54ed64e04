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
from typing import Any, Iterable, Mapping

from .errors import UnsafeFileError
from .fs import containing_roots, file_type_name, opened_path, within

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .pickle_gate import Judgement
from .sniff import SAFETENSORS_MAX_HEADER, sniff_format

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib",
                   # containers a loader can unpickle from: numpy (allow_pickle), zip and tar members
                   ".npy", ".npz", ".zip", ".7z", ".tar")
# joblib.dump("x.pkl.z") compresses by suffix: a pickle suffix followed by one of these
COMPRESSED_SUFFIXES = (".z", ".gz", ".bz2", ".xz", ".lzma", ".lz4")
SAFETENSORS_SUFFIX = ".safetensors"

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


def scan_file(path: str | os.PathLike[str], *, name: str | None = None,
              roots: Iterable[Path] | None = None) -> SafetyFinding:
    """Check one file without loading it. ``name`` is how it is shown (default: the path);
    ``roots``: folders the opened file must lie in (a link swapped to elsewhere is not read)."""
    p = Path(path)
    shown = name or str(p)
    try:
        fd, st = _open_regular(p)
    except _NotRegular as exc:
        return SafetyFinding(shown, file_kind(p), "not_a_file", f"is a {file_type_name(exc.mode)}, not a regular file; not opened")
    except OSError as exc:
        return SafetyFinding(shown, file_kind(p), "unreadable", f"cannot be read: {exc.strerror or exc}")
    if roots is not None:
        real = opened_path(fd)
        if real is not None and not within(real, roots):
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


def scan_pickle_fd(fd: int, shown: str) -> SafetyFinding:
    """Judge the pickle-bearing file at ``fd`` (see :func:`judge_pickle_fd`)."""
    return judge_pickle_fd(fd, os.fstat(fd).st_size, shown)


def judge_pickle_fd(fd: int, size: int, shown: str) -> SafetyFinding:
    """Judge every reading a loader could take of the file at ``fd`` against
    :data:`modelguard.pickle_gate.ALLOWED_GLOBALS` (default deny)."""
    # The pickle gate loads with the first pickle-based file, not with every guarded load.
    from .pickle_containers import judge_readings
    from .pickle_gate import MAX_PICKLE_MEMBER_BYTES, SEVEN_ZIP_MAGIC, Judgement

    head = os.pread(fd, 64, 0)
    if head.startswith(SEVEN_ZIP_MAGIC):
        return SafetyFinding(shown, "pickle", "dangerous_pickle",
                             "is a 7z archive: its members cannot be checked, and no model loader reads 7z; "
                             "refused (unpack it and pin the files themselves)")
    return _verdict(judge_readings(fd, size, head, Judgement(MAX_PICKLE_MEMBER_BYTES)), shown)


def _verdict(judgement: Judgement, shown: str) -> SafetyFinding:
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
    root = Path(directory)
    roots = containing_roots(root)
    out = []
    for rel in sorted(paths):
        full = root / rel
        try:
            resolved = full.resolve(strict=False)
        except (OSError, RuntimeError) as exc:
            out.append(SafetyFinding(rel, file_kind(rel), "unreadable", f"cannot be resolved: {exc}"))
            continue
        if not within(resolved, roots):
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
