"""peft: adapters verify their files first and must cover every module they target.

``PeftModel.from_pretrained`` and ``PeftModel.load_adapter`` verify the adapter's files
(``adapter_config.json``, ``adapter_model.safetensors``...) against the manifest in the
adapter folder or a parent folder, or the Hub id's manifest, before peft reads the
config. After the weights are loaded, every adapter weight the checkpoint did not hold
(peft's ``missing_keys`` for that adapter: a targeted module whose LoRA matrices stay at
their initialization) raises :class:`~modelguard.errors.RandomInitError`, unless
:func:`modelguard.allow_random_init` names it.

transformers' own ``model.load_adapter(path)`` (``PeftAdapterMixin``, patched by the
transformers hook with :func:`wrap_transformers_load_adapter`) does the same: the adapter
files are verified before transformers reads the config, and adapter weights the
checkpoint lacks (``missing_keys`` of the load report transformers 5 returns) are refused.
An adapter given as ``adapter_state_dict`` (in memory) has no files to verify.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

from .. import guard
from . import Patches, loader_label, version_tuple
from .files import check_folder

DISTRIBUTION = "peft"
SUPPORTED = "peft >= 0.10"

# Shared parameters peft itself leaves out of a checkpoint on purpose (see
# PeftModel.from_pretrained): never reported as missing.
_SHARED = ("vblora_vector_bank", "prompt_encoder", ".tinylora_v.")

_patches = Patches()


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and release >= (0, 10)


def patch(module: Any) -> None:
    _patches.replace(module.PeftModel, "from_pretrained", _wrap_from_pretrained)
    _patches.replace(module.PeftModel, "load_adapter", _wrap_load_adapter)


def unpatch() -> None:
    _patches.restore()


def _check_adapter(model_id: Any, kwargs: dict, label: str) -> None:
    if not isinstance(model_id, (str, os.PathLike)) or not os.fspath(model_id):
        return
    subfolder = str(kwargs.get("subfolder") or "").strip("/")
    if not os.path.isdir(model_id):
        asked = kwargs.get("revision")
        resolved = guard.check_before_load(model_id, revision=asked, loader=label, cache_dir=kwargs.get("cache_dir"),
                                           local_files_only=bool(kwargs.get("local_files_only")))
        if asked is None and resolved.how in ("hub-id", "lock") and resolved.revision:
            kwargs["revision"] = resolved.revision  # load exactly the revision that was verified
        return
    check_folder(os.path.join(os.fspath(model_id), subfolder) if subfolder else os.fspath(model_id), loader=label)


def _verified_revision(model_id: Any, given: dict, label: str) -> str | None:
    """Verify the adapter (:func:`_check_adapter`) with the caller's ``given`` options; the
    revision the guard pinned when the caller named none, for the loader to load exactly the
    revision that was verified (None: pass the caller's options unchanged)."""
    checked = dict(given)
    _check_adapter(model_id, checked, label)
    return checked["revision"] if "revision" in checked and "revision" not in given else None


def _refuse_missing_adapter_weights(result: Any, model_id: Any, adapter_name: Any, label: str) -> None:
    """RandomInitError for the adapter weights a ``load_adapter`` result reports missing (weights
    shared with the base model excepted), unless allowed by name."""
    missing = [key for key in getattr(result, "missing_keys", None) or ()
               if not any(shared in key for shared in _SHARED)]
    if missing and model_id is not None:
        guard.refuse_random_init(missing, model=f"{os.fspath(model_id)} (adapter {adapter_name!r})", loader=label)


def _wrap_from_pretrained(original: Any) -> Any:
    func = original.__func__
    signature = inspect.signature(func)

    @functools.wraps(func)
    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(cls, *args, **kwargs)
        except TypeError:
            return func(cls, *args, **kwargs)  # let peft report its own usage error
        model_id = bound.arguments.get("model_id")
        with guard.verified_scope():
            revision = _verified_revision(model_id, dict(bound.arguments.get("kwargs") or {}),
                                          loader_label(f"peft {cls.__name__}.from_pretrained"))
            if revision is not None:
                kwargs["revision"] = revision
            return func(cls, *args, **kwargs)

    return classmethod(from_pretrained)


def _wrap_load_adapter(original: Any) -> Any:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def load_adapter(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return original(self, *args, **kwargs)
        model_id = bound.arguments.get("model_id")
        adapter_name = bound.arguments.get("adapter_name")
        label = loader_label(f"peft {type(self).__name__}.load_adapter")
        with guard.verified_scope():
            revision = _verified_revision(model_id, dict(bound.arguments.get("kwargs") or {}), label)
            if revision is not None:
                kwargs["revision"] = revision
            result = original(self, *args, **kwargs)
            _refuse_missing_adapter_weights(result, model_id, adapter_name, label)
        return result

    return load_adapter


def wrap_transformers_load_adapter(original: Any) -> Any:
    """The wrapper of transformers' ``PeftAdapterMixin.load_adapter`` (see the module docstring)."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def load_adapter(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return original(self, *args, **kwargs)  # let transformers report its own usage error
        model_id = bound.arguments.get("peft_model_id")
        adapter_name = bound.arguments.get("adapter_name") or "default"
        extra = {**dict(bound.arguments.get("kwargs") or {}), **dict(bound.arguments.get("adapter_kwargs") or {})}
        if bound.arguments.get("local_files_only"):
            extra["local_files_only"] = True
        label = loader_label(f"transformers {type(self).__name__}.load_adapter")
        with guard.verified_scope():
            revision = _verified_revision(model_id, extra, label)
            if revision is not None:
                bound.arguments["adapter_kwargs"] = {**dict(bound.arguments.get("adapter_kwargs") or {}),
                                                     "revision": revision}
            result = original(*bound.args, **bound.kwargs)
            _refuse_missing_adapter_weights(result, model_id, adapter_name, label)
        return result

    return load_adapter
