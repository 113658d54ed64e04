"""The one way to let a model keep randomly initialized weights: :func:`allow_random_init`
(or ``MODELGUARD_ALLOW_RANDOM_INIT``), naming the components or key patterns that may be new.
Hooks call :func:`refuse_random_init` with the weights a loader left new."""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import os
from collections import namedtuple

from .errors import RandomInitError, UsageError

# Kept off the import path (this module loads at program start with modelguard.auto).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Iterator

ENV_ALLOW_RANDOM_INIT = "MODELGUARD_ALLOW_RANDOM_INIT"


class _Allowance(namedtuple("_Allowance", "components keys", defaults=(frozenset(), ()))):
    __slots__ = ()


_allowance: contextvars.ContextVar[_Allowance] = contextvars.ContextVar("modelguard_allow", default=_Allowance())


@contextlib.contextmanager
def allow_random_init(*components: str, keys: str | Iterable[str] | None = None) -> Iterator[None]:
    """Within this block, the named components / weights matching ``keys`` may be randomly initialized.

    ``allow_random_init("colbert", "sparse")`` lets FlagEmbedding build those heads
    fresh (training them); ``allow_random_init(keys="classifier.*")`` lets a new
    classification head be created. Name at least one; nothing else lifts the refusal.
    """
    key_list = (keys,) if isinstance(keys, str) else tuple(keys or ())
    for item in (*components, *key_list):
        if not isinstance(item, str) or not item.strip():
            raise UsageError("allow_random_init takes component names and key patterns as non-empty strings",
                             actual=repr(item))
    if not components and not key_list:
        raise UsageError(
            "allow_random_init() needs at least one component or key pattern",
            expected='allow_random_init("colbert", "sparse") or allow_random_init(keys="classifier.*")',
            actual="nothing named",
            remedy="name exactly what may be randomly initialized; the opt-out is narrow on purpose",
        )
    current = _allowance.get()
    token = _allowance.set(_Allowance(
        current.components | frozenset(components), current.keys + tuple(k.strip() for k in key_list),
    ))
    try:
        yield
    finally:
        _allowance.reset(token)


def _env_allowance() -> _Allowance:
    raw = os.environ.get(ENV_ALLOW_RANDOM_INIT, "")
    components: set[str] = set()
    keys: list[str] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("keys="):
            pattern = item[len("keys="):].strip()
            if pattern:
                keys.append(pattern)
        else:
            components.add(item)
    return _Allowance(frozenset(components), tuple(keys))


def random_init_allowed(component: str | None = None, key: str | None = None) -> bool:
    """Whether ``component`` (or the weight named ``key``) may be randomly initialized here."""
    for allowance in (_allowance.get(), _env_allowance()):
        if component is not None and component in allowance.components:
            return True
        if key is not None and any(fnmatch.fnmatchcase(key, pattern) for pattern in allowance.keys):
            return True
    return False


def refuse_random_init(keys: Iterable[str], *, model: str, loader: str, component: str | None = None) -> None:
    """Raise :class:`RandomInitError` for the ``keys`` not covered by :func:`allow_random_init`."""
    new = sorted(k for k in keys if not random_init_allowed(component=component, key=k))
    if not new:
        return
    patterns = _suggest_patterns(new)
    shown = ", ".join(new[:12]) + (f" ... ({len(new)} in all)" if len(new) > 12 else "")
    raise RandomInitError(
        f"modelguard refused to load {model} ({loader}): {len(new)} weight(s) were not in the checkpoint "
        f"and would be randomly initialized: {shown}",
        keys=new,
        path=model,
        expected="every weight loaded from the checkpoint",
        actual=f"{len(new)} newly initialized: " + ", ".join(patterns),
        remedy=("if the checkpoint is incomplete, re-download it (modelguard verify / fetch); if new weights are "
                f"intended (fine-tuning a new head), load inside `with modelguard.allow_random_init(keys="
                f"{patterns[0]!r}):` or set {ENV_ALLOW_RANDOM_INIT}=" + ",".join(f"keys={p}" for p in patterns)),
    )


def _suggest_patterns(keys: list[str]) -> list[str]:
    """Short globs covering ``keys``: ``classifier.weight``, ``classifier.bias`` -> ``classifier.*``."""
    patterns: list[str] = []
    for key in keys:
        pattern = key.rsplit(".", 1)[0] + ".*" if "." in key else key
        if pattern not in patterns:
            patterns.append(pattern)
    return patterns
