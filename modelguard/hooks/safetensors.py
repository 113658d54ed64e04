"""safetensors: direct reads of a ``.safetensors`` file verify it first.

``safetensors.safe_open``, ``safetensors.torch.load_file`` / ``load_model`` /
``safe_open`` and ``safetensors.numpy.load_file`` / ``safe_open`` check the file they
are given against the expectation covering it (:mod:`modelguard.hooks.files`) before
the library opens it. ``safetensors.torch.load(bytes)`` / ``safetensors.numpy.load(bytes)``
have no path: they follow the in-memory rule of :func:`modelguard.hooks.files.check_source`
(refused under the unknown-model policy ``refuse`` outside a guarded loader, else loaded
unverified with a once-per-process DEBUG note). A file already
verified by the enclosing guarded load (``from_pretrained``) is not checked again, and
``load_file`` (which opens the file with ``safe_open``) checks it once.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import guard
from . import Patches, version_tuple
from .files import check_source

DISTRIBUTION = "safetensors"
SUPPORTED = "safetensors >= 0.4"

# Per module: the functions that take a file path (or the file's bytes), and which argument holds it.
_TARGETS = {
    "safetensors": (("safe_open", 0, "filename"),),
    "safetensors.torch": (("load_file", 0, "filename"), ("safe_open", 0, "filename"), ("load_model", 1, "filename"),
                          ("load", 0, "data")),
    "safetensors.numpy": (("load_file", 0, "filename"), ("safe_open", 0, "filename"), ("load", 0, "data")),
}

_patches = Patches()


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and release >= (0, 4)


def patch(module: Any) -> None:
    for name, position, keyword in _TARGETS.get(module.__name__, ()):
        if hasattr(module, name):
            label = f"{module.__name__}.{name}"
            _patches.replace(module, name, functools.partial(_wrap, label=label, position=position, keyword=keyword))


def unpatch() -> None:
    _patches.restore()


def _wrap(original: Any, *, label: str, position: int, keyword: str) -> Any:
    @functools.wraps(original)
    def read(*args: Any, **kwargs: Any) -> Any:
        path = args[position] if len(args) > position else kwargs.get(keyword)
        inside = guard.in_loader_scope()
        with guard.verified_scope():
            check_source(path, loader=label, in_loader=inside)
            return original(*args, **kwargs)

    return read
