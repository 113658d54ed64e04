"""transformers remote code (``trust_remote_code=True``): a model's own ``.py`` files run
only when the manifest lists them and the copies about to be executed verify.

transformers copies (local folder) or downloads (Hub) a model's module file and the
files it imports relatively into its modules cache (``HF_MODULES_CACHE``), then executes
that copy. The hook wraps ``transformers.dynamic_module_utils.get_cached_module_file``:
after the copy is made and before anything is executed, every file of the module is
compared with the manifest (size and digest). A file the manifest does not list, a model
with no manifest, or a file whose bytes differ is refused with
:class:`~modelguard.errors.UnsafeFileError` whatever the failure policy: code is never
run on a warning. Only ``MODELGUARD_UNKNOWN=allow`` (no manifest at all) lets remote
code of an unknown model run.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from .. import guard
from ..errors import UnsafeFileError
from ..hashing import hash_file
from . import Patches, version_tuple

DISTRIBUTION = "transformers"
SUPPORTED = "transformers >= 4.40"

_patches = Patches()
_module: Any = None


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and release >= (4, 40)


def patch(module: Any) -> None:
    """Called for ``transformers.dynamic_module_utils``."""
    global _module
    _module = module
    _patches.replace(module, "get_cached_module_file", _wrap_get_cached_module_file)


def unpatch() -> None:
    _patches.restore()


def _wrap_get_cached_module_file(original: Any) -> Any:
    @functools.wraps(original)
    def get_cached_module_file(pretrained_model_name_or_path: Any, module_file: str, *args: Any, **kwargs: Any) -> str:
        name = os.fspath(pretrained_model_name_or_path)
        revision = kwargs.get("revision")
        revision = revision if isinstance(revision, str) else None
        resolved = guard.resolve_model(name, revision, cache_dir=kwargs.get("cache_dir"))
        if resolved.manifest is None:
            if guard.current_policy().effective_unknown() == "allow":
                return original(pretrained_model_name_or_path, module_file, *args, **kwargs)
            raise _refusal(name, module_file, "no manifest is known for this model, so its code cannot be checked",
                           remedy=f"review the model's code, then pin it: modelguard build {_quote(name)} "
                                  f"--model ORG/NAME -o {_quote(os.path.join(name, 'modelguard.yaml'))} (or MODELGUARD_UNKNOWN=allow to run "
                                  "unverified code)")
        if resolved.manifest.file(module_file) is None:
            raise _refusal(name, module_file, f"{module_file} is not listed in the manifest ({resolved.manifest.source})",
                           remedy="add the reviewed .py files to the manifest (modelguard build writes them)")
        relative = original(pretrained_model_name_or_path, module_file, *args, **kwargs)
        _verify_module_copy(name, module_file, relative, resolved.manifest)
        return relative

    return get_cached_module_file


def _verify_module_copy(name: str, module_file: str, relative: str, manifest: Any) -> None:
    """Compare the module copy transformers will execute (and its relative imports) with the manifest."""
    modules_root = Path(getattr(_module, "HF_MODULES_CACHE"))
    copy = modules_root / relative
    root = copy.parents[len(Path(module_file).parts) - 1]
    files = [copy] + sorted(Path(p) for p in _module.get_relative_import_files(str(copy)))
    for path in files:
        rel = path.relative_to(root).as_posix()
        entry = manifest.file(rel)
        if entry is None:
            raise _refusal(name, rel, f"{module_file} imports {rel}, which the manifest does not list",
                           remedy="add the reviewed .py files to the manifest (modelguard build writes them)")
        algorithm, expected = entry.strongest_digest
        size = path.stat().st_size
        actual = hash_file(path, (algorithm,))[algorithm]
        if size != entry.size or actual != expected:
            raise _refusal(
                name, rel, f"{rel} differs from the manifest ({manifest.source}): it is not the reviewed code",
                expected=f"size {entry.size}, {algorithm} {expected}", actual=f"size {size}, {algorithm} {actual}",
                remedy=f"restore {rel} from the pinned revision, or review the change and rebuild the manifest",
            )


def _refusal(name: str, module_file: str, why: str, **kwargs: Any) -> Exception:
    return UnsafeFileError(f"refusing to run remote code {module_file} of {name}: {why}",
                           path=os.path.join(name, module_file) if os.path.isdir(name) else module_file, **kwargs)


def _quote(text: str) -> str:
    from shlex import quote

    return quote(text)
