"""The post-import hook: when the user's program imports a library in
:data:`modelguard.hooks.HOOKS`, its loaders are patched right after the library's own
import finishes; a library imported earlier is patched at once. modelguard never imports
those libraries itself. Cheap to import.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
import warnings

from .hooks import HOOKS
from .policy import UnsupportedLibraryWarning

# Kept off the import path (this module loads at program start with modelguard.auto).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_lock = threading.RLock()
_finder: "PostImportFinder | None" = None
_patched: dict[str, Any] = {}          # import name -> hook module that patched it
_refused: dict[str, str] = {}          # import name -> why it was not patched


def is_installed() -> bool:
    return _finder is not None


def patched_libraries() -> dict[str, str]:
    """Import name -> hook module for every library currently patched."""
    with _lock:
        return {name: hook.__name__ for name, hook in _patched.items()}


def install_finder() -> bool:
    """Put the finder on ``sys.meta_path`` and patch the libraries already imported.
    False (and nothing done) when it is there already."""
    global _finder
    with _lock:
        if _finder is not None:
            return False
        _finder = PostImportFinder()
        sys.meta_path.insert(0, _finder)
        for name in hook_table():
            if name in sys.modules:
                apply_hook(name)
        return True


def remove_finder() -> None:
    """Take the finder off ``sys.meta_path`` and restore every original function."""
    global _finder
    with _lock:
        if _finder is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(_finder)
            _finder = None
        for name, hook in list(_patched.items()):
            hook.unpatch()
            del _patched[name]
        _refused.clear()


def hook_table() -> dict[str, str]:
    return HOOKS


def library_version(import_name: str, hook: Any) -> str:
    """The installed version of the library ``import_name`` belongs to: its top-level module's
    ``__version__`` (read without scanning the installed distributions, which costs a few
    milliseconds per library on every guarded program start), else the distribution's metadata."""
    top = sys.modules.get(import_name.split(".")[0])
    version = getattr(top, "__version__", None)
    if isinstance(version, str) and version:
        return version
    from importlib import metadata

    distribution = getattr(hook, "DISTRIBUTION", import_name.split(".")[0])
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0"


def apply_hook(import_name: str) -> None:
    """Patch the already-imported module ``import_name`` with its hook (once)."""
    with _lock:
        if _finder is None or import_name in _patched or import_name in _refused:
            return
        module = sys.modules.get(import_name)
        if module is None:
            return
        hook = importlib.import_module(hook_table()[import_name])
        version = library_version(import_name, hook)
        if not hook.supported(version):
            _refused[import_name] = f"version {version} is not supported"
            warnings.warn(
                f"modelguard: {import_name} {version} is not a version the guard supports "
                f"({getattr(hook, 'SUPPORTED', 'see modelguard.hooks')}); its loaders are NOT guarded",
                UnsupportedLibraryWarning, stacklevel=3,
            )
            return
        try:
            hook.patch(module)
        except Exception as exc:  # a library whose internals moved: say so, never break its import
            with contextlib.suppress(Exception):
                hook.unpatch()
            _refused[import_name] = f"patching failed: {exc}"
            if isinstance(exc, ImportError):  # a part of the library the hook wraps cannot be imported: say why
                from .dependencies import describe_import_failure  # only when a hook cannot patch

                detail = describe_import_failure(import_name, exc)
            else:
                detail = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"modelguard: could not guard {import_name} {version} ({detail}); its loaders are NOT guarded",
                UnsupportedLibraryWarning, stacklevel=3,
            )
            return
        _patched[import_name] = hook


class LoaderProxy:
    """Runs the real loader, then patches the module it executed."""

    def __init__(self, loader: Any, spec: Any) -> None:
        self._loader = loader
        self._spec = spec

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: Any) -> None:
        try:
            self._loader.exec_module(module)
        finally:
            # Hide the proxy again: the module's spec and loader are the real ones.
            self._spec.loader = self._loader
            for candidate in (module, sys.modules.get(self._spec.name)):
                if candidate is not None and getattr(candidate, "__loader__", None) is self:
                    with contextlib.suppress(AttributeError, TypeError):
                        candidate.__loader__ = self._loader
        apply_hook(self._spec.name)


class PostImportFinder:
    """A meta path finder that finds nothing itself: it wraps the real loader of a hooked module."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in hook_table() or fullname in _patched:
            return None
        busy = getattr(self._busy, "names", None)
        if busy is None:
            busy = self._busy.names = set()
        if fullname in busy:
            return None
        busy.add(fullname)
        try:
            spec = None
            for finder in list(sys.meta_path):
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        finally:
            busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = LoaderProxy(spec.loader, spec)
        return spec
