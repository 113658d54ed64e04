"""Manifest files: read (strict, safe YAML), validate (:mod:`modelguard.manifest_schema`),
write (sorted, diff-friendly, atomic).

A manifest lists every file a model needs with its size and digests, grouped
into components. Loading is strict: YAML tags, anchors, duplicate keys and oversized
or deeply nested documents are refused before the schema is checked.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .pieces import MAX_PIECES
from .manifest_schema import (
    DIGEST_ALGORITHMS,
    DIGEST_LENGTHS,
    ChunkDigests,
    IMPLICIT_COMPONENT,
    SCHEMA_VERSION,
    Component,
    FileEntry,
    Manifest,
    TensorSpec,
    check_relative_path,
    validate_manifest,
)

__all__ = [
    "DIGEST_ALGORITHMS", "DIGEST_LENGTHS", "IMPLICIT_COMPONENT", "SCHEMA_VERSION", "ChunkDigests", "Component", "FileEntry", "Manifest", "TensorSpec",
    "check_relative_path", "dump_manifest", "dump_yaml", "load_manifest", "load_yaml_text", "parse_manifest_text",
    "save_manifest", "validate_manifest", "write_text_atomic",
]

# A 100,000-file manifest with sha256 and md5 is about 25 MB; this leaves room for 250,000.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_NESTING = 32
# A YAML node costs ~30 us and ~1 KB to compose in pure Python; a file entry is ~11 nodes.
# The budget scales with the files the text declares ("path:" keys) and their lists of chunk
# digests ("chunks:", at most MAX_PIECES each), so whatever `build` writes loads, and stays
# bounded: MAX_NODES for a small manifest, never over MAX_NODES_CAP.
MAX_NODES = 100_000
MAX_NODES_PER_FILE = 16
MAX_NODES_CAP = 4_000_000


def node_budget(text: str) -> int:
    """The most YAML nodes a manifest of this text may have."""
    # a piece's digest takes at least 66 characters ("- " or ", " and 64 hex digits)
    pieces = min((MAX_PIECES + 8) * text.count("chunks:"), len(text) // 66)
    declared = MAX_NODES_PER_FILE * text.count("path:") + pieces
    return min(MAX_NODES_CAP, max(MAX_NODES, 1_000 + declared))



# --------------------------------------------------------------------------- loading


class _StrictSafeLoader:
    """Built lazily: a yaml SafeLoader that refuses anchors/aliases and deep nesting."""

    _cls: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls._cls is None:
            import yaml

            class Loader(yaml.SafeLoader):
                depth = 0
                nodes = 0
                max_nodes = MAX_NODES

                def compose_node(self, parent: Any, index: Any) -> Any:
                    if self.check_event(yaml.AliasEvent):
                        event = self.peek_event()
                        raise yaml.MarkedYAMLError(
                            None, None, "YAML aliases (*name) are not allowed in a manifest", event.start_mark
                        )
                    event = self.peek_event()
                    if getattr(event, "anchor", None):
                        raise yaml.MarkedYAMLError(
                            None, None, "YAML anchors (&name) are not allowed in a manifest", event.start_mark
                        )
                    self.nodes += 1
                    if self.nodes > self.max_nodes:
                        raise yaml.MarkedYAMLError(
                            None, None, f"more than {self.max_nodes} YAML nodes (a manifest of the files it "
                            f"declares is far smaller)", event.start_mark,
                        )
                    self.depth += 1
                    if self.depth > MAX_NESTING:
                        raise yaml.MarkedYAMLError(
                            None, None, f"nesting deeper than {MAX_NESTING} levels", event.start_mark
                        )
                    try:
                        return super().compose_node(parent, index)
                    finally:
                        self.depth -= 1

                def construct_mapping(self, node: Any, deep: bool = False) -> Any:
                    _refuse_duplicate_keys(node)
                    return super().construct_mapping(node, deep=deep)

            # Timestamps and other implicit types become plain strings; a manifest
            # holds only strings, ints, bools, lists and mappings.
            Loader.add_constructor(
                "tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str
            )
            cls._cls = Loader
        return cls._cls


def _refuse_duplicate_keys(node: Any) -> None:
    """A key given twice would silently keep only its last value."""
    import yaml

    seen: set[Any] = set()
    for key_node, _ in getattr(node, "value", ()):
        if isinstance(key_node, yaml.ScalarNode):
            key = (key_node.tag, key_node.value)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key_node.value}'", key_node.start_mark
                )
            seen.add(key)


def parse_manifest_text(text: str | bytes, source: str = "<manifest>") -> Manifest:
    """Parse and validate manifest YAML text. Raises :class:`ManifestError`."""
    return validate_manifest(load_yaml_text(text, source), source=source)


def load_yaml_text(text: str | bytes, source: str, what: str = "manifest") -> Any:
    """Plain data from YAML text with the manifest loader's rules and limits: UTF-8, at most
    :data:`MAX_MANIFEST_BYTES`, no tags, anchors, aliases or duplicate keys, nesting and node
    count bounded; libyaml when PyYAML has it. ``what`` names the document in messages
    ("manifest", "lock file"). Raises :class:`ManifestError`; validating the data is the caller's job."""
    import yaml

    if isinstance(text, bytes):
        if len(text) > MAX_MANIFEST_BYTES:
            raise ManifestError(
                f"{what} {source} is too large to be a {what}",
                path=source, expected=f"at most {MAX_MANIFEST_BYTES} bytes", actual=f"{len(text)} bytes",
            )
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"{what} {source} is not UTF-8 text (byte {exc.start}: {text[exc.start:exc.start + 1]!r})",
                path=source, expected="UTF-8 encoded YAML", actual="undecodable bytes",
                remedy=f"save the {what} as UTF-8",
            ) from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{what} {source} is too large to be a {what}",
            path=source, expected=f"at most {MAX_MANIFEST_BYTES} characters", actual=f"{len(text)} characters",
        )
    try:
        data = _fast_load(text)
        if data is _SLOW:
            loader = _StrictSafeLoader.get()(text)
            loader.max_nodes = node_budget(text)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source, what) from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise ManifestError(f"{what} {source} cannot be parsed: {exc}", path=source) from None
    return data


