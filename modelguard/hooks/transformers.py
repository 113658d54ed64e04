"""transformers: ``PreTrainedModel.from_pretrained`` verifies first and refuses new weights.

Before the model is built, the files transformers reads (config and weights of the
manifest's components that hold them) are verified; ``from_pretrained`` of a
tokenizer verifies the components holding the tokenizer files. The auto classes (``AutoModel*``,
``AutoConfig``, ``AutoTokenizer``) read config.json (and tokenizer_config.json) before they pick
the loader: given a Hub id and no revision, they are handed the pinned one (a lock entry's commit,
a manifest's revision) first, so every file of the load comes from the commit that is verified,
not from wherever the default branch points now. After it is built, every weight
reported missing from the checkpoint (or re-initialized because of a size mismatch)
raises :class:`~modelguard.errors.RandomInitError`, unless
:func:`modelguard.allow_random_init` names it. ``model.load_adapter(path)`` (transformers'
peft integration) verifies the adapter's files and refuses adapter weights left at their
initialization (:func:`modelguard.hooks.peft.wrap_transformers_load_adapter`). Keys the model itself declares
optional (``_keys_to_ignore_on_load_missing``), tied weights and non-persistent
buffers are not reported by transformers, so they are never refused.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import os
import sys
from typing import Any

from .. import guard
from . import Patches, loader_label, outer_loader, version_tuple
from .peft import wrap_transformers_load_adapter

DISTRIBUTION = "transformers"
SUPPORTED = "transformers >= 4.40"
# Files transformers reads for a model, at the root of the (sub)folder it loads.
MODEL_FILE_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "*.bin", "*.safetensors.index.json",
    "*.bin.index.json", "*.pt", "*.pth",
)
TOKENIZER_FILE_PATTERNS = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "*.model", "chat_template.jinja",
)
# Files the feature extractors, image, video and multimodal processors read.
PROCESSOR_FILE_PATTERNS = (
    "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
    "audio_tokenizer_config.json", "chat_template.json", "chat_template.jinja",
)

_patches = Patches()


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and release >= (4, 40)


# Auto-class modules -> the classes whose from_pretrained reads config files before the loader runs.
# (Each AutoModel* class holds its own copy of the base class's from_pretrained, made when
# modeling_auto runs, so each is patched there, not the base class.)
AUTO_CLASSES = {
    "configuration_auto": "AutoConfig",
    "tokenization_auto": "AutoTokenizer",
    "feature_extraction_auto": "AutoFeatureExtractor",
    "image_processing_auto": "AutoImageProcessor",
    "video_processing_auto": "AutoVideoProcessor",
    "processing_auto": "AutoProcessor",
}
# Processor modules -> (class, the classmethod that reads its config file): every from_pretrained
# of the family, the auto classes' included, reads the file through it.
PROCESSOR_READERS = {
    "feature_extraction_utils": ("FeatureExtractionMixin", "get_feature_extractor_dict"),
    "image_processing_base": ("ImageProcessingMixin", "get_image_processor_dict"),
    "image_processing_utils": ("ImageProcessingMixin", "get_image_processor_dict"),  # before 4.42
    "video_processing_utils": ("VideoProcessorMixin", "get_video_processor_dict"),
    "processing_utils": ("ProcessorMixin", "get_processor_dict"),
}
_PROCESSOR_AUTO = frozenset(AUTO_CLASSES[m] for m in ("feature_extraction_auto", "image_processing_auto",
                                                       "video_processing_auto", "processing_auto"))
# Resolutions whose revision the loader is given when the caller names none.
PINNED = ("hub-id", "hf-listing", "lock")


def patch(module: Any) -> None:
    """Called for ``transformers.modeling_utils``, ``transformers.tokenization_utils_base``,
    ``transformers.models.auto.modeling_auto`` (every ``AutoModel*`` class) and the modules of
    :data:`AUTO_CLASSES` and :data:`PROCESSOR_READERS`."""
    short = module.__name__.rsplit(".", 1)[-1]
    if short == "modeling_utils":
        _patches.replace(module.PreTrainedModel, "from_pretrained", _wrap_from_pretrained)
        mixin = getattr(sys.modules.get("transformers.integrations.peft"), "PeftAdapterMixin", None)
        if mixin is not None and "load_adapter" in vars(mixin):
            _patches.replace(mixin, "load_adapter", wrap_transformers_load_adapter)
    elif short == "tokenization_utils_base":
        _patches.replace(module.PreTrainedTokenizerBase, "from_pretrained", _wrap_tokenizer_from_pretrained)
    elif short in AUTO_CLASSES and hasattr(module, AUTO_CLASSES[short]):
        _patches.replace(getattr(module, AUTO_CLASSES[short]), "from_pretrained", _wrap_auto_from_pretrained)
    elif short in PROCESSOR_READERS:
        owner, reader = PROCESSOR_READERS[short]
        cls = getattr(module, owner, None)
        if cls is not None and isinstance(vars(cls).get(reader), classmethod):
            _patches.replace(cls, reader, _wrap_processor_reader)
    elif short == "modeling_auto":
        base = getattr(module, "_BaseAutoModelClass", None)
        for value in list(vars(module).values()):
            if (isinstance(value, type) and base is not None and issubclass(value, base)
                    and isinstance(vars(value).get("from_pretrained"), classmethod)):
                _patches.replace(value, "from_pretrained", _wrap_auto_from_pretrained)


def unpatch() -> None:
    _patches.restore()


def loader_components(manifest: Any, subfolder: str = "", patterns: tuple[str, ...] = MODEL_FILE_PATTERNS
                      ) -> list[str] | None:
    """The manifest components holding the files transformers reads (None: none found)."""
    prefix = subfolder.strip("/") + "/" if subfolder and subfolder.strip("/") else ""
    found = []
    for entry in manifest.files:
        if not entry.path.startswith(prefix):
            continue
        name = entry.path[len(prefix):]
        if "/" in name:
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            found.append(entry.component)
    return sorted(set(found)) or None


def _subfolder(name: Any, resolved: Any, kwargs: dict) -> str:
    """The folder, relative to the model's root, that transformers reads from."""
    parts = []
    if resolved.directory is not None and os.path.isdir(name):
        rel = os.path.relpath(os.path.abspath(name), os.path.abspath(resolved.directory))
        if rel != "." and not rel.startswith(".."):
            parts.append(rel.replace(os.sep, "/"))
    if kwargs.get("subfolder"):
        parts.append(str(kwargs["subfolder"]).strip("/"))
    return "/".join(parts)


