"""Manifest schema 1: the frozen types (:class:`Manifest`, :class:`FileEntry`,
:class:`Component`, :class:`TensorSpec`) and the validation of parsed data, one function
per section (top level, components, each file entry, its tensors).

Validation is strict: unknown keys, wrong types, malformed digests and unsafe paths are
refused with a message that names the manifest, the entry and the field. Reading YAML
(and writing it) is :mod:`modelguard.manifest`'s job.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping

from .errors import ManifestError, UnsafePathError
from .pieces import CHUNK_BYTES, CHUNKED, MAX_PIECES, ChunkDigests

SCHEMA_VERSION = 1
IMPLICIT_COMPONENT = "model"  # the component of a manifest that declares none
DIGEST_ALGORITHMS = ("sha256", "git_sha1", "md5")  # strongest first
DIGEST_LENGTHS = {"md5": 32, "sha256": 64, "git_sha1": 40}

_HEX = re.compile(r"\A[0-9a-f]+\Z")
_COMPONENT_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_DTYPES = frozenset(
    {
        "float16", "float32", "float64", "bfloat16", "int8", "int16", "int32",
        "int64", "uint8", "bool", "float8_e4m3fn", "float8_e5m2", "complex64",
    }
)


@dataclass(frozen=True)
class TensorSpec:
    """What one tensor in a loaded file must look like."""

    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.shape is not None:
            out["shape"] = list(self.shape)
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out


@dataclass(frozen=True)
class Component:
    """A group of files that together make one part of the model."""

    name: str
    required: bool = True
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"required": self.required}
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class FileEntry:
    """One required file: relative POSIX path, size (None: not known, as for expectations taken
    from a cache's blob names; a manifest always has it), at least one digest."""

    path: str
    size: int | None
    component: str
    digests: Mapping[str, str] = field(default_factory=dict)
    tensors: Mapping[str, TensorSpec] | None = None
    chunks: ChunkDigests | None = None

    def expected_digest(self, algorithm: str) -> str | None:
        """The value ``algorithm`` must give for this file (:data:`~modelguard.pieces.CHUNKED`:
        the root of its chunk digests), None when the entry has none."""
        if algorithm == CHUNKED:
            return self.chunks.root if self.chunks is not None else None
        return self.digests.get(algorithm)

    @property
    def piece_size(self) -> int:
        """The piece size of its chunk digests (build's piece size for an entry with none)."""
        return self.chunks.size if self.chunks is not None else CHUNK_BYTES

    @property
    def strongest_digest(self) -> tuple[str, str]:
        for algorithm in DIGEST_ALGORITHMS:
            if algorithm in self.digests:
                return algorithm, self.digests[algorithm]
        raise AssertionError("validated entries always carry a digest")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "size": self.size, "component": self.component}
        for algorithm in ("md5", "sha256", "git_sha1"):
            if algorithm in self.digests:
                out[algorithm] = self.digests[algorithm]
        if self.tensors:
            out["tensors"] = {name: spec.to_dict() for name, spec in sorted(self.tensors.items())}
        if self.chunks is not None:
            out["chunks"] = self.chunks.to_dict()
        return out


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. ``source`` is the file it came from, if any.

    ``origin`` says what the expectations are: ``manifest`` (a manifest file), or, built by
    :mod:`modelguard.hflisting` from a Hugging Face cache, ``hub-listing`` (the Hub's listing
    saved at download), ``hub-api`` (the Hub's listing fetched at check time, none being saved) or
    ``blob-addresses`` (the cache's blob names; files missing from the snapshot cannot be known, see
    :attr:`lists_every_file`).
    """

    model: str
    revision: str | None
    components: Mapping[str, Component]
    files: tuple[FileEntry, ...]
    source: str | None = None
    description: str | None = None
    origin: str = "manifest"

    @property
    def lists_every_file(self) -> bool:
        return self.origin != "blob-addresses"

    def file(self, path: str) -> FileEntry | None:
        for entry in self.files:
            if entry.path == path:
                return entry
        return None

    def files_of(self, *components: str) -> tuple[FileEntry, ...]:
        wanted = set(components)
        return tuple(entry for entry in self.files if entry.component in wanted)

    @property
    def required_components(self) -> tuple[str, ...]:
        return tuple(name for name, comp in self.components.items() if comp.required)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"modelguard": SCHEMA_VERSION, "model": self.model}
        if self.revision:
            out["revision"] = self.revision
        if self.description:
            out["description"] = self.description
        out["components"] = {name: self.components[name].to_dict() for name in sorted(self.components)}
        out["files"] = [entry.to_dict() for entry in sorted(self.files, key=lambda e: e.path)]
        return out



# --------------------------------------------------------------------------- validation


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str, expected: str, actual: Any = None, remedy: str | None = None) -> None:
        shown = None if actual is None else _show(actual)
        raise ManifestError(
            f"manifest {self.source}: {where}: {problem}",
            path=self.source, expected=expected, actual=shown, remedy=remedy,
        )

    def keys(self, mapping: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
        allowed = tuple(allowed)
        for key in mapping:
            if not isinstance(key, str):
                self.fail(where, f"key {key!r} is not a string", "string keys", key)
            if key not in allowed:
                hint = _close_match(key, allowed)
                self.fail(
                    where, f"unknown key '{key}'", "one of: " + ", ".join(allowed), key,
                    remedy=f"did you mean '{hint}'?" if hint else "remove the key; unknown keys are refused so a typo cannot weaken a check",
                )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _close_match(key: str, allowed: Iterable[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_relative_path(path: Any, where: str = "path", source: str = "<manifest>") -> str:
    """Return ``path`` if it is a safe relative POSIX path inside a model directory."""

    def refuse(problem: str) -> None:
        raise UnsafePathError(
            f"manifest {source}: {where}: unsafe path {_show(path)}: {problem}",
            path=source, expected="a relative POSIX path inside the model directory, e.g. 1_Pooling/config.json",
            actual=_show(path), remedy="fix the path in the manifest; modelguard never reads outside the model directory",
        )

    if not isinstance(path, str) or not path:
        refuse("not a non-empty string")
    assert isinstance(path, str)
    if "\x00" in path:
        refuse("contains a NUL byte")
    if "\\" in path:
        refuse("contains a backslash (use '/' as separator)")
    if path.startswith("/") or re.match(r"\A[A-Za-z]:", path):
        refuse("absolute paths are not allowed")
    parts = path.split("/")
    if any(part == ".." for part in parts):
        refuse("'..' is not allowed")
    if any(part in ("", ".") for part in parts):
        refuse("empty or '.' path segments are not allowed")
    if any(ord(ch) < 32 for ch in path):
        refuse("contains control characters")
    try:  # a lone surrogate (a "\ud800" escape) names no file: no file system call takes it
        os.fsencode(path)
    except UnicodeEncodeError:
        refuse("contains a lone surrogate, which no file name can hold")
    return str(PurePosixPath(path))


def validate_manifest(data: Any, source: str = "<manifest>") -> Manifest:
    """Validate already-parsed manifest data and build a :class:`Manifest`."""
    check = _Checker(source)
    model, revision, description = _check_top_level(check, data)
    # Without ``components`` the manifest has one implicit, required component (IMPLICIT_COMPONENT),
    # so the smallest hand-written manifest lists just path, size and a digest per file.
    components = _check_components(check, data.get("components", {IMPLICIT_COMPONENT: None}))
    files = _check_files(check, data.get("files"), components, source)
    return Manifest(
        model=model.strip(), revision=revision, components=components, files=tuple(files),
        source=source, description=description,
    )


def _check_top_level(check: _Checker, data: Any) -> tuple[str, str | None, str | None]:
    """The mapping itself, its keys, the schema version, model, revision and description."""
    if data is None:
        check.fail("top level", "not a mapping: the manifest is empty", "a YAML mapping with keys modelguard, model, components, files",
                   remedy="write one with `modelguard build DIR --model ORG/NAME -o FILE`")
    if not isinstance(data, dict):
        check.fail("top level", "not a mapping", "a YAML mapping with keys modelguard, model, components, files", data)
    check.keys(data, ("modelguard", "model", "revision", "description", "components", "files"), "top level")

    version = data.get("modelguard")
    if version is None:
        check.fail("top level", "missing key 'modelguard'", f"modelguard: {SCHEMA_VERSION}")
    if type(version) is not int or version != SCHEMA_VERSION:
        check.fail(
            "modelguard", "unsupported schema version", f"{SCHEMA_VERSION}", version,
            remedy="upgrade modelguard if the manifest was written by a newer version",
        )

    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        check.fail("model", "missing or not a string", "a model id such as BAAI/bge-m3", model)
    assert isinstance(model, str)
    if len(model) > 256 or any(ord(ch) < 32 for ch in model):
        check.fail("model", "not a plausible model id", "a model id such as BAAI/bge-m3", model)

    revision = data.get("revision")
    if revision is not None:
        if not isinstance(revision, str) or not revision or len(revision) > 256 or any(ord(c) < 33 for c in revision):
            check.fail("revision", "not a revision string", "a commit hash (40 hex digits)", revision)

    description = data.get("description")
    if description is not None and not isinstance(description, str):
        check.fail("description", "not a string", "a string", description)
    return model, revision, description


def _check_components(check: _Checker, raw_components: Any) -> dict[str, Component]:
    """``components:``: a non-empty mapping of name -> {required, description}."""
    if not isinstance(raw_components, dict) or not raw_components:
        check.fail(
            "components", "not a non-empty mapping",
            "a mapping of component name to {required: true|false, description: ...}, or no components key "
            f"(one required component, '{IMPLICIT_COMPONENT}')", raw_components,
        )
    components: dict[str, Component] = {}
    for name, spec in raw_components.items():
        where = f"components.{name}"
        if not isinstance(name, str) or not _COMPONENT_NAME.match(name):
            check.fail("components", f"bad component name {name!r}", "letters, digits, '_', '-', '.'", name)
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            check.fail(where, "not a mapping", "{required: true|false, description: ...}", spec)
        check.keys(spec, ("required", "description"), where)
        required = spec.get("required", True)
        if not isinstance(required, bool):
            check.fail(f"{where}.required", "not a boolean", "true or false", required)
        desc = spec.get("description")
        if desc is not None and not isinstance(desc, str):
            check.fail(f"{where}.description", "not a string", "a string", desc)
        components[name] = Component(name=name, required=required, description=desc)
    return components


def _check_files(check: _Checker, raw_files: Any, components: Mapping[str, Component],
                 source: str) -> list[FileEntry]:
    """``files:``: a non-empty list of entries, each path listed once (also ignoring case)."""
    if not isinstance(raw_files, list) or not raw_files:
        check.fail("files", "missing or not a non-empty list", "a list of {path, size, sha256|md5|git_sha1, component}", raw_files)
    files: list[FileEntry] = []
    seen: dict[str, int] = {}
    seen_folded: dict[str, str] = {}
    for index, item in enumerate(raw_files):
        label = f"files[{index}]"
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            shown_path = item["path"]
            if any(ord(ch) < 32 for ch in shown_path):
                shown_path = _show(shown_path)
            label = f"files[{index}] ({shown_path})"
        if not isinstance(item, dict):
            check.fail(label, "not a mapping", "{path, size, sha256|md5|git_sha1, component}", item)
        check.keys(item, ("path", "size", "component", "md5", "sha256", "git_sha1", "tensors", "chunks"), label)
        if "path" not in item:
            check.fail(label, "missing key 'path'", "a relative path such as model.safetensors")
        path = check_relative_path(item["path"], where=f"{label}.path", source=source)
        if path in seen:
            raise UnsafePathError(
                f"manifest {source}: {label}.path: duplicate path '{path}' (also files[{seen[path]}])",
                path=source, expected="each path listed once", actual=path, remedy="remove the duplicate entry",
            )
        if path.lower() in seen_folded:
            raise UnsafePathError(
                f"manifest {source}: {label}.path: '{path}' differs from '{seen_folded[path.lower()]}' only by case",
                path=source, expected="paths that differ by more than case", actual=path,
                remedy="remove one of the two entries",
            )
        seen[path] = index
        seen_folded[path.lower()] = path

        files.append(_check_file_entry(check, item, label, path, components))
    return files


def _check_file_entry(check: _Checker, item: Mapping[str, Any], label: str, path: str,
                      components: Mapping[str, Component]) -> FileEntry:
    """One entry of ``files:`` after its path: size, digests, component, tensors."""
    size = item.get("size")
    if "size" not in item:
        check.fail(label, "missing key 'size'", "the file size in bytes (a non-negative integer)")
    if type(size) is not int:
        check.fail(f"{label}.size", "not an integer", "the file size in bytes (a non-negative integer)", size)
    if size < 0:
        check.fail(f"{label}.size", "negative size", "a non-negative integer", size)
    if size > 1 << 50:
        check.fail(f"{label}.size", "implausibly large size", "at most 2**50 bytes", size)

    digests: dict[str, str] = {}
    for algorithm, length in DIGEST_LENGTHS.items():
        if algorithm not in item:
            continue
        value = item[algorithm]
        if not isinstance(value, str) or len(value) != length or not _HEX.match(value.lower()):
            check.fail(
                f"{label}.{algorithm}", f"malformed {algorithm} digest",
                f"{length} hexadecimal digits", value,
            )
        digests[algorithm] = value.lower()
    if not digests:
        check.fail(
            label, "no digest", "at least one of sha256, md5, git_sha1",
            remedy="add the file's sha256 (modelguard build writes it for you)",
        )

    component = item.get("component")
    if "component" not in item and len(components) == 1:
        component = next(iter(components))  # the only component there is
    if not isinstance(component, str):
        check.fail(f"{label}.component", "missing or not a string", "one of: " + ", ".join(components), component)
    if component not in components:
        check.fail(
            f"{label}.component", f"undeclared component '{component}'",
            "one of: " + ", ".join(components), component,
            remedy=f"declare '{component}' under components:, or fix the name",
        )

    tensors = None
    if "tensors" in item:
        tensors = _parse_tensors(check, item["tensors"], f"{label}.tensors")
    chunks = _parse_chunks(check, item["chunks"], f"{label}.chunks", size) if "chunks" in item else None
    return FileEntry(path=path, size=size, component=component, digests=digests, tensors=tensors, chunks=chunks)


def _parse_chunks(check: _Checker, raw: Any, where: str, file_size: int) -> ChunkDigests:
    """``chunks: {size: <bytes per piece>, sha256: [<one digest per piece>, ...]}``."""
    shape = "{size: <bytes per piece, a power of two>, sha256: [<sha256 of each piece>, ...]}"
    if not isinstance(raw, dict):
        check.fail(where, "not a mapping", shape, raw)
    check.keys(raw, ("size", "sha256"), where)
    size = raw.get("size")
    if type(size) is not int or size < 1 << 20 or size > 1 << 30 or size & (size - 1):
        check.fail(f"{where}.size", "not a power of two from 1 MiB to 1 GiB", "e.g. 67108864 (64 MiB)", size)
    if file_size <= size:
        check.fail(where, "a file of one piece needs no chunk digests", f"a file larger than {size} bytes",
                   file_size, remedy="remove chunks: from this entry (its sha256 says the same)")
    count = -(-file_size // size)
    if count > MAX_PIECES:
        check.fail(where, f"{count} pieces of {size} bytes", f"at most {MAX_PIECES} pieces", count,
                   remedy="use a larger piece size (modelguard build picks one)")
    digests = raw.get("sha256")
    if not isinstance(digests, list) or len(digests) != count:
        check.fail(f"{where}.sha256", f"not a list of {count} digests (one per {size}-byte piece of {file_size} bytes)",
                   f"{count} sha256 digests", f"{len(digests)} items" if isinstance(digests, list) else digests)
    for k, value in enumerate(digests):
        if not isinstance(value, str) or len(value) != 64 or not _HEX.match(value.lower()):
            check.fail(f"{where}.sha256[{k}]", "malformed sha256 digest", "64 hexadecimal digits", value)
    return ChunkDigests(size=size, sha256=tuple(v.lower() for v in digests))


def _parse_tensors(check: _Checker, raw: Any, where: str) -> dict[str, TensorSpec]:
    if not isinstance(raw, dict):
        check.fail(where, "not a mapping", "tensor name -> {shape: [..], dtype: ..}", raw)
    out: dict[str, TensorSpec] = {}
    for name, spec in raw.items():
        w = f"{where}.{name}"
        if not isinstance(name, str) or not name:
            check.fail(where, f"bad tensor name {name!r}", "a non-empty string", name)
        if not isinstance(spec, dict):
            check.fail(w, "not a mapping", "{shape: [..], dtype: ..}", spec)
        check.keys(spec, ("shape", "dtype"), w)
        shape = spec.get("shape")
        if shape is not None:
            if not isinstance(shape, list) or len(shape) > 16 or not all(
                type(d) is int and 0 <= d < 1 << 40 for d in shape
            ):
                check.fail(f"{w}.shape", "not a list of non-negative integers", "e.g. [1, 1024]", shape)
            shape = tuple(shape)
        dtype = spec.get("dtype")
        if dtype is not None:
            if not isinstance(dtype, str) or dtype.removeprefix("torch.") not in _DTYPES:
                check.fail(f"{w}.dtype", "unknown dtype", "one of: " + ", ".join(sorted(_DTYPES)), dtype)
            dtype = dtype.removeprefix("torch.")
        out[name] = TensorSpec(shape=shape, dtype=dtype)
    return out

