"""Built-in model runners for the probe: load a model directory with its own library
(FlagEmbedding for bge-m3, sentence-transformers, transformers for causal LMs) and return a
runner that gives its outputs on fixed inputs. The libraries are imported only here, inside
the loaders, when a probe runs."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import UsageError
from .dependencies import import_library

KINDS = ("bge-m3", "sentence-transformers", "causal-lm")


class Runner:
    """A loaded model plus its fixed inputs: ``runner()`` gives the outputs."""

    def __init__(self, module: Any, run: Callable[[], dict[str, Any]]) -> None:
        self._module = module
        self._run = run

    def __call__(self) -> dict[str, Any]:
        with contextlib.redirect_stdout(sys.stderr):
            return self._run()

    def state_dict(self) -> Any:
        return self._module.state_dict()



def detect_kind(directory: Path, model_id: str | None = None) -> str:
    """``bge-m3``, ``sentence-transformers`` or ``causal-lm`` for a model directory."""
    import json

    if (directory / "colbert_linear.pt").exists() or (directory / "sparse_linear.pt").exists() \
            or (model_id or "").lower().startswith("baai/bge-m3"):
        return "bge-m3"
    if (directory / "modules.json").is_file():
        return "sentence-transformers"
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    archs = config.get("architectures") or [] if isinstance(config, dict) else []
    if any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    raise UsageError(
        f"cannot tell how to run the model in {directory}",
        path=directory,
        expected="bge-m3 head files (colbert_linear.pt/sparse_linear.pt), a sentence-transformers modules.json, "
                 "or a config.json whose architectures name a *ForCausalLM / *LMHeadModel",
        actual=f"architectures: {archs or 'none'}",
        remedy="pass --kind bge-m3|sentence-transformers|causal-lm, or probe your own pipeline with "
               "modelguard.probe(load, call=...)",
    )


def bge_m3_loader(directory: Path, texts: Sequence[str], device: str) -> Callable[[int], Runner]:
    def load(seed: int) -> Runner:
        BGEM3FlagModel = import_library("FlagEmbedding", "flagembedding", needed_by="the probe").BGEM3FlagModel

        with contextlib.redirect_stdout(sys.stderr):
            model = BGEM3FlagModel(str(directory), use_fp16=False, devices=device)

        def run() -> dict[str, Any]:
            out = model.encode(list(texts), batch_size=len(texts), max_length=64, return_dense=True,
                               return_sparse=True, return_colbert_vecs=True)
            return {"dense": out["dense_vecs"], "sparse": out["lexical_weights"], "colbert": out["colbert_vecs"]}

        return Runner(model.model, run)

    return load


def sentence_transformers_loader(directory: Path, texts: Sequence[str], device: str) -> Callable[[int], Runner]:
    def load(seed: int) -> Runner:
        library = import_library("sentence_transformers", "transformers", needed_by="the probe")
        SentenceTransformer = library.SentenceTransformer

        with contextlib.redirect_stdout(sys.stderr):
            model = SentenceTransformer(str(directory), device=device)
        return Runner(model, lambda: {"embeddings": model.encode(list(texts), show_progress_bar=False)})

    return load


def causal_lm_loader(directory: Path, texts: Sequence[str], max_new_tokens: int,
                      device: str) -> Callable[[int], Runner]:
    def load(seed: int) -> Runner:
        import torch

        AutoModelForCausalLM = import_library("transformers", "transformers", needed_by="the probe").AutoModelForCausalLM
        with contextlib.redirect_stdout(sys.stderr):
            model = AutoModelForCausalLM.from_pretrained(str(directory)).to(device).eval()
            prompts = [p.to(device) for p in _lm_prompts(directory, texts, model.config)]

        def run() -> dict[str, Any]:
            logits, generated = [], []
            pad = model.generation_config.pad_token_id
            if pad is None:
                pad = model.generation_config.eos_token_id
            if isinstance(pad, list):
                pad = pad[0] if pad else None
            with torch.no_grad():
                for ids in prompts:
                    logits.append(model(ids).logits[0, -1])
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                         min_new_tokens=max_new_tokens, pad_token_id=pad)
                    generated.append(out[0, ids.shape[1]:])
            return {"logits": logits, "generated_ids": generated}

        return Runner(model, run)

    return load


def _lm_prompts(directory: Path, texts: Sequence[str], config: Any) -> list[Any]:
    import torch

    has_tokenizer = any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json",
                                                            "tokenizer.model", "vocab.json"))
    if has_tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        prompts = [torch.tensor([tokenizer(t)["input_ids"]]) for t in texts]
        if all(p.shape[1] > 0 for p in prompts):
            return prompts
    vocab = int(getattr(config, "vocab_size", 0) or 2)
    return [torch.tensor([[(7 * i + 3 * j) % vocab for j in range(4 + i)]]) for i in range(len(texts))]


def check_device(device: str) -> None:
    torch = import_library("torch", "torch", needed_by="the probe")
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError, TypeError) as exc:
        raise UsageError(f"'{device}' is not a torch device: {exc}", expected="cpu, cuda, cuda:0, mps, ...",
                         actual=device) from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device} asked for, but torch sees no CUDA device", expected="a CUDA device",
                         actual=f"torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}",
                         remedy="probe on the CPU: --device cpu")