def _asked_revision(kwargs: dict) -> Any:
    """The revision the caller named (None: none). An auto class passes the default branch it
    resolved itself (huggingface_hub's ResolvedRevision, ``initial`` None): that names none."""
    asked = kwargs.get("revision")
    if getattr(asked, "initial", "") is None:
        asked = kwargs["revision"] = None
    return asked


def _pin_auto_revision(name: Any, kwargs: dict) -> None:
    """Before an auto class reads config.json: a Hub id loaded with no revision gets the pinned one."""
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name) or os.path.isdir(name):
        return
    if _asked_revision(kwargs) is not None:
        return
    resolved = guard.resolve_model(name, None, cache_dir=kwargs.get("cache_dir"))
    if resolved.manifest is not None and resolved.manifest.file("adapter_config.json") is not None:
        # A peft adapter: AutoModel loads the base model it names with the caller's revision, which
        # must not become the adapter's commit (the loaders' own hooks pin each repository).
        return
    if resolved.how in PINNED and resolved.revision:
        kwargs["revision"] = resolved.revision


def _check_files(cls: Any, name: Any, kwargs: dict, patterns: tuple[str, ...], what: str,
                 method: str = "from_pretrained") -> str:
    """Verify before loading; pin a Hub id to the verified revision. Returns the loader label.
    A tokenizer or processor whose files the manifest does not list is not checked."""
    label = loader_label(f"transformers {cls.__name__}.{method}")
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        return label
    asked = _asked_revision(kwargs)
    resolved = guard.resolve_model(name, asked, cache_dir=kwargs.get("cache_dir"))
    components = None
    if resolved.manifest is not None:
        components = loader_components(resolved.manifest, _subfolder(name, resolved, kwargs), patterns)
        if components is None and what != "model":
            return label  # the manifest lists no such files there: nothing to verify
    resolved = guard.check_before_load(
        name, components=components, revision=asked, loader=label, cache_dir=kwargs.get("cache_dir"),
        local_files_only=bool(kwargs.get("local_files_only")),
    )
    if asked is None and resolved.how in PINNED and resolved.revision and not os.path.isdir(name):
        kwargs["revision"] = resolved.revision  # load exactly the revision that was verified
    return label


def _wrap_from_pretrained(original: Any) -> Any:
    func = original.__func__  # a classmethod in every supported version

    @functools.wraps(func)
    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        with guard.verified_scope():
            label = _check_files(cls, name, kwargs, MODEL_FILE_PATTERNS, "model")
            want_info = bool(kwargs.pop("output_loading_info", False))
            model, info = func(cls, *args, output_loading_info=True, **kwargs)
            new_keys = set(info.get("missing_keys") or ())
            # (key, checkpoint shape, model shape) tuples in most releases, bare keys in 4.57
            new_keys.update(item if isinstance(item, str) else item[0]
                            for item in info.get("mismatched_keys") or ())
            if new_keys:
                new_keys = _model_names(model, new_keys)
                guard.refuse_random_init(new_keys, model=os.fspath(name) if name else cls.__name__, loader=label)
        return (model, info) if want_info else model

    return classmethod(from_pretrained)


def _wrap_auto_from_pretrained(original: Any) -> Any:
    func = original.__func__

    @functools.wraps(func)
    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        # a processor's auto class reads through its family's base class: messages name both
        named = outer_loader(f"transformers {cls.__name__}.from_pretrained") if cls.__name__ in _PROCESSOR_AUTO \
            else contextlib.nullcontext()
        with guard.verified_scope(), named:
            _pin_auto_revision(name, kwargs)
            return func(cls, *args, **kwargs)

    return classmethod(from_pretrained)


def _model_names(model: Any, keys: set[str]) -> set[str]:
    """Keys as the model names them: transformers 4.x reports a base model's missing keys
    with the checkpoint's prefix (``bert.pooler.dense.weight`` for ``pooler.dense.weight``)."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    if prefix == "." or not any(key.startswith(prefix) for key in keys):
        return keys
    own = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {key[len(prefix):] if key not in own and key[len(prefix):] in own else key for key in keys}


def _files_checked_first(patterns: tuple[str, ...], what: str) -> Any:
    """A wrapper for a classmethod that reads ``what``'s files of ``args[0]``: it verifies them first."""

    def wrap(original: Any) -> Any:
        func = original.__func__

        @functools.wraps(func)
        def read(cls: Any, *args: Any, **kwargs: Any) -> Any:
            name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            with guard.verified_scope():
                _check_files(cls, name, kwargs, patterns, what, func.__name__)
                return func(cls, *args, **kwargs)

        return classmethod(read)

    return wrap


_wrap_tokenizer_from_pretrained = _files_checked_first(TOKENIZER_FILE_PATTERNS, "tokenizer")
# get_feature_extractor_dict and the like: the one place a processor's config file is read
_wrap_processor_reader = _files_checked_first(PROCESSOR_FILE_PATTERNS, "processor")
