"""sentence-transformers: ``SentenceTransformer(...)`` verifies every file of the model first.

The whole manifest is verified (the transformer weights, the tokenizer and module
folders such as ``1_Pooling/`` or ``2_Dense/``), before any module is built. Random
initialization is refused by the transformers hook when the transformer module loads;
the files verified here are not hashed a second time in the same load.

In sentence-transformers 6 the constructor of ``BaseModel`` (shared by
``SentenceTransformer``, ``CrossEncoder``, ``SparseEncoder``...) is wrapped; before 6,
``SentenceTransformer.__init__``.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

from .. import guard
from . import Patches, version_tuple

DISTRIBUTION = "sentence-transformers"
SUPPORTED = "sentence-transformers >= 3.0"

_patches = Patches()


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and release >= (3, 0)


def patch(module: Any) -> None:
    owner = None
    if version_tuple(getattr(module, "__version__", "0")) >= (6,):
        from sentence_transformers.base.model import BaseModel

        owner = BaseModel
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
        with guard.verified_scope():
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
