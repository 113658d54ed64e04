"""Small sentence-transformers-shaped model folders (weights, config, tokenizer, ``1_Pooling/``)
for tests that need the layout, not a model that runs: one writer, each test's own bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

POOLING_CONFIG = '{"pooling_mode_mean_tokens": true}\n'


def write_st_shaped_model(root: str | Path, *, weights: bytes, config: str, tokenizer: str,
                          extra: Mapping[str, bytes | str] | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json``, ``tokenizer.json``, ``1_Pooling/config.json``
    (mean pooling) and any ``extra`` files (relative path -> content) into ``root``."""
    root = Path(root)
    files: dict[str, bytes | str] = {
        "model.safetensors": weights, "config.json": config, "tokenizer.json": tokenizer,
        "1_Pooling/config.json": POOLING_CONFIG, **(extra or {}),
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def save_tiny_sentence_transformer(directory: str | Path) -> Path:
    """A real, loadable sentence-transformers model (tiny BERT, word-level tokenizer, mean
    pooling) saved with ``SentenceTransformer.save`` into ``directory``."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers 6 moved the modules; the old path warns there
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    from .tiny_bert import save_tiny_bert, save_tiny_tokenizer

    directory = Path(directory)
    backbone = save_tiny_bert(directory.parent / f"{directory.name}-backbone")
    save_tiny_tokenizer(backbone)
    transformer = Transformer(str(backbone))
    dimension = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = Pooling(dimension())
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(directory))
    return directory
