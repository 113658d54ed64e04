"""Audit a model's configuration for what makes its outputs vary, and its files'
integrity when a manifest applies.

Reads generation_config.json, config.json and the sentence-transformers configs
(modules.json, config_sentence_transformers.json, sentence_bert_config.json,
pooling configs); nothing is imported from torch or transformers.

Findings are grouped into sections, each produced by a check registered with
:func:`register_check`; a finding's ``severity`` is ``varies`` (outputs change
between calls or loads), ``failed`` (a file or a setting is broken) or ``note``
(worth knowing, does not make outputs vary). ``AuditReport.ok`` is true when no
finding is ``varies`` or ``failed``: the CLI then exits 0, otherwise 1.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .audit_report import (FAILED, HOW_TO_BE_DETERMINISTIC, NOTE, SEVERITIES, VARIES, AuditReport, Finding,
                           format_audit)
from .build import list_model_files
from .comparison import is_number
from .engine import verify_directory
from .remedy import fetch_command
from .resolve import locate
from .safety import needs_scan, scan_paths


# Sampling knobs of transformers' GenerationConfig: they shape sampling only when do_sample is true.
SAMPLING_PARAMETERS = ("temperature", "top_k", "top_p", "typical_p", "min_p", "epsilon_cutoff", "eta_cutoff",
                       "top_h")
# The values GenerationConfig uses when a key is absent (a knob at its default changes nothing).
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "min_p": None,
                     "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "top_h": None}
BGE_M3_HEADS = ("colbert_linear.pt", "sparse_linear.pt")
PARAMETER_FREE_MODULES = (".Normalize",)


@dataclass
class AuditContext:
    """What a check gets: the directory, the model's identity, parsed config files."""

    directory: Path
    model: str | None
    revision: str | None
    manifest: Any = None
    verify_files: bool = True
    integrity: Any = None  # the VerifyReport when a manifest applies
    files_read: list[str] = field(default_factory=list)
    _json: dict[str, Any] = field(default_factory=dict)

    def read_json(self, name: str) -> Any:
        """The parsed JSON file ``name`` (relative), None when absent; a broken file
        raises once (the audit turns it into a finding), then reads as absent."""
        if name in self._json:
            return self._json[name]
        path = self.directory / name
        value = None
        if path.is_file():
            self.files_read.append(name)
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                self._json[name] = None
                raise _BrokenConfig(name, str(exc)) from None
        self._json[name] = value
        return value


