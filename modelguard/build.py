"""Write a manifest from a local model directory.

Every file gets its size, md5 and sha256 (one read each); components are
assigned by a rule set: bge-m3's (dense / sparse / colbert / tokenizer / onnx)
when the model looks like bge-m3, a generic one otherwise. :func:`build_from_digests`
takes the sha256 of each file from digests already checked (a verified signature's)
instead of hashing.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Callable, Iterable, Mapping

from .errors import UsageError
from .fs import containing_roots, walk_files, within
from .hashing import hash_file, run_parallel, usable_cpus
from .manifest import ChunkDigests, Component, FileEntry, Manifest, check_relative_path
from .pieces import CHUNK_BYTES, CHUNKED, CHUNKED_MIN_SIZE, piece_size_for

BUILD_ALGORITHMS = ("md5", "sha256")

TOKENIZER_PATTERNS = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
    "tokenizer.model", "*.tiktoken", "chat_template.jinja", "chat_template.json",
)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.safetensors.index.json",
                   "*.bin.index.json", "*.gguf")
ALT_FRAMEWORK_PATTERNS = ("tf_model.h5", "flax_model.msgpack", "rust_model.ot", "*.h5", "*.msgpack",
                          "model.ot", "coreml/*", "openvino/*")
MODEL_CONFIG_PATTERNS = ("config.json", "generation_config.json", "preprocessor_config.json", "*.py")
ST_PATTERNS = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
               "sentence_*_config.json", "[0-9]_*/*", "[0-9][0-9]_*/*")
DOC_PATTERNS = ("README*", "LICENSE*", ".gitattributes", "*.md", "*.png", "*.jpg", "*.jpeg", "*.gif",
                "*.svg", "*.pdf", "data_config.json", "*.ipynb")


@dataclass(frozen=True)
class Rule:
    patterns: tuple[str, ...]
    component: str


@dataclass(frozen=True)
class RuleSet:
    """Ordered rules (first match wins) and the components they produce."""

    name: str
    components: dict[str, Component]
    rules: tuple[Rule, ...]
    fallback: str

    def component_for(self, path: str) -> str:
        for rule in self.rules:
            if any(_match(path, pattern) for pattern in rule.patterns):
                return rule.component
        return self.fallback


def _match(path: str, pattern: str) -> bool:
    """A pattern with '/' matches the whole relative path; one without, the file name."""
    if "/" in pattern:
        return fnmatch.fnmatchcase(path, pattern)
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


BGE_M3_RULES = RuleSet(
    name="bge-m3",
    components={
        "dense": Component("dense", True, "XLM-RoBERTa backbone (dense embeddings)"),
        "sparse": Component("sparse", True, "lexical-weight head (sparse_linear.pt)"),
        "colbert": Component("colbert", True, "multi-vector head (colbert_linear.pt)"),
        "tokenizer": Component("tokenizer", True, "tokenizer files"),
        "sentence_transformers": Component("sentence_transformers", True,
                                           "sentence-transformers module configs (pooling)"),
        "onnx": Component("onnx", False, "ONNX export"),
        "docs": Component("docs", False, "documentation and images"),
        "other": Component("other", False, "files no rule assigned"),
    },
    rules=(
        Rule(("onnx/*", "*.onnx", "*.onnx_data"), "onnx"),
        Rule(("sparse_linear.pt",), "sparse"),
        Rule(("colbert_linear.pt",), "colbert"),
        Rule(TOKENIZER_PATTERNS, "tokenizer"),
        Rule(ST_PATTERNS, "sentence_transformers"),
        Rule(("pytorch_model.bin", "model.safetensors", "*.safetensors", "config.json",
              "*.safetensors.index.json", "*.bin.index.json"), "dense"),
        Rule(DOC_PATTERNS, "docs"),
    ),
    fallback="other",
)

GENERIC_RULES = RuleSet(
    name="generic",
    components={
        "model": Component("model", True, "weights and model configuration"),
        "tokenizer": Component("tokenizer", True, "tokenizer files"),
        "sentence_transformers": Component("sentence_transformers", True,
                                           "sentence-transformers modules (pooling, dense, normalize)"),
        "onnx": Component("onnx", False, "ONNX export"),
        "other_frameworks": Component("other_frameworks", False, "weights for other frameworks"),
        "docs": Component("docs", False, "documentation and images"),
        "other": Component("other", False, "files no rule assigned"),
    },
    rules=(
        Rule(("onnx/*", "*.onnx", "*.onnx_data"), "onnx"),
        Rule(ALT_FRAMEWORK_PATTERNS, "other_frameworks"),
        Rule(TOKENIZER_PATTERNS, "tokenizer"),
        Rule(ST_PATTERNS, "sentence_transformers"),
        Rule(WEIGHT_PATTERNS + MODEL_CONFIG_PATTERNS, "model"),
        Rule(DOC_PATTERNS, "docs"),
    ),
    fallback="other",
)

RULE_SETS = {"bge-m3": BGE_M3_RULES, "generic": GENERIC_RULES}


def choose_rules(model: str, paths: Iterable[str]) -> RuleSet:
    """bge-m3 rules for bge-m3-shaped models (a sparse or colbert head file), generic otherwise."""
    names = {p.rsplit("/", 1)[-1] for p in paths}
    if "bge-m3" in model.lower() or names & {"sparse_linear.pt", "colbert_linear.pt"}:
        return BGE_M3_RULES
    return GENERIC_RULES


def filter_paths(paths: Iterable[str], include: Iterable[str] | None, exclude: Iterable[str]) -> list[str]:
    """``paths`` matching any ``include`` glob (all when None) and no ``exclude`` glob."""
    inc = tuple(include or ())
    exc = tuple(exclude)
    return [p for p in paths
            if (not inc or any(_match(p, pat) for pat in inc)) and not any(_match(p, pat) for pat in exc)]


def resolve_rules(rules: str | RuleSet | None, model: str, paths: Iterable[str]) -> RuleSet:
    """The rule set named by ``rules`` (None or "auto": chosen from the model id and file names)."""
    if isinstance(rules, RuleSet):
        return rules
    if rules in (None, "auto"):
        return choose_rules(model, paths)
    if rules in RULE_SETS:
        return RULE_SETS[rules]
    raise UsageError(f"unknown rule set '{rules}'", expected="one of: " + ", ".join(RULE_SETS), actual=rules)


def list_model_files(directory: str | os.PathLike[str]) -> list[str]:
    """Relative POSIX paths of the files in a model directory, tool folders skipped, sorted."""
    return walk_files(directory, regular_only=True)


def build_manifest(
    directory: str | os.PathLike[str],
    model: str,
    revision: str | None = None,
    *,
    rules: str | RuleSet | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    algorithms: Iterable[str] = BUILD_ALGORITHMS,
    progress: Callable[[int], None] | None = None,
    chunks: bool = True,
) -> Manifest:
    """A manifest for the files in ``directory`` (size, md5 and sha256 of each; with ``chunks``,
    a file of :data:`~modelguard.pieces.CHUNKED_MIN_SIZE` or more also gets the sha256 of each
    64 MiB piece (larger pieces past 4096 of them), so verifying it runs on every core; every
    digest comes from one read).

    ``rules`` is ``"bge-m3"``, ``"generic"``, a :class:`RuleSet`, or None to choose
    from the model id and file names. ``include``/``exclude`` are glob patterns on
    relative paths.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(
            f"{root} is not a directory" if root.exists() else f"model directory {root} does not exist",
            path=root, expected="a directory holding the model's files",
        )
    paths = filter_paths(list_model_files(root), include, exclude)
    if not paths:
        raise UsageError(f"no files to put in a manifest under {root}", path=root,
                         remedy="point build at the folder that holds config.json and the weights")
    roots = containing_roots(root)
    for p in paths:
        check_relative_path(p, source=str(root))
        target = (root / p).resolve()
        if not within(target, roots):
            raise UsageError(
                f"{root / p} links outside the model directory (to {target}); verify would refuse it",
                path=root / p, expected="files inside the model directory",
                actual=f"a link to {target}",
                remedy=f"replace the link with the file it points to, or leave it out with --exclude {quote(str(p))}",
            )
    rule_set = resolve_rules(rules, model, paths)
    algorithms = tuple(algorithms)

    def one(path: str) -> FileEntry:
        full = root / path
        pieces: list[str] = []
        size = full.stat().st_size
        piece = piece_size_for(size) if chunks and size >= CHUNKED_MIN_SIZE else None
        digests = hash_file(full, algorithms + ((CHUNKED,) if piece else ()), progress=progress, pieces=pieces,
                            piece_size=piece or CHUNK_BYTES)
        digests.pop(CHUNKED, None)
        size = full.stat().st_size
        if piece and len(pieces) != -(-size // piece):  # changed since it was read
            raise UsageError(f"{full} changed while it was read ({size} bytes now)", path=full,
                             remedy="wait until whatever is writing the file has finished, then build again")
        return FileEntry(path=path, size=size, component=rule_set.component_for(path),
                         digests=digests, chunks=ChunkDigests(piece, tuple(pieces)) if piece else None)

    entries = run_parallel(paths, one, workers=min(len(paths), usable_cpus(), 8))
    used = {e.component for e in entries}
    components = {name: comp for name, comp in rule_set.components.items() if name in used}
    return Manifest(model=model, revision=revision, components=components, files=tuple(entries))


def build_from_digests(
    directory: str | os.PathLike[str],
    model: str,
    revision: str | None,
    digests: Mapping[str, str],
    *,
    rules: str | RuleSet | None = None,
    exclude: Iterable[str] = (),
) -> Manifest:
    """A manifest of the files ``digests`` names (relative path -> sha256), each with its size on
    disk and the component ``rules`` assign; nothing is hashed. The caller vouches that the
    files match: ``modelguard build --from-signature`` passes the digests of a signature whose
    files it verified."""
    root = Path(directory)
    paths = filter_paths(sorted(digests), None, exclude)
    if not paths:
        raise UsageError(f"no files to put in a manifest: every signed file of {root} is excluded", path=root,
                         remedy="drop the --exclude patterns that match every file")
    rule_set = resolve_rules(rules, model, paths)
    entries = []
    for path in paths:
        check_relative_path(path, source=str(root))
        entries.append(FileEntry(path=path, size=(root / path).stat().st_size, component=rule_set.component_for(path),
                                 digests={"sha256": digests[path]}))
    used = {e.component for e in entries}
    components = {name: comp for name, comp in rule_set.components.items() if name in used}
    return Manifest(model=model, revision=revision, components=components, files=tuple(entries))
