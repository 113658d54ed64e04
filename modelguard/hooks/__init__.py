"""One module per third-party loader the guard wraps.

``HOOKS`` maps the import name whose import triggers patching to the hook module.
A hook module defines:

- ``supported(version: str) -> bool``: whether the installed library version is one
  the hook knows (checked before patching; unsupported -> a warning, no patch);
- ``patch(module) -> None``: wrap the loader functions (``functools.wraps`` plus the
  :data:`MARKER` attribute), keeping the originals;
- ``unpatch() -> None``: put the originals back exactly;
- optionally ``DISTRIBUTION`` (the distribution name whose version is checked,
  default: the top-level import name) and ``SUPPORTED`` (text for the warning).

A hook imports its library only inside ``patch``, which runs once the user's program
has imported it. :class:`Patches` does the bookkeeping for ``patch``/``unpatch``.
"""

from __future__ import annotations

import contextlib
import contextvars

from ..version import version_tuple

__all__ = ["HOOKS", "MARKER", "Patches", "is_wrapped", "loader_label", "outer_loader", "version_tuple"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterator

HOOKS: dict[str, str] = {
    # A dotted name patches when that submodule is imported, so ``import transformers``
    # alone (tokenizers only) does not pull in torch because of modelguard.
    "transformers.modeling_utils": "modelguard.hooks.transformers",
    "transformers.tokenization_utils_base": "modelguard.hooks.transformers",
    "transformers.dynamic_module_utils": "modelguard.hooks.remote_code",
    # The auto classes read config.json before the loader: they get the pinned revision first.
    "transformers.models.auto.modeling_auto": "modelguard.hooks.transformers",
    "transformers.models.auto.configuration_auto": "modelguard.hooks.transformers",
    "transformers.models.auto.tokenization_auto": "modelguard.hooks.transformers",
    "transformers.models.auto.feature_extraction_auto": "modelguard.hooks.transformers",
    "transformers.models.auto.image_processing_auto": "modelguard.hooks.transformers",
    "transformers.models.auto.video_processing_auto": "modelguard.hooks.transformers",
    "transformers.models.auto.processing_auto": "modelguard.hooks.transformers",
    # Feature extractors, image, video and multimodal processors read their config files here.
    "transformers.feature_extraction_utils": "modelguard.hooks.transformers",
    "transformers.image_processing_base": "modelguard.hooks.transformers",
    "transformers.image_processing_utils": "modelguard.hooks.transformers",
    "transformers.video_processing_utils": "modelguard.hooks.transformers",
    "transformers.processing_utils": "modelguard.hooks.transformers",
    "sentence_transformers": "modelguard.hooks.sentence_transformers",
    "FlagEmbedding": "modelguard.hooks.flagembedding",
    "torch": "modelguard.hooks.torch_load",
    # Direct reads of weight files (each file is verified against the manifest covering it).
    "safetensors": "modelguard.hooks.safetensors",
    "safetensors.torch": "modelguard.hooks.safetensors",
    "safetensors.numpy": "modelguard.hooks.safetensors",
    "onnxruntime": "modelguard.hooks.onnxruntime",
    # diffusers imports its submodules lazily: patch each when it is first imported.
    "diffusers.models.modeling_utils": "modelguard.hooks.diffusers",
    "diffusers.pipelines.pipeline_utils": "modelguard.hooks.diffusers",
    "peft.peft_model": "modelguard.hooks.peft",
}

MARKER = "__modelguard_wrapped__"


class Patches:
    """Replaced attributes of one hook, restorable exactly (``is``-identical originals)."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def replace(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        """Set ``owner.name`` to ``make(original)``; the raw class-dict value is kept for restore.

        ``make`` receives the attribute as stored in ``owner.__dict__`` when it is there
        (so a ``classmethod`` object arrives as such), else as ``getattr`` returns it.
        """
        raw = owner.__dict__.get(name) if hasattr(owner, "__dict__") and name in vars(owner) else None
        original = raw if raw is not None else getattr(owner, name)
        if getattr(_function_of(original), MARKER, False):
            return
        replacement = make(original)
        fn = _function_of(replacement)
        setattr(fn, MARKER, True)
        self._saved.append((owner, name, raw))
        setattr(owner, name, replacement)

    def restore(self) -> None:
        while self._saved:
            owner, name, raw = self._saved.pop()
            if raw is None:
                try:
                    delattr(owner, name)
                except AttributeError:
                    pass
            else:
                setattr(owner, name, raw)

    def __bool__(self) -> bool:
        return bool(self._saved)


def _function_of(value: Any) -> Any:
    return getattr(value, "__func__", value)


def is_wrapped(value: Any) -> bool:
    """Whether ``value`` (a function, method or classmethod) is a modelguard wrapper."""
    return bool(getattr(_function_of(value), MARKER, False))


# The guarded loader the user called (``FlagEmbedding FlagReranker``), while it runs: the
# loaders nested in it (transformers' from_pretrained) name it in their messages.
_outer: contextvars.ContextVar[str | None] = contextvars.ContextVar("modelguard_outer_loader", default=None)


@contextlib.contextmanager
def outer_loader(label: str) -> Iterator[None]:
    """Within this block, :func:`loader_label` names ``label`` (the outermost one wins)."""
    token = _outer.set(_outer.get() or label)
    try:
        yield
    finally:
        _outer.reset(token)


def loader_label(label: str) -> str:
    """``label`` as a message names it: with the loader the user called, when another one runs it
    (``FlagEmbedding FlagReranker, via transformers BertForSequenceClassification.from_pretrained``)."""
    outer = _outer.get()
    return label if outer is None or outer == label else f"{outer}, via {label}"