class _BrokenConfig(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason



# --------------------------------------------------------------------------- checks

Check = Callable[[AuditContext], Iterable[Finding]]
CHECKS: list[tuple[str, Check]] = []


def register_check(section: str) -> Callable[[Check], Check]:
    """Add a check producing findings of ``section``; checks run in registration order."""

    def add(fn: Check) -> Check:
        CHECKS.append((section, fn))
        return fn

    return add


def _generation_settings(ctx: AuditContext) -> tuple[dict[str, Any], str | None]:
    """The generation settings transformers will use, and the file they come from."""
    gen = ctx.read_json("generation_config.json")
    if isinstance(gen, dict):
        return gen, "generation_config.json"
    config = ctx.read_json("config.json")
    if not isinstance(config, dict):
        return {}, None
    # Without generation_config.json, transformers takes generation keys from config.json
    # (GenerationConfig.from_model_config), also from a nested decoder/text config.
    keys = ("do_sample", "num_beams", *SAMPLING_PARAMETERS)
    settings = {k: config[k] for k in keys if k in config and config[k] is not None}
    for nested in ("text_config", "decoder", "generator"):
        sub = config.get(nested)
        if isinstance(sub, dict):
            for k in keys:
                if k not in settings and sub.get(k) is not None:
                    settings[k] = sub[k]
    return settings, ("config.json" if settings else None)


@register_check("sampling")
def check_sampling(ctx: AuditContext) -> Iterator[Finding]:
    settings, source = _generation_settings(ctx)
    if source is None:
        return
    do_sample = settings.get("do_sample")
    num_beams = settings.get("num_beams")
    temperature = settings.get("temperature")
    set_knobs = {k: settings[k] for k in SAMPLING_PARAMETERS
                 if k in settings and settings[k] is not None and settings[k] != SAMPLING_DEFAULTS.get(k)}
    if do_sample is True:
        knobs = ", ".join(f"{k}={v}" for k, v in set_knobs.items())
        yield Finding(
            "sampling", "do_sample", VARIES,
            "do_sample = true: generate() samples the next token at random, so every call can give a different "
            "answer" + (f" (sampling shaped by {knobs})" if knobs else ""),
            source=f"{source}:do_sample", value=True,
            remedy="model.generate(..., do_sample=False) or GenerationConfig(do_sample=False); or fix the seed: "
                   "with modelguard.deterministic(seed=0): model.generate(...)",
        )
        if is_number(temperature) and temperature <= 0:
            yield Finding(
                "sampling", "temperature_not_positive", FAILED,
                f"temperature = {temperature} with do_sample = true: transformers needs a strictly positive "
                "temperature to sample",
                source=f"{source}:temperature", value=temperature,
                remedy="for greedy output set do_sample=False instead of temperature 0",
            )
        for key, value in set_knobs.items():
            if key == "temperature" and is_number(value) and value <= 0:
                continue
            yield Finding(
                "sampling", key, VARIES, f"{key} = {value}: a sampling setting, in effect because do_sample = true",
                source=f"{source}:{key}", value=value,
            )
        if isinstance(num_beams, int) and num_beams > 1:
            yield Finding("sampling", "num_beams", VARIES,
                          f"num_beams = {num_beams} with do_sample = true: beam-search multinomial sampling",
                          source=f"{source}:num_beams", value=num_beams)
        return
    if set_knobs:
        knobs = ", ".join(f"{k}={v}" for k, v in set_knobs.items())
        yield Finding(
            "sampling", "sampling_settings_unused", NOTE,
            f"{knobs} set but do_sample is not true: transformers' generate() ignores them (greedy); engines that "
            "take their defaults from this file, such as vllm, sample with them",
            source=source, value=set_knobs,
            remedy="vllm: SamplingParams(temperature=0) for greedy output, or SamplingParams(seed=...) to repeat it",
        )
    if isinstance(num_beams, int) and num_beams > 1:
        yield Finding("sampling", "beam_search", NOTE,
                      f"num_beams = {num_beams}, do_sample not true: beam search, deterministic",
                      source=f"{source}:num_beams", value=num_beams)
    config = ctx.read_json("config.json")
    tsp = config.get("task_specific_params") if isinstance(config, dict) else None
    if isinstance(tsp, dict):
        for task, params in sorted(tsp.items()):
            if isinstance(params, dict) and params.get("do_sample") is True:
                yield Finding(
                    "sampling", "task_specific_do_sample", NOTE,
                    f"task_specific_params.{task}.do_sample = true: pipelines of transformers < 5 sample for "
                    f"task '{task}' (transformers 5 no longer reads it)",
                    source=f"config.json:task_specific_params.{task}", value=params,
                    remedy=f"pipeline('{task}', ...)(text, do_sample=False)",
                )


@register_check("load")
def check_bge_m3_heads(ctx: AuditContext) -> Iterator[Finding]:
    present = [n for n in BGE_M3_HEADS if (ctx.directory / n).is_file()]
    is_m3 = bool(present) or (ctx.model or "").lower().startswith("baai/bge-m3")
    if not is_m3 or len(present) == len(BGE_M3_HEADS):
        return
    missing = [n for n in BGE_M3_HEADS if n not in present]
    yield Finding(
        "load", "bge_m3_head_missing", VARIES,
        f"{', '.join(missing)} missing: FlagEmbedding then builds BOTH the sparse and the colbert head with random "
        "weights (logged only at INFO level), so sparse and colbert outputs change with the seed",
        source=", ".join(missing), value=missing,
        remedy=(fetch_command(ctx.model, ctx.revision)
                if ctx.model else "copy the missing file(s) from the model's repository"),
    )


def _st_modules(ctx: AuditContext) -> list[dict[str, Any]]:
    modules = ctx.read_json("modules.json")
    return [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []


@register_check("sentence-transformers")
def check_sentence_transformers(ctx: AuditContext) -> Iterator[Finding]:
    modules = _st_modules(ctx)
    st_config = ctx.read_json("config_sentence_transformers.json")
    if not modules and not isinstance(st_config, dict):
        return
    for module in modules:
        rel = str(module.get("path", "") or "")
        # Normalize has no parameters and no files: its folder is absent in real repos (all-MiniLM-L6-v2).
        if str(module.get("type", "")).endswith(PARAMETER_FREE_MODULES):
            continue
        if rel and not (ctx.directory / rel).is_dir():
            yield Finding(
                "sentence-transformers", "module_missing", FAILED,
                f"module {module.get('name', rel)} ({module.get('type', '?')}) is listed in modules.json but its "
                f"folder {rel}/ is missing", source="modules.json", value=rel,
                remedy="download the complete model again (modelguard fetch MODEL)",
            )
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    bert = ctx.read_json("sentence_bert_config.json")
    details = []
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling") and module.get("path"):
            pooling = ctx.read_json(f"{module['path']}/config.json")
            if isinstance(pooling, dict):
                modes = [k[len("pooling_mode_"):].replace("_tokens", "") for k, v in pooling.items()
                         if k.startswith("pooling_mode_") and v is True]
                details.append(f"pooling {'+'.join(modes) or 'unknown'}")
    details.append("normalized" if "Normalize" in kinds else "not normalized")
    if isinstance(bert, dict) and bert.get("max_seq_length"):
        details.append(f"max_seq_length {bert['max_seq_length']} (longer inputs are truncated)")
    yield Finding(
        "sentence-transformers", "embedding_pipeline", NOTE,
        "embeddings involve no sampling; identical inputs and weights give identical vectors ("
        + ", ".join(details) + ")", source="modules.json" if modules else "config_sentence_transformers.json",
        value=kinds,
    )
    if isinstance(st_config, dict):
        default = st_config.get("default_prompt_name")
        prompts = st_config.get("prompts") or {}
        if default:
            yield Finding(
                "sentence-transformers", "default_prompt", NOTE,
                f"default prompt '{default}' ({prompts.get(default, '?')!r}) is prepended to every input unless "
                "encode(..., prompt_name=...) says otherwise", source="config_sentence_transformers.json",
                value=default,
            )


@register_check("integrity")
def check_integrity(ctx: AuditContext) -> Iterator[Finding]:
    if not ctx.verify_files:
        yield Finding("integrity", "not_checked", NOTE, "file integrity not checked (--no-verify)")
        return
    if ctx.manifest is None:
        if ctx.model is None:
            text = ("no manifest applies: the directory is not a Hugging Face cache snapshot and no --manifest "
                    "was given; file integrity not checked")
        else:
            text = (f"no manifest known for {ctx.model}" + (f" @ {ctx.revision[:12]}" if ctx.revision else "")
                    + "; file integrity not checked")
        yield Finding("integrity", "no_manifest", NOTE, text,
                      remedy="pass --manifest FILE, or write one: modelguard build DIR --model ORG/NAME -o FILE")
        return
    report = ctx.integrity
    if report.ok:
        yield Finding("integrity", "verified", NOTE, report.summary(), source=ctx.manifest.source)
        return
    for r in report.failures:
        yield Finding("integrity", r.diagnosis, FAILED, f"{r.path} [{r.component}]: {r.message}",
                      source=r.path, value=dict(r.actual), remedy=r.remedy)


@register_check("safety")
def check_unsafe_files(ctx: AuditContext) -> Iterator[Finding]:
    """Pickle-based weights that import dangerous callables, malformed safetensors headers
    (the manifest's files, or every such file in the directory when no manifest applies)."""
    if not ctx.verify_files:
        return
    if ctx.manifest is not None:
        paths = [e.path for e in ctx.manifest.files if needs_scan(e.path)]
    else:
        paths = [p for p in list_model_files(ctx.directory) if needs_scan(p)]
    scanned = scan_paths(ctx.directory, paths)
    unsafe = [f for f in scanned if not f.safe]
    for f in unsafe:
        yield Finding("safety", f.diagnosis, FAILED, f"{f.path}: {f.message}", source=f.path,
                      value=list(f.dangerous_globals) or None,
                      remedy="do not load it; replace it with the original from a trusted source "
                             "(preferably .safetensors) and pin it in a manifest")
    for f in scanned:
        if f.diagnosis == "suspicious_pickle":
            yield Finding("safety", f.diagnosis, NOTE, f"{f.path}: {f.message}", source=f.path,
                          value=list(f.suspicious_globals))
    if scanned and not unsafe:
        yield Finding("safety", "scanned", NOTE, f"{len(scanned)} pickle/safetensors file(s) scanned, none unsafe")


# --------------------------------------------------------------------------- entry points


def audit(
    target: str | os.PathLike[str],
    *,
    manifest: Any = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verify_files: bool = True,
) -> AuditReport:
    """Audit a model directory or a cached model id; see the module docstring.

    ``manifest`` (a Manifest or a path) forces the manifest used for the integrity
    check; otherwise one is looked up (modelguard.registry) when the model id is
    known — from the argument, or from a Hugging Face cache snapshot path.
    """
    start = time.perf_counter()
    located = locate(target, revision=revision, cache_dir=cache_dir, manifest=manifest if verify_files else None,
                     find=verify_files)
    chosen = located.manifest
    ctx = AuditContext(directory=located.directory, model=located.model_id, revision=located.revision,
                       manifest=chosen, verify_files=verify_files)
    if chosen is not None:
        ctx.integrity = verify_directory(chosen, located.directory)
    findings: list[Finding] = []
    for section, check in CHECKS:
        try:
            findings.extend(check(ctx))
        except _BrokenConfig as exc:
            findings.append(Finding(
                section, "unreadable_config", FAILED, f"{exc.name} cannot be parsed: {exc.reason}",
                source=exc.name, remedy=f"download {exc.name} again; it is not valid JSON",
            ))
    return AuditReport(
        target=str(target), directory=str(located.directory), model=located.model_id, revision=located.revision,
        findings=tuple(findings), files_read=tuple(dict.fromkeys(ctx.files_read)),
        manifest_source=None if chosen is None else chosen.source, integrity=ctx.integrity,
        elapsed_s=time.perf_counter() - start,
    )


__all__ = ["FAILED", "HOW_TO_BE_DETERMINISTIC", "NOTE", "SEVERITIES", "VARIES", "AuditContext", "AuditReport", "CHECKS",
           "Finding", "audit", "format_audit", "register_check"]
