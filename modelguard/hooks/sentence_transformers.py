"""sentence-transformers: ``SentenceTransformer(...)`` verifies every file of the model first.

The whole manifest is verified (the transformer weights, the tokenizer and module
folders such as ``1_Pooling/`` or ``2_Dense/``), before any module is built. Random
initialization is refused by the transformers hook when the transformer module loads;
the files verified here are not hashed a second time in the same load.

In sentence-transformers 6 the constructor of ``BaseModel`` (shared by
``SentenceTransformer``, ``CrossEncoder``, ``SparseEncoder``...) is wrapped; before 6,
``SentenceTransformer.__init__``.

A checkpoint without ``modules.json`` gets default modules built by the class
(``_load_default_modules``, wrapped in 6): the transformer loads from the checkpoint (its
random initialization is the transformers hook's to refuse), but a ``SparseEncoder`` on a
checkpoint that is not a masked-LM gets a new ``SparseAutoEncoder`` head whose weights come
from no file. Every default module holding parameters that is not the transformer raises
:class:`~modelguard.errors.RandomInitError` naming its weights, unless
:func:`modelguard.allow_random_init` names the module class or the keys.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

from .. import guard
from ..errors import RandomInitError
from . import Patches, outer_loader, version_tuple

DISTRIBUTION = "sentence-transformers"
SUPPORTED = "sentence-transformers >= 3.0"

_patches = Patches()


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and release >= (3, 0)


# sentence-transformers 6: the model classes that build default modules for a bare checkpoint.
DEFAULT_MODULE_OWNERS = (
    ("sentence_transformers.base.model", "BaseModel"),
    ("sentence_transformers.sentence_transformer.model", "SentenceTransformer"),
    ("sentence_transformers.cross_encoder.model", "CrossEncoder"),
    ("sentence_transformers.sparse_encoder.model", "SparseEncoder"),
    ("sentence_transformers.multi_vector_encoder.model", "MultiVectorEncoder"),
)


def patch(module: Any) -> None:
    owner = None
    if version_tuple(getattr(module, "__version__", "0")) >= (6,):
        import importlib

        from sentence_transformers.base.model import BaseModel

        owner = BaseModel
        for module_name, class_name in DEFAULT_MODULE_OWNERS:
            try:
                cls = getattr(importlib.import_module(module_name), class_name, None)
            except ModuleNotFoundError as exc:
                if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                    continue  # a model type this release does not have
                raise
            if cls is not None and "_load_default_modules" in vars(cls):
                _patches.replace(cls, "_load_default_modules", _wrap_default_modules)
    else:
        owner = module.SentenceTransformer
    _patches.replace(owner, "__init__", _wrap_init)


def unpatch() -> None:
    _patches.restore()


def hub_name(self: Any, name: str, original: Any = None) -> str:
    """The Hub id sentence-transformers itself would use for ``name`` (``all-MiniLM-L6-v2`` ->
    ``sentence-transformers/all-MiniLM-L6-v2``)."""
    if os.path.exists(name) or "/" in name:
        return name
    organization = getattr(type(self), "default_huggingface_organization", "sentence-transformers")
    if organization is None:
        return name
    # The checkpoints that keep their bare names on the Hub, as the wrapped constructor sees them.
    originals = getattr(original, "__globals__", {}).get("ORIGINAL_TRANSFORMER_MODELS", ())
    if name.lower() in originals:
        return name
    return f"{organization}/{name}"


def _wrap_init(original: Any) -> Any:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return original(self, *args, **kwargs)  # let the library report its own usage error
        name = bound.arguments.get("model_name_or_path")
        with guard.verified_scope(), outer_loader(f"sentence-transformers {type(self).__name__}"):
            if isinstance(name, (str, os.PathLike)) and os.fspath(name):
                name = hub_name(self, os.fspath(name), original)
                asked = bound.arguments.get("revision")
                cache = bound.arguments.get("cache_folder") or os.environ.get("SENTENCE_TRANSFORMERS_HOME")
                resolved = guard.check_before_load(
                    name, revision=asked, cache_dir=cache, loader=f"sentence-transformers {type(self).__name__}",
                    local_files_only=bool(bound.arguments.get("local_files_only")),
                )
                if (asked is None and resolved.how in ("hub-id", "hf-listing", "lock") and resolved.revision and not os.path.isdir(name)
                        and "revision" in signature.parameters):
                    bound.arguments["revision"] = resolved.revision  # load the revision that was verified
            return original(*bound.args, **bound.kwargs)

    return __init__


def _wrap_default_modules(original: Any) -> Any:
    @functools.wraps(original)
    def _load_default_modules(self: Any, model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, model_name_or_path, *args, **kwargs)
        modules = result[0] if isinstance(result, tuple) else result
        _refuse_new_heads(self, os.fspath(model_name_or_path), modules)
        return result

    return _load_default_modules


def _refuse_new_heads(model: Any, name: str, modules: Any) -> None:
    """Default modules with weights of their own (not the transformer) were built fresh: refuse them."""
    from sentence_transformers.base.modules import Transformer

    for index, module in enumerate(modules or ()):
        if isinstance(module, Transformer) or not hasattr(module, "named_parameters"):
            continue
        keys = [f"{index}.{key}" for key, _ in module.named_parameters()]
        if keys:
            head = type(module).__name__
            try:
                guard.refuse_random_init(
                    keys, component=head, loader=f"sentence-transformers {type(model).__name__}",
                    model=f"{name} (no modules.json: a new {head} head, module {index}, built by "
                          f"{type(model).__name__} with weights from no file)",
                )
            except RandomInitError as exc:
                exc.remedy = (f"load a trained model (one with modules.json and the {head} weights); to train a new "
                              f"head on purpose, load inside `with modelguard.allow_random_init({head!r}):`")
                raise