_SLOW = object()


def _fast_load(text: str) -> Any:
    """The document through libyaml (C) when PyYAML has it, with the same limits as the
    strict loader, checked on libyaml's event stream before anything is built: no anchor or
    alias, nesting and node count within bounds. ``_SLOW`` when libyaml is missing or the
    events break the rules or the syntax, so that the pure-Python loader raises the error,
    with its line, column and wording. A 100,000-file manifest loads in seconds this way
    instead of minutes."""
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return _SLOW
    # libyaml accepts tabs where PyYAML's scanner refuses them, skips byte order marks
    # inside the text, and takes characters PyYAML's reader calls non-printable: such texts
    # take the pure-Python path, so both paths agree (a differential test checks it)
    if "\t" in text or "\ufeff" in text or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return _SLOW
    budget = node_budget(text)
    nodes = depth = 0
    starts = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                return _SLOW
            if isinstance(event, starts):
                nodes += 1
                if nodes > budget:
                    return _SLOW
                if not isinstance(event, yaml.ScalarEvent):
                    depth += 1
                    if depth > MAX_NESTING:
                        return _SLOW
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return _SLOW
    strict = _StrictSafeLoader.get()

    class FastLoader(yaml.CSafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            _refuse_duplicate_keys(node)
            return super().construct_mapping(node, deep=deep)

    FastLoader.yaml_constructors = strict.yaml_constructors  # the same types as the strict loader
    loader = FastLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_error(exc: Any, source: str, what: str = "manifest") -> ManifestError:
    """A ManifestError naming the line, column and problem of a YAML error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = (getattr(exc, "problem", None) or str(exc)).strip().replace("\n", " ")
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if tag:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return ManifestError(
            f"{what} {source}{where}: YAML tag '{shown}' is not allowed: a {what} holds only plain data "
            "(strings, numbers, booleans, lists, mappings)",
            path=source, expected="plain YAML without tags", actual=shown,
            remedy=f"remove the tag; modelguard reads {what}s with a safe loader and never builds objects from them",
        )
    context = getattr(exc, "context", None)
    if context and context not in problem:
        problem = f"{problem} ({context})"
    return ManifestError(
        f"{what} {source} is not valid YAML{where}: {problem}",
        path=source, remedy="fix the YAML at the line and column shown",
    )


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate the manifest file at ``path``."""
    p = Path(path)
    try:
        if not p.is_file():
            if p.exists():
                raise ManifestError(
                    f"manifest {p} is not a regular file", path=p, remedy="pass the path of a .yaml manifest file"
                )
            raise ManifestError(
                f"manifest {p} does not exist", path=p,
                remedy="check the path, or pass a model id with a shipped manifest (modelguard verify BAAI/bge-m3)",
            )
        with open(p, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"manifest {p} cannot be read: {exc.strerror}", path=p) from None
    import hashlib

    # The same text at the same path was parsed and validated already in this process (a
    # program loading a model again, a warm verify): the frozen Manifest is reused.
    key = (str(p), hashlib.sha256(raw).digest())
    manifest = _parsed.get(key)
    if manifest is None:
        manifest = parse_manifest_text(raw, source=str(p))
        if len(_parsed) >= _PARSED_MAX:
            _parsed.pop(next(iter(_parsed)), None)
        _parsed[key] = manifest
    return manifest


_parsed: dict[tuple[str, bytes], Manifest] = {}
_PARSED_MAX = 32



# --------------------------------------------------------------------------- dumping


def dump_manifest(manifest: Manifest) -> str:
    """Stable, sorted, diff-friendly YAML for ``manifest``."""
    header = "# modelguard manifest (schema 1). Regenerate with `modelguard build`.\n"
    return dump_yaml(manifest.to_dict(), header)


def dump_yaml(data: Any, header: str = "") -> str:
    """``header`` then ``data`` as block YAML in the order given (lists of integers in flow style)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def flow_list(dumper: Any, data: list) -> Any:
        if all(isinstance(x, int) for x in data):
            return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data)

    Dumper.add_representer(list, flow_list)
    return header + yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120)


def save_manifest(manifest: Manifest, path: str | Path) -> Path:
    """Write ``manifest`` to ``path`` atomically (temp file + rename); see :func:`write_text_atomic`."""
    return write_text_atomic(path, dump_manifest(manifest))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file + rename).

    The file gets the mode any program's new file gets (0666 less the umask), or keeps the mode
    of the file it replaces; not the 0600 of the temporary file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
        os.umask(mask)
        mode = 0o666 & ~mask
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target
