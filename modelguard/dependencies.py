"""Why a library cannot be imported: absent, or installed but broken (and by which neighbour).

One place for the message the probe, the pickle scanner and the guard give when an import
fails. ``pip install 'modelguard[extra]'`` is suggested only when the library's distribution
is truly absent; when it is installed, the message names the import error, the installed
versions of the library and its key neighbours, the likely cause and a combination that works.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NamedTuple

from .errors import UsageError
from .version import version_tuple

# import name -> distribution name, where they differ in more than case
_DISTRIBUTIONS = {"sentence_transformers": "sentence-transformers", "huggingface_hub": "huggingface_hub"}
# distribution -> the libraries it is most often broken by
_NEIGHBOURS = {
    "FlagEmbedding": ("transformers", "sentence-transformers", "torch"),
    "sentence-transformers": ("transformers", "huggingface_hub", "torch"),
    "transformers": ("huggingface_hub", "tokenizers", "safetensors", "torch"),
    "torch": ("numpy",),
}


class KnownBreak(NamedTuple):
    """``library`` imports ``missing``, which ``neighbour`` removed in ``removed_in``; ``working`` restores it."""

    library: str
    missing: str
    neighbour: str
    removed_in: str
    working: str


# Measured breaks; each entry can go once the library's releases no longer need the name.
KNOWN_BREAKS = (
    KnownBreak("FlagEmbedding", "transformers.modeling_attn_mask_utils", "transformers", "5.24.0", "transformers<5.24"),
)


def import_library(module: str, extra: str | None = None, *, needed_by: str = "modelguard") -> ModuleType:
    """Import ``module`` or raise the :class:`UsageError` of :func:`import_failure`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise import_failure(module, exc, extra, needed_by=needed_by) from None


def import_failure(module: str, exc: ImportError, extra: str | None = None, *,
                   needed_by: str = "modelguard") -> UsageError:
    """The error to show for ``exc``, raised while importing ``module`` (never raised here).

    ``extra``: the modelguard extra that installs the library (None: the library itself).
    """
    top = module.split(".")[0]
    dist = distribution_of(top)
    version = installed_version(dist)
    error = f"{type(exc).__name__}: {exc}"
    missing = getattr(exc, "name", None) or ""
    if version is None and (missing == top or module.startswith(missing + ".") or missing == module):
        return UsageError(
            f"{needed_by} needs {module}, which is not installed ({error})",
            expected=f"{dist} installed", actual="not installed",
            remedy=f"pip install 'modelguard[{extra}]'" if extra else f"pip install '{dist}'",
        )
    shown = f"{dist} {version}" if version else dist
    cause, fix = _likely_cause(top, dist, version, exc)
    return UsageError(
        f"{needed_by} needs {module}: {shown} is installed but cannot be imported: {error}\n"
        f"  cause:    {cause}",
        expected=f"{module} importable", actual=f"installed: {_versions(dist)}", remedy=fix,
    )


def describe_import_failure(library: str, exc: ImportError) -> str:
    """One line for a warning about a part of ``library`` that failed to import: the error,
    the likely cause, the installed versions and the fix."""
    top = library.split(".")[0]
    dist = distribution_of(top)
    cause, fix = _likely_cause(top, dist, installed_version(dist), exc)
    return f"{type(exc).__name__}: {exc}; cause: {cause}; installed: {_versions(dist)}; fix: {fix}"


def _versions(dist: str) -> str:
    return ", ".join(f"{d} {installed_version(d) or 'not installed'}" for d in (dist, *_NEIGHBOURS.get(dist, ())))


def distribution_of(top: str) -> str:
    """The distribution that provides the top-level import name ``top`` (best effort)."""
    if top in _DISTRIBUTIONS:
        return _DISTRIBUTIONS[top]
    from importlib import metadata

    try:
        return metadata.packages_distributions().get(top, [top])[0]
    except Exception:  # noqa: BLE001 - unreadable metadata: the import name is the best guess
        return top


def installed_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a broken dist-info reads as absent
        return None


def _likely_cause(top: str, dist: str, version: str | None, exc: ImportError) -> tuple[str, str]:
    shown = f"{dist} {version}" if version else dist
    missing = getattr(exc, "name", None) or ""
    culprit_top = missing.split(".")[0]
    if culprit_top and culprit_top != top:
        culprit = distribution_of(culprit_top)
        have = installed_version(culprit)
        if have is None:
            return (f"{shown} imports {missing}, and {culprit} is not installed",
                    f"pip install '{culprit}'" + (f" (the range {shown} declares: "
                                                  f"{_declared(dist, culprit)})" if _declared(dist, culprit) else ""))
        for known in KNOWN_BREAKS:
            if known.library == dist and known.neighbour == culprit and (missing == known.missing or
                                                                         missing.startswith(known.missing + ".")) \
                    and _at_least(have, known.removed_in):
                return (f"the installed {culprit} {have} is too new for the installed {shown}: {shown} imports "
                        f"{known.missing}, which {culprit} {known.removed_in} removed",
                        f"pip install '{known.working}' (the combination that imports: {shown} with {known.working})")
        declared = _declared(dist, culprit)
        if declared and _satisfies(have, declared) is False:
            return (f"the installed {culprit} {have} is outside the range {shown} declares ({culprit}{declared})",
                    f"pip install '{culprit}{declared}'")
        return (f"{shown} imports {missing}, which the installed {culprit} {have} does not have: {culprit} {have} is "
                f"likely too new (the name was removed) or too old (not added yet) for {shown}",
                f"install a {culprit} release {shown} was made with, e.g. pip install '{culprit}<{have}', "
                f"or a {dist} release that supports {culprit} {have}: pip install -U '{dist}'")
    shadow = _shadowing(top, dist)
    if shadow is not None:
        origin, location = shadow
        return (f"the {top} that Python finds is {origin}, not the installed {shown} in {location}: "
                "a file or folder of that name shadows it",
                f"rename or remove {origin}, or take its folder off PYTHONPATH/sys.path")
    return (f"a broken or partial install of {shown}",
            f"pip install --force-reinstall '{dist}=={version}'" if version else f"pip install --force-reinstall '{dist}'")


def _declared(dist: str, neighbour: str) -> str | None:
    """The version range ``dist`` declares for ``neighbour`` (e.g. ``>=4.44.2,<6``), if any."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name

        for line in metadata.requires(dist) or ():
            req = Requirement(line)
            if canonicalize_name(req.name) == canonicalize_name(neighbour) and req.marker is None:
                return str(req.specifier) or None
    except Exception:  # noqa: BLE001 - no packaging, or metadata it cannot parse: no range to report
        return None
    return None


def _satisfies(version: str, specifier: str) -> bool | None:
    try:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(specifier).contains(version, prereleases=True)
    except Exception:  # noqa: BLE001
        return None


def _at_least(version: str, floor: str) -> bool:
    return version_tuple(version) >= version_tuple(floor)


def _shadowing(top: str, dist: str) -> tuple[str, str] | None:
    """``(what Python imports, where the distribution lives)`` when they differ."""
    import importlib.util
    from importlib import metadata

    try:
        spec = importlib.util.find_spec(top)
        location = os.path.realpath(str(metadata.distribution(dist).locate_file("")))
    except Exception:  # noqa: BLE001 - nothing to compare
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    origin = os.path.realpath(spec.origin)
    if os.path.commonpath([origin, location]) == location:
        return None
    shown = os.path.dirname(origin) if os.path.basename(origin) == "__init__.py" else origin
    return shown, location
