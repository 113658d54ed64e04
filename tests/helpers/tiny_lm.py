"""A tiny real causal language model for tests: a 2-layer GPT-2 built with transformers,
its tokenizer trained with the ``tokenizers`` library, saved with ``save_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CORPUS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "models must load the same weights every time",
    "seeds make sampling repeatable",
    "hello world from a tiny language model",
]


def make_tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(directory)


def make_tiny_causal_lm(
    directory: str | Path,
    *,
    generation: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a 2-layer GPT-2 (vocab from :data:`CORPUS`) into ``directory``.

    ``generation`` is written as generation_config.json (merged over eos/pad ids);
    ``None`` writes ``{"do_sample": true, "temperature": 0.7, "top_k": 20}``.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    make_tokenizer(directory)
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    vocab_size = len(tokenizer["model"]["vocab"])
    eos = tokenizer["model"]["vocab"]["<eos>"]
    config = GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)
    gen = {"do_sample": True, "temperature": 0.7, "top_k": 20} if generation is None else dict(generation)
    gen = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, **gen}
    (directory / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return directory


def copy_tiny_causal_lm(template: str | Path, directory: str | Path, *,
                        generation: dict[str, Any] | None = None) -> Path:
    """A copy of a model :func:`make_tiny_causal_lm` wrote, with ``generation`` (if given) as its
    generation_config.json, exactly as ``make_tiny_causal_lm(directory, generation=...)`` writes it."""
    import shutil

    directory = Path(shutil.copytree(template, directory))
    if generation is not None:
        eos = json.loads((directory / "generation_config.json").read_text())["eos_token_id"]
        gen = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, **generation}
        (directory / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return directory
