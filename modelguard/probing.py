"""Seed-sensitivity probe: load a model (or a whole pipeline) under two seeds, run
fixed inputs, compare every output, and say where randomness comes from.

``probe(load, seeds=(0, 1))``: ``load(seed)`` is called with every random number
generator seeded to ``seed`` and returns a *runner*: a callable taking no
argument that runs the fixed inputs and returns the outputs (a dict of named
outputs, a tuple/list, or one array/tensor). Alternatively ``probe(load=...,
call=...)`` with ``call(model)`` returning the outputs. The probe then runs:

====  ==========  ==========  =========================================
step  load seed   call seed   compared with A/s0/s0 it shows
====  ==========  ==========  =========================================
A     s0          s0          (reference; run twice: "unseeded" noise)
B     s1          s0          load-time randomness: weights randomly initialized
A     s0          s1          call-time randomness: sampling enabled
====  ==========  ==========  =========================================

When ``load`` returns the outputs themselves (not a callable), load and call
cannot be told apart and a difference is reported as ``seed_dependent``.
Runners that expose ``state_dict()`` (torch modules, or the built-in runners)
also get the names of the parameters that differ between the two loads.

The global random state is restored after every step; nothing leaks out.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .comparison import Comparison, compare_outputs, named_outputs
from .determinism import check_seed, seeded
from .errors import UsageError
from .resolve import locate
from .runners import (KINDS, bge_m3_loader, causal_lm_loader, check_device, detect_kind,
                      sentence_transformers_loader)
from .version import __version__

DETERMINISTIC = "deterministic"
LOAD_RANDOM = "load_random"
CALL_RANDOM = "call_random"
LOAD_AND_CALL_RANDOM = "load_and_call_random"
SEED_DEPENDENT = "seed_dependent"
UNSEEDED = "unseeded"

PROBE_TEXTS = (
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
)
# bge-m3 outputs -> the manifest component whose weights produce them.
BGE_M3_COMPONENTS = {"dense": "dense", "sparse": "sparse", "colbert": "colbert"}



# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class OutputProbe:
    """One output across the probe's runs, and what makes it vary."""

    name: str
    component: str
    diagnosis: str
    message: str
    load: Comparison
    call: Comparison | None = None
    repeat: Comparison | None = None

    @property
    def deterministic(self) -> bool:
        return self.diagnosis == DETERMINISTIC

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "component": self.component, "diagnosis": self.diagnosis,
            "deterministic": self.deterministic, "message": self.message,
            "load_seed_change": self.load.to_dict(),
            "call_seed_change": None if self.call is None else self.call.to_dict(),
            "same_seed_repeat": None if self.repeat is None else self.repeat.to_dict(),
        }


