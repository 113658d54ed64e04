"""A tiny real BERT checkpoint for the guard tests (a few kB, made with transformers itself)."""

from __future__ import annotations

from pathlib import Path

TINY_BERT_CONFIG = dict(
    vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    intermediate_size=32, max_position_embeddings=32, type_vocab_size=2, num_labels=3,
)


def tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(**TINY_BERT_CONFIG)


def save_tiny_bert(directory: str | Path, model_class: str = "BertModel", seed: int = 0) -> Path:
    """Save a freshly built tiny ``model_class`` (a transformers class name) with save_pretrained."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(tiny_bert_config())
    model.eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    return directory


def sample_inputs():
    import torch

    ids = torch.tensor([[2, 7, 11, 5, 3, 0], [2, 9, 4, 3, 0, 0]])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "guard", "verifies", "every", "file"]


def save_tiny_tokenizer(directory: str | Path) -> Path:
    """A word-level tokenizer made with ``tokenizers``, saved by transformers (tokenizer.json + config)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(TINY_VOCAB)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    directory = Path(directory)
    fast.save_pretrained(directory)
    return directory
