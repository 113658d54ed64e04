"""Tiny real models for the tests, built on the spot with the real libraries.

``make_tiny_bge_m3`` writes a bge-m3-shaped model: an XLM-RoBERTa backbone of a
few layers saved with ``save_pretrained``, a Unigram tokenizer made with the
``tokenizers`` library (loadable offline by ``AutoTokenizer`` and FlagEmbedding),
and the sparse/colbert heads saved the way FlagEmbedding saves them:
``torch.save(linear.state_dict(), "sparse_linear.pt")``. Works with the main
environment (transformers 5) and the FlagEmbedding 1.2 one (transformers 4.44).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

TINY_BGE_M3_ID = "modelguard-tests/tiny-bge-m3"
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # XLM-R ids 0..3
_WORDS = (
    "the of and to in is was for on that with as by at from it an be this are or which has his had "
    "model head file weight sparse dense colbert token vector query passage search retrieval text word "
    "what where when who how why bge m3 embedding random seed load guard safe test tiny hello world "
    "paris france capital city river book read write run fast slow big small new old good bad"
).split()
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-()"


def _tokenizer_vocab() -> list[tuple[str, float]]:
    vocab: list[tuple[str, float]] = [(tok, 0.0) for tok in SPECIAL_TOKENS]
    vocab.append(("\u2581", -2.0))
    for i, word in enumerate(_WORDS):
        vocab.append((f"\u2581{word}", -3.0 - i / 1000))
    for ch in _CHARS:
        vocab.append((ch, -8.0))
        vocab.append((f"\u2581{ch}", -7.5))
    # Unique pieces only (a word may equal a single character piece).
    seen: set[str] = set()
    out = []
    for piece, score in vocab:
        if piece not in seen:
            seen.add(piece)
            out.append((piece, score))
    return out


def _save_tokenizer(directory: Path, max_length: int) -> int:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    vocab = _tokenizer_vocab()
    tok = Tokenizer(Unigram(vocab, unk_id=SPECIAL_TOKENS.index("<unk>")))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "pad_token": "<pad>", "unk_token": "<unk>",
        "padding_side": "right", "clean_up_tokenization_spaces": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {k: config[k] for k in ("bos_token", "cls_token", "eos_token", "sep_token", "pad_token", "unk_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return len(vocab)


def make_tiny_bge_m3(
    directory,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    weights: str = "pytorch_model.bin",
    head_dtype: str = "float16",
) -> Path:
    """Write a tiny real bge-m3-shaped model into ``directory`` and return its path.

    ``weights`` is ``"pytorch_model.bin"`` (what BAAI/bge-m3 ships) or
    ``"model.safetensors"``. Heads: ``sparse_linear.pt`` = Linear(hidden, 1),
    ``colbert_linear.pt`` = Linear(hidden, hidden), saved as FlagEmbedding saves them
    (a state dict of cloned CPU tensors) in ``head_dtype`` (bge-m3's are float16).
    Same ``seed``, same bytes.
    """
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    if weights not in ("pytorch_model.bin", "model.safetensors"):
        raise ValueError(f"weights must be pytorch_model.bin or model.safetensors, not {weights!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    max_length = 64
    vocab_size = _save_tokenizer(out, max_length)
    config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=2, intermediate_size=2 * hidden,
        max_position_embeddings=max_length + 2, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = XLMRobertaModel(config).eval()
        colbert = torch.nn.Linear(hidden, hidden)
        sparse = torch.nn.Linear(hidden, 1)
    finally:
        torch.random.set_rng_state(generator_state)

    config.save_pretrained(out)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if weights == "model.safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, out / "pytorch_model.bin")

    dtype = getattr(torch, head_dtype)

    def trans_state_dict(linear: torch.nn.Linear):  # FlagEmbedding's own save helper, plus the dtype
        sd = linear.state_dict()
        return type(sd)({k: v.clone().cpu().to(dtype) for k, v in sd.items()})

    torch.save(trans_state_dict(colbert), out / "colbert_linear.pt")
    torch.save(trans_state_dict(sparse), out / "sparse_linear.pt")
    return out


def head_tensor_specs(path) -> dict:
    """``{name: TensorSpec}`` of a head file, read with ``torch.load(weights_only=True)``."""
    import torch

    from modelguard.manifest import TensorSpec

    from modelguard.policy import UnknownModelWarning

    # Read to write the manifest that will cover it: no expectation covers the file yet, and
    # the installed guard's direct-read check would say so (the warning is the guard's, not the test's).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownModelWarning)
        state = torch.load(path, map_location="cpu", weights_only=True)
    return {name: TensorSpec(shape=tuple(t.shape), dtype=str(t.dtype).removeprefix("torch."))
            for name, t in state.items()}


def tiny_bge_m3_manifest(directory, *, model: str = TINY_BGE_M3_ID, revision: str | None = None):
    """The manifest of a tiny bge-m3 in ``directory`` (bge-m3 rules), with the heads' tensors."""
    from modelguard.build import build_manifest
    from modelguard.manifest import Manifest

    root = Path(directory)
    manifest: Manifest = build_manifest(root, model, revision, rules="bge-m3",
                                        exclude=("modelguard.yaml",))
    files = tuple(
        replace(entry, tensors=head_tensor_specs(root / entry.path))
        if entry.path in ("sparse_linear.pt", "colbert_linear.pt") else entry
        for entry in manifest.files
    )
    return replace(manifest, files=files)


def lfs_pointer_bytes(data: bytes) -> bytes:
    """The Git LFS pointer text a clone without ``git lfs`` leaves instead of ``data``."""
    import hashlib

    return (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(data).hexdigest()}\n"
        f"size {len(data)}\n"
    ).encode()


M3_TEXTS = (
    "hello world",
    "what is the capital of france",
    "paris is the capital city of france, on the river",
    "bge m3 sparse and colbert heads for search and retrieval",
)


def load_bge_m3(path, **kwargs):
    """``BGEM3FlagModel`` on the CPU in float32, with the argument names of the installed FlagEmbedding."""
    from importlib.metadata import version

    from FlagEmbedding import BGEM3FlagModel

    from modelguard.hooks import version_tuple

    options = {"use_fp16": False}
    options["devices" if version_tuple(version("FlagEmbedding"))[:2] >= (1, 3) else "device"] = "cpu"
    options.update(kwargs)
    return BGEM3FlagModel(str(path), **options)


def m3_outputs(model, texts=M3_TEXTS) -> dict:
    """Dense, sparse (lexical weights) and colbert outputs of a loaded bge-m3, as plain values."""
    out = model.encode(list(texts), batch_size=len(texts), max_length=32, return_dense=True,
                       return_sparse=True, return_colbert_vecs=True)
    return {
        "dense": [row.tolist() for row in out["dense_vecs"]],
        "sparse": [{str(k): float(v) for k, v in sorted(d.items())} for d in out["lexical_weights"]],
        "colbert": [vecs.tolist() for vecs in out["colbert_vecs"]],
    }
