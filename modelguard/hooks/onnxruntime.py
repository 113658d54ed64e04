"""onnxruntime: ``InferenceSession(path)`` verifies the model and its external data first.

Before the session is created, the ``.onnx`` file is verified against the expectation
covering it (:mod:`modelguard.hooks.files`); then its graph is read without the
weights (``onnx.load(..., load_external_data=False)``) to list the external data files
its tensors reference (``model.onnx_data`` and the like), and those are verified too,
all before onnxruntime reads a byte. Without the ``onnx`` package the external files
cannot be listed, so every file the manifest lists in the model's folder is verified
instead. A model passed as bytes has no path: it follows the in-memory rule of
:func:`modelguard.hooks.files.check_source` (refused under the unknown-model policy
``refuse``, else loaded unverified).
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .. import guard
from . import Patches, version_tuple
from .files import check_files, check_source, covering, file_path

DISTRIBUTION = "onnxruntime"
SUPPORTED = "onnxruntime >= 1.16"
LOADER = "onnxruntime.InferenceSession"

_patches = Patches()


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and release >= (1, 16)


def patch(module: Any) -> None:
    _patches.replace(module.InferenceSession, "__init__", _wrap_init)


def unpatch() -> None:
    _patches.restore()


def external_data_files(model_path: str) -> list[str] | None:
    """The external data files ``model_path`` references (absolute paths, in order), or None
    when the onnx package is not installed. A graph that cannot be parsed lists none: the
    runtime then reports its own error."""
    try:
        import onnx
        from onnx import external_data_helper as helper
    except ImportError:
        return None
    try:
        model = onnx.load(model_path, load_external_data=False)
    except Exception:  # noqa: BLE001  not a model onnx can parse: onnxruntime says why
        return []
    folder = os.path.dirname(model_path)
    found: list[str] = []
    for tensor in helper._get_all_tensors(model):
        if not helper.uses_external_data(tensor):
            continue
        location = helper.ExternalDataInfo(tensor).location
        if location:
            path = os.path.normpath(os.path.join(folder, location))
            if path not in found:
                found.append(path)
    return found


def _folder_files(model_path: str) -> list[str]:
    """Without onnx: every file the covering manifest lists in the model's folder."""
    found = covering(model_path)
    if found is None:
        return []
    root, manifest, _, entry = found
    prefix = entry.path.rsplit("/", 1)[0] + "/" if "/" in entry.path else ""
    return [os.path.join(root, e.path) for e in manifest.files
            if e.path.startswith(prefix) and "/" not in e.path[len(prefix):]]


def _wrap_init(original: Any) -> Any:
    @functools.wraps(original)
    def __init__(self: Any, path_or_bytes: Any, *args: Any, **kwargs: Any) -> None:
        path = file_path(path_or_bytes)
        if path is None:
            inside = guard.in_loader_scope()
            with guard.verified_scope():
                check_source(path_or_bytes, loader=LOADER, in_loader=inside)
            return original(self, path_or_bytes, *args, **kwargs)
        with guard.verified_scope():
            check_files((path,), loader=LOADER)
            if os.path.isfile(path):
                external = external_data_files(path)
                if external is None:
                    external = _folder_files(path)
                check_files(external, loader=LOADER)
            return original(self, path_or_bytes, *args, **kwargs)

    return __init__
