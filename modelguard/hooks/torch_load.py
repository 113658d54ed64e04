"""torch: inside a guarded loader, ``torch.load`` scans the file and uses ``weights_only=True``.

While a guarded loader (transformers, sentence-transformers, FlagEmbedding) builds a
model, every ``torch.load`` of a file path first scans the file
(:func:`modelguard.guard.scan_once`: a file the pre-load check already scanned in this load
is not scanned again; a pickle importing dangerous callables is refused
with :class:`~modelguard.errors.UnsafeFileError` before torch sees it) and then runs with
``weights_only=True``, torch's allowlisting unpickler, even where the caller passed
``weights_only=False`` or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set.

Every ``torch.load`` of a file path or of a file opened from one, inside a guarded loader or
called directly, first verifies the file against the expectation covering it (:mod:`modelguard.hooks.files`:
a manifest in its folder or a parent, a Hugging Face cache snapshot, a mapped folder);
a file no expectation covers follows the unknown-model policy. A file the enclosing
guarded load already verified is not checked again. In-memory data (``io.BytesIO``) has no
path: see :func:`modelguard.hooks.files.check_source`. Outside guarded loaders,
``weights_only`` is left as the caller set it.
"""

from __future__ import annotations

import functools
from typing import Any

from .. import guard
from .files import check_source
from . import Patches, version_tuple

DISTRIBUTION = "torch"
SUPPORTED = "torch >= 1.13 (torch.load with weights_only)"

_patches = Patches()


def supported(version: str) -> bool:
    return version_tuple(version) >= (1, 13)


def patch(module: Any) -> None:
    _patches.replace(module, "load", _wrap_load)


def unpatch() -> None:
    _patches.restore()


def _wrap_load(original: Any) -> Any:
    @functools.wraps(original)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if not guard.in_loader_scope():
            with guard.verified_scope():
                check_source(f, loader="torch.load", in_loader=False)
            return original(f, *args, **kwargs)
        path = check_source(f, loader="torch.load", in_loader=True)
        if path is not None:
            guard.scan_once(path).raise_if_unsafe()  # a file the pre-load check scanned is not scanned again
        kwargs["weights_only"] = True
        return original(f, *args, **kwargs)

    return load
