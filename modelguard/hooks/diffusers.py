"""diffusers: pipelines and models verify their files first and refuse new weights.

``DiffusionPipeline.from_pretrained`` verifies every file of the pipeline's manifest
(``model_index.json`` and the component subfolders ``unet/``, ``vae/``,
``text_encoder/``, ``scheduler/``...) before any component is built; a failure names
the component (subfolder) whose files are missing or broken. The components it then
loads (diffusers models, transformers models, schedulers) are not verified a second
time.

``ModelMixin.from_pretrained`` (``UNet2DModel``, ``AutoencoderKL``...) verifies the files
of the folder it loads (``subfolder`` included) against the manifest in that folder or a
parent folder. After the model is built, every weight the checkpoint did not hold
(``missing_keys``) or that was re-initialized for a shape mismatch raises
:class:`~modelguard.errors.RandomInitError`, unless :func:`modelguard.allow_random_init`
names it.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .. import guard
from ..errors import VerificationError
from . import Patches, version_tuple
from .transformers import loader_components
from .files import check_folder, mark_verified, verify_entries

DISTRIBUTION = "diffusers"
SUPPORTED = "diffusers >= 0.27"

_patches = Patches()


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and release >= (0, 27)


def patch(module: Any) -> None:
    """Called for ``diffusers.models.modeling_utils`` and ``diffusers.pipelines.pipeline_utils``."""
    if module.__name__.endswith(".modeling_utils"):
        _patches.replace(module.ModelMixin, "from_pretrained", _wrap_model_from_pretrained)
        legacy = getattr(module, "LegacyModelMixin", None)
        if legacy is not None and "from_pretrained" in vars(legacy):
            _patches.replace(legacy, "from_pretrained", _wrap_model_from_pretrained)
    elif module.__name__.endswith(".pipeline_utils"):
        _patches.replace(module.DiffusionPipeline, "from_pretrained", _wrap_pipeline_from_pretrained)


def unpatch() -> None:
    _patches.restore()


def name_components(error: Any) -> Any:
    """``error`` (a VerificationError) with a line naming the pipeline components (first
    folder of each failed file) whose files failed."""
    report = getattr(error, "report", None)
    if report is None:
        return error
    failed: dict[str, list[str]] = {}
    for result in report.failures:
        if "/" in result.path:
            failed.setdefault(result.path.split("/", 1)[0], []).append(f"{result.path}: {result.message}")
    if not failed:
        return error
    names = ", ".join(sorted(failed))
    detail = "; ".join(line for name in sorted(failed) for line in failed[name])
    first, _, rest = error.message.partition("\n")
    message = f"{first}\n  broken component(s): {names} ({detail})" + (f"\n{rest}" if rest else "")
    return VerificationError(message, report=report, path=error.path, expected=error.expected,
                             actual=error.actual, remedy=error.remedy)


def _wrap_pipeline_from_pretrained(original: Any) -> Any:
    func = original.__func__

    @functools.wraps(func)
    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        label = f"diffusers {cls.__name__}.from_pretrained"
        with guard.verified_scope():
            if isinstance(name, (str, os.PathLike)) and os.fspath(name):
                asked = kwargs.get("revision")
                try:
                    resolved = guard.check_before_load(
                        name, revision=asked, loader=label, cache_dir=kwargs.get("cache_dir"),
                        local_files_only=bool(kwargs.get("local_files_only")),
                    )
                    _require_component_files(resolved, label)
                except VerificationError as exc:
                    raise name_components(exc) from None
                if asked is None and resolved.how in ("hub-id", "lock") and resolved.revision:
                    kwargs["revision"] = resolved.revision  # load exactly the revision that was verified
                if resolved.directory is not None and os.path.isdir(resolved.directory):
                    mark_verified(resolved.directory, unknown=resolved.manifest is None)
            return func(cls, *args, **kwargs)

    return classmethod(from_pretrained)


def pipeline_components(directory: Any) -> list[str]:
    """The component subfolders ``model_index.json`` names (``unet``, ``scheduler``...)."""
    import json

    try:
        with open(os.path.join(directory, "model_index.json"), encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(index, dict):
        return []
    return sorted(name for name, value in index.items()
                  if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None)


def _require_component_files(resolved: Any, label: str) -> None:
    """A file of a component the pipeline loads is required, even where the manifest puts it in an
    optional component (``scheduler/scheduler_config.json`` in ``other``, say): verification
    reports such a file absent as skipped, so the missing ones are checked here."""
    manifest, root = resolved.manifest, resolved.directory
    if manifest is None or root is None:
        return
    used = set(pipeline_components(root))
    missing = [entry for entry in manifest.files
               if (entry.path == "model_index.json" or entry.path.split("/", 1)[0] in used)
               and not os.path.lexists(os.path.join(root, entry.path))]
    if missing:
        verify_entries(root, manifest, resolved.how, missing, label, guard.current_policy())


def _check_model_files(cls: Any, name: Any, kwargs: dict, label: str) -> None:
    if not isinstance(name, (str, os.PathLike)) or not os.fspath(name):
        return
    subfolder = str(kwargs.get("subfolder") or "").strip("/")
    if not os.path.isdir(name):
        # A Hub id: the manifest of the repository, limited to what the model reads.
        asked = kwargs.get("revision")
        resolved = guard.resolve_model(name, asked, cache_dir=kwargs.get("cache_dir"))
        components = loader_components(resolved.manifest, subfolder) if resolved.manifest is not None else None
        try:
            resolved = guard.check_before_load(
                name, components=components, revision=asked, loader=label, cache_dir=kwargs.get("cache_dir"),
                local_files_only=bool(kwargs.get("local_files_only")),
            )
        except VerificationError as exc:
            raise name_components(exc) from None
        if asked is None and resolved.how in ("hub-id", "lock") and resolved.revision:
            kwargs["revision"] = resolved.revision
        return
    folder = os.path.join(os.fspath(name), subfolder) if subfolder else os.fspath(name)
    try:
        check_folder(folder, loader=label)
    except VerificationError as exc:
        raise name_components(exc) from None


def _wrap_model_from_pretrained(original: Any) -> Any:
    func = original.__func__

    @functools.wraps(func)
    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        label = f"diffusers {cls.__name__}.from_pretrained"
        with guard.verified_scope():
            _check_model_files(cls, name, kwargs, label)
            want_info = bool(kwargs.pop("output_loading_info", False))
            result = func(cls, *args, output_loading_info=True, **kwargs)
            if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict):
                model, info = result
            else:  # a loading path that reports nothing (FlashPack): nothing to check
                return result
            new_keys = set(info.get("missing_keys") or ())
            new_keys.update(item[0] for item in info.get("mismatched_keys") or ())
            if new_keys:
                where = os.fspath(name) if name else cls.__name__
                if kwargs.get("subfolder"):
                    where = f"{where} (subfolder {kwargs['subfolder']})"
                guard.refuse_random_init(new_keys, model=where, loader=label)
        return (model, info) if want_info else model

    return classmethod(from_pretrained)
