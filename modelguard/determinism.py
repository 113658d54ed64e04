"""Seeds and deterministic mode: one call seeds every random number generator a
model run uses, one context manager makes a block repeatable and then puts the
process back exactly as it was.

torch, numpy and transformers are imported inside the functions, and only when
they are installed (transformers only when the program has already imported it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

from .errors import UsageError

# cuBLAS needs a fixed workspace for repeatable results on CUDA >= 10.2; torch
# raises for cuBLAS ops in deterministic mode without it.
CUBLAS_WORKSPACE_CONFIG = ":4096:8"
_ENV_VARS = ("PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG")
# The interpreter reads PYTHONHASHSEED once, at start; later changes reach child processes only.
_HASHSEED_AT_START = os.environ.get("PYTHONHASHSEED")


@dataclass(frozen=True)
class SeedReport:
    """What :func:`seed_everything` seeded (``python``, ``numpy``, ``torch``,
    ``cuda``, ``transformers``) and notes on what it cannot fix."""

    seed: int
    seeded: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "seeded": list(self.seeded), "notes": list(self.notes)}


def _installed(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an int, got {type(seed).__name__} {seed!r}",
                         expected="an integer in [0, 2**32 - 1]", actual=repr(seed),
                         remedy="pass an int, e.g. seed_everything(0)")
    if not 0 <= seed < 2**32:
        raise UsageError(f"seed {seed} is out of range", expected="an integer in [0, 2**32 - 1]",
                         actual=seed, remedy="numpy accepts only 32-bit seeds: use seed % 2**32")
    return seed


def seed_everything(seed: int) -> SeedReport:
    """Seed python's ``random``, numpy's global generator, torch (CPU and every
    CUDA device) and, when the program has imported it, ``transformers.set_seed``
    (which also covers accelerators such as NPU/XPU).

    ``PYTHONHASHSEED`` is set for child processes; the running interpreter's
    string hashing (set iteration order) is fixed only when the variable is set
    before Python starts — the returned notes say so when it was not.
    """
    seed = check_seed(seed)
    seeded: list[str] = []
    notes: list[str] = []
    random.seed(seed)
    seeded.append("python")
    if _installed("numpy"):
        import numpy

        numpy.random.seed(seed)
        seeded.append("numpy")
    if _installed("torch"):
        import torch

        torch.manual_seed(seed)  # seeds the CPU generator and every CUDA device
        seeded.append("torch")
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
            seeded.append("cuda")
    if "transformers" in sys.modules:
        try:
            from transformers import set_seed
        except ImportError:  # a partial or broken install: the generators above are seeded already
            pass
        else:
            set_seed(seed)
            seeded.append("transformers")
    if not (_HASHSEED_AT_START or "").isdigit():
        notes.append(
            "string hashing in this process stays randomized (set iteration order can differ between runs); "
            f"start Python with PYTHONHASHSEED={seed} to fix it"
        )
    os.environ["PYTHONHASHSEED"] = str(seed)
    return SeedReport(seed=seed, seeded=tuple(seeded), notes=tuple(notes))


@dataclass
class _SavedState:
    python: Any
    numpy: Any = None
    torch_cpu: Any = None
    torch_cuda: Any = None
    deterministic_algorithms: bool | None = None
    deterministic_warn_only: bool | None = None
    cudnn_deterministic: bool | None = None
    cudnn_benchmark: bool | None = None
    env: dict[str, str | None] = field(default_factory=dict)


def _save_state() -> _SavedState:
    state = _SavedState(python=random.getstate(), env={k: os.environ.get(k) for k in _ENV_VARS})
    if _installed("numpy"):
        import numpy

        state.numpy = numpy.random.get_state()
    if _installed("torch"):
        import torch

        state.torch_cpu = torch.get_rng_state()
        # Reading CUDA states initializes CUDA; only do it when the program already has.
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state.torch_cuda = torch.cuda.get_rng_state_all()
        state.deterministic_algorithms = torch.are_deterministic_algorithms_enabled()
        state.deterministic_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        state.cudnn_deterministic = torch.backends.cudnn.deterministic
        state.cudnn_benchmark = torch.backends.cudnn.benchmark
    return state


def _restore_state(state: _SavedState) -> None:
    random.setstate(state.python)
    if state.numpy is not None:
        import numpy

        numpy.random.set_state(state.numpy)
    if state.torch_cpu is not None:
        import torch

        torch.set_rng_state(state.torch_cpu)
        if state.torch_cuda is not None:
            torch.cuda.set_rng_state_all(state.torch_cuda)
        torch.use_deterministic_algorithms(bool(state.deterministic_algorithms),
                                           warn_only=bool(state.deterministic_warn_only))
        torch.backends.cudnn.deterministic = state.cudnn_deterministic
        torch.backends.cudnn.benchmark = state.cudnn_benchmark
    for key, value in state.env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[SeedReport]:
    """Seed everything for the block, then restore every generator's state
    (the streams outside the block continue as if it had never run)."""
    state = _save_state()
    try:
        yield seed_everything(seed)
    finally:
        _restore_state(state)


@contextlib.contextmanager
def deterministic(seed: int = 0, *, warn_only: bool = False) -> Iterator[SeedReport]:
    """Make the block repeatable, then put everything back.

    Inside the block: every generator seeded (:func:`seed_everything`),
    ``torch.use_deterministic_algorithms(True)`` (an op with no deterministic
    implementation raises; ``warn_only=True`` makes it a warning),
    ``cudnn.deterministic = True``, ``cudnn.benchmark = False``, and on CUDA
    builds ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless already set (cuBLAS reads
    it when CUDA starts, so enter the block before the first CUDA op).

    On exit, also after an exception: the RNG states of python, numpy, torch
    (CPU and initialized CUDA devices), the torch flags and the environment
    variables are restored to their values before the block. Global state: not
    for use from several threads at once. Usable as a decorator too.
    """
    seed = check_seed(seed)
    state = _save_state()
    try:
        report = seed_everything(seed)
        if state.torch_cpu is not None:
            import torch

            if torch.version.cuda is not None and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
                os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
            torch.use_deterministic_algorithms(True, warn_only=warn_only)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        yield report
    finally:
        _restore_state(state)
