"""Compare two runs of a model's outputs: tensors, arrays, numbers, dicts, lists, strings.
Identical or not, and by how much; used by the seed-sensitivity probe (:mod:`modelguard.probing`)."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Number
from typing import Any, Mapping

from .dependencies import import_library


@dataclass(frozen=True)
class Comparison:
    """Two runs of one output: identical or not, and by how much (numbers only)."""

    identical: bool
    max_abs_diff: float | None = None
    max_abs_value: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"identical": self.identical, "max_abs_diff": self.max_abs_diff,
                "max_abs_value": self.max_abs_value, "detail": self.detail}

    def describe(self) -> str:
        if self.identical:
            return "identical"
        if self.max_abs_diff is not None:
            scale = f" (values up to {self.max_abs_value:.3g})" if self.max_abs_value else ""
            return f"differs: max abs diff {self.max_abs_diff:.3g}{scale}"
        return f"differs: {self.detail}" if self.detail else "differs"


def _to_array(value: Any) -> Any:
    """numpy array for tensors/arrays/number lists, else None."""
    np = import_library("numpy", "torch", needed_by="the probe")

    if type(value).__module__.startswith("torch"):
        value = value.detach().to("cpu")
        if value.dtype.is_floating_point or value.dtype.is_complex:
            value = value.double() if not value.dtype.is_complex else value
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    return None


class _Diff:
    def __init__(self, atol: float) -> None:
        self.atol = atol
        self.identical = True
        self.max_diff: float | None = None
        self.max_value: float | None = None
        self.details: list[str] = []

    def differ(self, where: str, why: str) -> None:
        self.identical = False
        if len(self.details) < 3:
            self.details.append(f"{where}: {why}" if where else why)

    def numbers(self, where: str, a: Any, b: Any) -> None:
        import numpy as np

        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            self.differ(where, f"shape {tuple(a.shape)} vs {tuple(b.shape)}")
            return
        if a.size == 0:
            return
        if a.dtype.kind in "biu" and b.dtype.kind in "biu":  # ids, counts: how many differ, not by how much
            n = int(np.count_nonzero(a != b))
            if n:
                self.differ(where, f"{n} of {a.size} value(s) differ")
        elif a.dtype.kind in "biufc" and b.dtype.kind in "biufc":
            fa, fb = a.astype(np.float64), b.astype(np.float64)
            both_nan = np.isnan(fa) & np.isnan(fb)
            delta = np.where(both_nan, 0.0, np.abs(fa - fb))
            diff = float(np.nanmax(np.where(np.isnan(delta), np.inf, delta)))
            finite = np.abs(fa[np.isfinite(fa)])
            value = float(finite.max()) if finite.size else 0.0
            self.max_value = value if self.max_value is None else max(self.max_value, value)
            if diff > self.atol:
                self.max_diff = diff if self.max_diff is None else max(self.max_diff, diff)
                n = int(np.count_nonzero(delta > self.atol))
                self.differ(where, f"{n} of {a.size} value(s) differ")
        elif not np.array_equal(a, b):
            self.differ(where, "values differ")

    def walk(self, where: str, a: Any, b: Any) -> None:
        arr_a, arr_b = _to_array(a), _to_array(b)
        if arr_a is not None or arr_b is not None:
            self.numbers(where, a if arr_a is None else arr_a, b if arr_b is None else arr_b)
        elif isinstance(a, Mapping) and isinstance(b, Mapping):
            keys = list(dict.fromkeys([*a.keys(), *b.keys()]))
            for key in keys:
                sub = f"{where}[{key!r}]"
                if key in a and key in b:
                    self.walk(sub, a[key], b[key])
                else:
                    present = a.get(key, b.get(key))
                    # Sparse outputs (token -> weight) drop zero weights: a missing key is a 0.
                    if is_number(present):
                        self.numbers(sub, a.get(key, 0.0), b.get(key, 0.0))
                    else:
                        self.differ(sub, "present in one run only")
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                self.differ(where, f"length {len(a)} vs {len(b)}")
                return
            if a and all(is_number(x) for x in a) and all(is_number(x) for x in b):
                self.numbers(where, list(a), list(b))
                return
            for i, (x, y) in enumerate(zip(a, b)):
                self.walk(f"{where}[{i}]", x, y)
        elif is_number(a) and is_number(b):
            self.numbers(where, a, b)
        elif a != b:
            self.differ(where, f"{_short(a)} vs {_short(b)}")


def is_number(x: Any) -> bool:
    return isinstance(x, Number) and not isinstance(x, bool)


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def compare_outputs(a: Any, b: Any, *, atol: float = 0.0) -> Comparison:
    """Compare two runs of one output (tensors, arrays, numbers, dicts, lists, strings)."""
    diff = _Diff(atol)
    diff.walk("", a, b)
    if diff.identical:
        return Comparison(True, 0.0 if diff.max_value is not None else None, diff.max_value)
    return Comparison(False, diff.max_diff, diff.max_value, "; ".join(diff.details))


def named_outputs(outputs: Any) -> dict[str, Any]:
    if isinstance(outputs, Mapping):
        return {str(k): v for k, v in outputs.items()}
    if isinstance(outputs, tuple) and not hasattr(outputs, "_fields"):
        return {f"output[{i}]": v for i, v in enumerate(outputs)}
    if hasattr(outputs, "_asdict"):
        return dict(outputs._asdict())
    return {"output": outputs}

