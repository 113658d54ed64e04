"""FlagEmbedding's plain models: ``FlagModel``, ``FlagReranker``, ``FlagLLMReranker`` (and the
other embedders and rerankers built the same way) verify the model folder before construction.

Each of these classes builds its model with transformers (``AutoTokenizer`` and
``AutoModel`` / ``AutoModelForSequenceClassification`` / ``AutoModelForCausalLM``
``.from_pretrained``) and, for an LLM reranker given ``peft_path``, peft's
``PeftModel.from_pretrained``. Their constructor is wrapped: before the original runs, every
file of the model folder or Hub id is verified against the expectation that applies
(:func:`modelguard.guard.check_before_load`, the policy as configured; a Hub id with a
manifest is downloaded and the verified snapshot is what the class loads). Inside, the
transformers and peft hooks see the same guarded load: the files are not hashed again, and
weights the checkpoint does not hold (a reranker built on a base checkpoint gets a fresh
classifier) raise :class:`~modelguard.errors.RandomInitError` naming the FlagEmbedding class,
unless :func:`modelguard.allow_random_init` names them.

Where the classes live: 1.3/1.4 ``FlagEmbedding.inference`` (``BaseEmbedder``,
``BaseReranker``, ``BaseLLMReranker``...); 1.2 ``FlagEmbedding.flag_models`` and
``FlagEmbedding.flag_reranker``. BGE-M3 has its own hook (:mod:`modelguard.hooks.flagembedding`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from typing import Any

from .. import guard
from . import Patches, outer_loader

# (module, class) per layout; a class absent from the installed release is skipped.
CLASSES = (
    ("FlagEmbedding.inference.embedder.encoder_only.base", "BaseEmbedder"),
    ("FlagEmbedding.inference.embedder.decoder_only.base", "BaseLLMEmbedder"),
    ("FlagEmbedding.inference.embedder.decoder_only.icl", "ICLLLMEmbedder"),
    ("FlagEmbedding.inference.reranker.encoder_only.base", "BaseReranker"),
    ("FlagEmbedding.inference.reranker.decoder_only.base", "BaseLLMReranker"),
    ("FlagEmbedding.inference.reranker.decoder_only.layerwise", "LayerWiseLLMReranker"),
    ("FlagEmbedding.inference.reranker.decoder_only.lightweight", "LightweightLLMReranker"),
    ("FlagEmbedding.flag_models", "FlagModel"),
    ("FlagEmbedding.flag_models", "FlagLLMModel"),
    ("FlagEmbedding.flag_models", "FlagICLModel"),
    ("FlagEmbedding.flag_models", "LLMEmbedder"),
    ("FlagEmbedding.flag_reranker", "FlagReranker"),
    ("FlagEmbedding.flag_reranker", "FlagLLMReranker"),
    ("FlagEmbedding.flag_reranker", "LayerWiseFlagLLMReranker"),
    ("FlagEmbedding.flag_reranker", "LightWeightFlagLLMReranker"),
)

_patches = Patches()


def patch(package: Any) -> None:
    """Wrap the constructors of the classes the installed FlagEmbedding has (``package``: FlagEmbedding)."""
    public = {value: name for name, value in vars(package).items() if isinstance(value, type)}
    for module_name, class_name in CLASSES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # not this release's layout
            raise
        cls = getattr(module, class_name, None)
        if cls is not None and "__init__" in vars(cls):
            _patches.replace(cls, "__init__", functools.partial(_wrap_init, names=public))


def unpatch() -> None:
    _patches.restore()


def _wrap_init(original: Any, *, names: dict[type, str]) -> Any:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return original(self, *args, **kwargs)  # let FlagEmbedding report its own usage error
        name = bound.arguments.get("model_name_or_path")
        if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
            return original(*bound.args, **bound.kwargs)
        cls = type(self)
        public = names.get(cls, cls.__name__)
        loader = f"FlagEmbedding {public}" + (f" ({cls.__name__})" if public != cls.__name__ else "")
        extra = bound.arguments.get("kwargs") or {}
        with guard.verified_scope(), outer_loader(loader):
            try:
                resolved = guard.check_before_load(
                    name, loader=loader, cache_dir=bound.arguments.get("cache_dir"),
                    local_files_only=bool(extra.get("local_files_only")),
                )
            except BaseException:
                # FlagEmbedding's __del__ reads self.pool, which its __init__ sets; refused before
                # that, the object would print an AttributeError when collected.
                if not hasattr(self, "pool"):
                    self.pool = None
                raise
            given = os.fspath(name)
            if resolved.manifest is not None and resolved.directory is not None and not os.path.isdir(given):
                # A Hub id: load the snapshot that was verified, not whatever the Hub serves now.
                bound.arguments["model_name_or_path"] = str(resolved.directory)
            result = original(*bound.args, **bound.kwargs)
            if getattr(self, "model_name_or_path", None) == bound.arguments["model_name_or_path"]:
                self.model_name_or_path = name  # what the caller passed, as without the guard
            return result

    return __init__