@dataclass(frozen=True)
class ProbeReport:
    """All outputs of a probe. ``deterministic`` when no output changes with the seed."""

    seeds: tuple[int, int]
    outputs: tuple[OutputProbe, ...]
    separated: bool
    random_parameters: tuple[str, ...] = ()
    target: str | None = None
    kind: str | None = None
    model: str | None = None
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = field(default=())

    @property
    def deterministic(self) -> bool:
        return all(o.deterministic for o in self.outputs)

    @property
    def load_dependent(self) -> tuple[str, ...]:
        """Outputs that change when only the load-time seed changes."""
        return tuple(o.name for o in self.outputs if o.diagnosis in (LOAD_RANDOM, LOAD_AND_CALL_RANDOM))

    @property
    def call_dependent(self) -> tuple[str, ...]:
        """Outputs that change when only the call-time seed changes."""
        return tuple(o.name for o in self.outputs if o.diagnosis in (CALL_RANDOM, LOAD_AND_CALL_RANDOM))

    def output(self, name: str) -> OutputProbe:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(f"no output {name!r}; outputs: {', '.join(o.name for o in self.outputs)}")

    def summary(self) -> str:
        if self.deterministic:
            return (f"deterministic: {len(self.outputs)} output(s) identical under seeds "
                    f"{self.seeds[0]} and {self.seeds[1]}")
        parts = []
        if self.load_dependent:
            comps = sorted({self.output(n).component for n in self.load_dependent})
            parts.append(f"randomly initialized weights (component(s): {', '.join(comps)})")
        if self.call_dependent:
            parts.append(f"sampling at call time ({', '.join(self.call_dependent)})")
        other = [o.name for o in self.outputs if o.diagnosis in (UNSEEDED, SEED_DEPENDENT)]
        if other:
            parts.append(f"seed-dependent or unseeded output(s): {', '.join(other)}")
        return "NOT deterministic: " + "; ".join(parts)

    def format(self) -> str:
        """The human-readable report (what ``modelguard probe`` prints)."""
        return format_probe(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modelguard": __version__,
            "ok": self.deterministic,
            "deterministic": self.deterministic,
            "target": self.target, "model": self.model, "kind": self.kind,
            "seeds": list(self.seeds),
            "load_and_call_separated": self.separated,
            "summary": self.summary(),
            "load_dependent": list(self.load_dependent),
            "call_dependent": list(self.call_dependent),
            "random_parameters": list(self.random_parameters),
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": list(self.notes),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def format_probe(report: ProbeReport) -> str:
    """Human-readable probe report: one block per output, then the summary."""
    s0, s1 = report.seeds
    head = report.model or report.target
    lines = [f"probe{' ' + head if head else ''}{' (' + report.kind + ')' if report.kind else ''}: seeds {s0} and {s1}"]
    width = max((len(o.name) for o in report.outputs), default=6)
    for o in report.outputs:
        tag = "ok  " if o.deterministic else "VARY"
        lines.append(f"  {tag}  {o.name:<{width}}  {o.message}")
        lines.append(f"        load seed {s0} -> {s1}: {o.load.describe()}")
        if o.call is not None:
            lines.append(f"        call seed {s0} -> {s1}: {o.call.describe()}")
        if o.repeat is not None and not o.repeat.identical:
            lines.append(f"        same seed twice:  {o.repeat.describe()}")
    if report.random_parameters:
        names = list(report.random_parameters)
        lines.append(f"  parameters that differ between the two loads ({len(names)}): "
                     + ", ".join(names[:8]) + (" ..." if len(names) > 8 else ""))
    lines.extend(f"  note: {n}" for n in report.notes)
    lines.append(report.summary())
    return "\n".join(lines)


# --------------------------------------------------------------------------- the probe


def _diagnose(name: str, component: str, load: Comparison, call: Comparison | None,
              repeat: Comparison | None, seeds: tuple[int, int], params: Sequence[str]) -> tuple[str, str]:
    if repeat is not None and not repeat.identical:
        return UNSEEDED, ("varies even with the same seed: nondeterministic kernels, or a random source "
                          "modelguard does not seed (run it inside modelguard.deterministic())")
    load_varies = not load.identical
    call_varies = call is not None and not call.identical
    random_init = (f"weights randomly initialized at load time (component {component})"
                   + (f"; e.g. {', '.join(params[:3])}" if params else "")
                   + "; fix the missing/broken weight file (modelguard verify), or install the guard")
    sampling = ("sampling enabled at call time (do_sample/temperature): fix the call seed, or turn "
                "sampling off (do_sample=False, temperature=0)")
    if call is None:
        if load_varies:
            return SEED_DEPENDENT, (f"changes with the seed ({seeds[0]} vs {seeds[1]}); return a callable "
                                    "from the loader to tell load-time from call-time randomness")
        return DETERMINISTIC, "identical under both seeds"
    if load_varies and call_varies:
        return LOAD_AND_CALL_RANDOM, f"{random_init}; and {sampling}"
    if load_varies:
        return LOAD_RANDOM, random_init
    if call_varies:
        return CALL_RANDOM, sampling
    return DETERMINISTIC, "identical under both seeds, at load and at call time"


def _differing_parameters(a: Any, b: Any) -> tuple[str, ...]:
    get_a, get_b = getattr(a, "state_dict", None), getattr(b, "state_dict", None)
    if not callable(get_a) or not callable(get_b):
        return ()
    try:
        sa, sb = get_a(), get_b()
    except Exception:  # a runner's own state_dict is a convenience, never a reason to fail the probe
        return ()
    out = []
    for key in sorted(set(sa) | set(sb)):
        if key not in sa or key not in sb:
            out.append(key)
        elif not _same_tensor(sa[key], sb[key]):
            out.append(key)
    return tuple(out)


def _same_tensor(a: Any, b: Any) -> bool:
    # torch.equal compares in place: no float64 copies of a large embedding matrix.
    if type(a).__module__.startswith("torch") and type(b).__module__.startswith("torch"):
        import torch

        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    return compare_outputs(a, b).identical


def probe(
    load: Callable[[int], Any] | str | os.PathLike[str] | None = None,
    *,
    call: Callable[[Any], Any] | None = None,
    seeds: Sequence[int] = (0, 1),
    components: Mapping[str, str] | None = None,
    atol: float = 0.0,
    **model_options: Any,
) -> ProbeReport:
    """Find what makes outputs change with the seed; see the module docstring.

    ``load(seed)`` returns a runner (no-argument callable giving the outputs), or,
    with ``call``, a model that ``call(model)`` runs. A path or model id instead of
    ``load`` probes that model with a built-in runner (:func:`probe_model`).
    ``components`` names the component behind each output (default: its name);
    ``atol`` is the largest difference still counted as identical (default exact).
    """
    if isinstance(load, (str, os.PathLike)):
        return probe_model(load, seeds=seeds, atol=atol, **model_options)
    if model_options:
        raise UsageError(f"unexpected option(s) {', '.join(model_options)} for probe(load=...)",
                         remedy="these options apply only when probing a model directory or id")
    if not callable(load):
        raise UsageError("probe needs a loader: probe(load) or probe(load=..., call=...)",
                         expected="a callable load(seed), or a model directory / model id", actual=repr(load),
                         remedy="modelguard.probe(lambda seed: make_pipeline())")
    if call is not None and not callable(call):
        raise UsageError("probe's call must be callable", expected="call(model) -> outputs", actual=repr(call))
    seeds = tuple(seeds)
    if len(seeds) != 2 or seeds[0] == seeds[1]:
        raise UsageError(f"probe needs two different seeds, got {seeds!r}", expected="e.g. seeds=(0, 1)",
                         actual=repr(seeds))
    s0, s1 = (check_seed(s) for s in seeds)
    start = time.perf_counter()
    with seeded(s0):
        loaded_a = load(s0)
    with seeded(s1):
        loaded_b = load(s1)

    def runner_of(loaded: Any) -> Callable[[], Any] | None:
        if call is not None:
            return lambda: call(loaded)
        return loaded if callable(loaded) else None

    run_a, run_b = runner_of(loaded_a), runner_of(loaded_b)
    separated = run_a is not None and run_b is not None
    if separated:
        with seeded(s0):
            out_a = named_outputs(run_a())
        with seeded(s0):
            out_a_again = named_outputs(run_a())
        with seeded(s1):
            out_a_s1 = named_outputs(run_a())
        with seeded(s0):
            out_b = named_outputs(run_b())
    else:
        out_a, out_b = named_outputs(loaded_a), named_outputs(loaded_b)
        out_a_again = out_a_s1 = None
    params = _differing_parameters(loaded_a, loaded_b)
    components = dict(components or {})
    results = []
    runs = [out_a, out_b, out_a_again or {}, out_a_s1 or {}]
    for name in dict.fromkeys(n for run in runs for n in run):
        component = components.get(name, name)
        load_cmp = _compare_named(out_a, out_b, name, atol)
        call_cmp = _compare_named(out_a, out_a_s1, name, atol)
        repeat_cmp = _compare_named(out_a, out_a_again, name, atol)
        relevant = [p for p in params if _param_component(p, component)] or list(params)
        diagnosis, message = _diagnose(name, component, load_cmp, call_cmp, repeat_cmp, (s0, s1), relevant)
        results.append(OutputProbe(name, component, diagnosis, message, load_cmp, call_cmp, repeat_cmp))
    return ProbeReport(seeds=(s0, s1), outputs=tuple(results), separated=separated,
                       random_parameters=params, elapsed_s=time.perf_counter() - start)


def _compare_named(ref: dict[str, Any], other: dict[str, Any] | None, name: str,
                   atol: float) -> Comparison | None:
    if other is None:
        return None
    if name not in ref and name not in other:
        return Comparison(True)
    if name not in ref or name not in other:
        return Comparison(False, detail="present in one run's outputs only")
    return compare_outputs(ref[name], other[name], atol=atol)


def _param_component(param: str, component: str) -> bool:
    return param.split(".", 1)[0].startswith(component)



def probe_model(
    target: str | os.PathLike[str],
    *,
    kind: str | None = None,
    seeds: Sequence[int] = (0, 1),
    texts: Sequence[str] = PROBE_TEXTS,
    max_new_tokens: int = 8,
    device: str = "cpu",
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    atol: float = 0.0,
) -> ProbeReport:
    """Probe a model directory or a cached model id with a built-in runner.

    bge-m3 (FlagEmbedding): outputs ``dense``, ``sparse``, ``colbert``;
    sentence-transformers: ``embeddings``; causal LMs (transformers): ``logits``
    (next-token logits of each prompt) and ``generated_ids`` (``generate`` with
    the model's own generation config). Nothing is downloaded. ``device`` is where
    the model runs (``cpu``, ``cuda:0``); on a GPU, kernels that are not
    deterministic show up as ``unseeded`` (see ``modelguard.deterministic``).
    """
    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown model kind {kind!r}", expected="one of: " + ", ".join(KINDS), actual=kind)
    if max_new_tokens < 1:
        raise UsageError("max_new_tokens must be at least 1", actual=max_new_tokens)
    check_device(device)
    located = locate(target, revision=revision, cache_dir=cache_dir, find=False)
    directory = located.directory
    kind = kind or detect_kind(directory, located.model_id)
    texts = tuple(texts)
    if kind == "bge-m3":
        loader, comps = bge_m3_loader(directory, texts, device), BGE_M3_COMPONENTS
    elif kind == "sentence-transformers":
        loader, comps = sentence_transformers_loader(directory, texts, device), {"embeddings": "model"}
    else:
        loader = causal_lm_loader(directory, texts, max_new_tokens, device)
        comps = {"logits": "model", "generated_ids": "model"}
    report = probe(loader, seeds=seeds, components=comps, atol=atol)
    notes: list[str] = []
    if kind == "bge-m3" and report.load_dependent:
        missing = [n for n in ("colbert_linear.pt", "sparse_linear.pt") if not (directory / n).is_file()]
        if missing:
            notes.append(f"missing in {directory}: {', '.join(missing)}; FlagEmbedding then builds BOTH the "
                         "sparse and colbert heads with random weights (it logs this only at INFO level)")
    return ProbeReport(
        seeds=report.seeds, outputs=report.outputs, separated=report.separated,
        random_parameters=report.random_parameters, target=str(target), kind=kind, model=located.model_id,
        elapsed_s=report.elapsed_s, notes=tuple(notes),
    )


__all__ = ["probe", "probe_model", "ProbeReport", "OutputProbe", "Comparison", "compare_outputs",
           "detect_kind", "format_probe", "KINDS"]
