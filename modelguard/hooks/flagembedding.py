# over 450 lines: FlagEmbedding's two layouts (1.2, 1.3/1.4) and the head checks before and after construction.
"""FlagEmbedding BGE-M3: verify before the model is built; never let a head be random.

FlagEmbedding builds bge-m3's sparse and colbert heads as fresh ``torch.nn.Linear``
layers and loads ``sparse_linear.pt`` / ``colbert_linear.pt`` into them only when
BOTH files exist; otherwise it keeps the random weights and says so at INFO level
(1.2 through 1.4.2). Where the heads are built:

- 1.3/1.4: ``EncoderOnlyEmbedderM3Runner.get_model`` (used by ``BGEM3FlagModel`` =
  ``M3Embedder``, ``FlagAutoModel`` and the fine-tuning runner);
- 1.2: ``BGEM3Model.load_model`` (used by ``BGEM3FlagModel`` through
  ``BGEM3ForInference``, and by fine-tuning).

Both are wrapped (and ``M3Embedder.__init__``, which loads the tokenizer before the
model). Before the original runs: the dense, sparse, colbert and tokenizer
components are verified against the manifest that applies (policy as configured),
and each head file is opened and checked — present, a real file, not a Git LFS
pointer, loadable with ``torch.load(weights_only=True)``, holding ``weight``/``bias``
of the right shape (and dtype, when the manifest lists ``tensors``). This runs with
no manifest too. A bad head raises :class:`~modelguard.errors.MissingHeadError`
unless ``allow_random_init("<component>")`` allows that head to be absent. After
construction, each head holds exactly the tensors of its file; a head file that
FlagEmbedding skipped because the other one was absent (and allowed) is loaded.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from shlex import quote
from typing import Any

from .. import guard
from ..engine import default_remedy
from ..errors import MissingHeadError, UsageError, VerificationError
from ..fs import human_size
from ..registry import looks_like_model_id
from ..remedy import fetch_command
from ..sniff import parse_lfs_pointer, sniff_error_page
from . import Patches, flag_models, version_tuple
from .files import inspecting

DISTRIBUTION = "FlagEmbedding"
SUPPORTED = "FlagEmbedding 1.2.x, 1.3.x and 1.4.x"
# Component -> the head file FlagEmbedding reads for it.
HEAD_FILES = {"colbert": "colbert_linear.pt", "sparse": "sparse_linear.pt"}
COMPONENTS = ("dense", "sparse", "colbert", "tokenizer")
SNIFF_BYTES = 512

_patches = Patches()
# Set while a guarded M3 load runs: the checked directory and head states, so the
# inner wrapper (get_model inside M3Embedder.__init__) does not check again.
_current: contextvars.ContextVar["_Plan | None"] = contextvars.ContextVar("modelguard_fe_plan", default=None)


def supported(version: str) -> bool:
    release = version_tuple(version)
    return len(release) >= 2 and (1, 2) <= release[:2] < (1, 5)


def patch(module: Any) -> None:
    import importlib

    flag_models.patch(module)  # FlagModel, FlagReranker, FlagLLMReranker...
    runner_name = "FlagEmbedding.finetune.embedder.encoder_only.m3.runner"
    try:
        runner = importlib.import_module(runner_name)
    except ModuleNotFoundError as exc:
        # Only the module itself (or a package above it) being absent means the 1.2 layout; a name
        # it imports that is missing is a broken install, and its error is the one to report.
        if not exc.name or not (runner_name == exc.name or runner_name.startswith(exc.name + ".")) \
                or exc.name == "FlagEmbedding":
            raise
        runner = None
    if runner is not None:  # the 1.3/1.4 layout
        _patches.replace(runner.EncoderOnlyEmbedderM3Runner, "get_model", _wrap_get_model)
        embedder = importlib.import_module("FlagEmbedding.inference.embedder.encoder_only.m3")
        _patches.replace(embedder.M3Embedder, "__init__", _wrap_embedder_init)
        return
    modeling = importlib.import_module("FlagEmbedding.BGE_M3.modeling")  # the 1.2 layout
    _patches.replace(modeling.BGEM3Model, "load_model", _wrap_load_model)


def unpatch() -> None:
    _patches.restore()
    flag_models.unpatch()


# --------------------------------------------------------------------------- wrappers


def _wrap_embedder_init(original: Any) -> Any:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(self, *args, **kwargs)
        name = bound.arguments.get("model_name_or_path")
        if name is None or _current.get() is not None:
            return original(self, *args, **kwargs)
        loader = f"FlagEmbedding {type(self).__name__}"
        with guard.verified_scope():
            try:
                plan = _prepare(name, cache_dir=bound.arguments.get("cache_dir"),
                                colbert_dim=bound.arguments.get("colbert_dim", -1), loader=loader)
            except BaseException:
                # AbsEmbedder.__del__ reads self.pool, which its __init__ sets; refused
                # before that, the object would print an AttributeError when collected.
                if not hasattr(self, "pool"):
                    self.pool = None
                raise
            bound.arguments["model_name_or_path"] = plan.load_from(name)
            token = _current.set(plan)
            try:
                result = original(*bound.args, **bound.kwargs)
            finally:
                _current.reset(token)
            if getattr(self, "model_name_or_path", None) == str(plan.directory):
                self.model_name_or_path = name  # what the caller passed, as without the guard
            return result

    return __init__


def _wrap_get_model(original: Any) -> Any:
    func = original.__func__ if isinstance(original, staticmethod) else original
    signature = inspect.signature(func)

    @functools.wraps(func)
    def get_model(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        name = bound.arguments["model_name_or_path"]
        colbert_dim = bound.arguments.get("colbert_dim", -1)
        with guard.verified_scope():
            plan = _current.get()
            if plan is None or not plan.covers(name):
                plan = _prepare(name, cache_dir=bound.arguments.get("cache_dir"), colbert_dim=colbert_dim,
                                loader="FlagEmbedding EncoderOnlyEmbedderM3Runner.get_model")
            bound.arguments["model_name_or_path"] = plan.load_from(name)
            result = func(*bound.args, **bound.kwargs)
            _finish(plan, {"colbert": result["colbert_linear"], "sparse": result["sparse_linear"]})
            return result

    return staticmethod(get_model) if isinstance(original, staticmethod) else get_model


def _wrap_load_model(original: Any) -> Any:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def load_model(self: Any, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        name = bound.arguments["model_name"]
        with guard.verified_scope():
            plan = _prepare(name, cache_dir=None, colbert_dim=bound.arguments.get("colbert_dim", -1),
                            loader=f"FlagEmbedding {type(self).__name__}")
            bound.arguments["model_name"] = plan.load_from(name)
            result = original(*bound.args, **bound.kwargs)
            _finish(plan, {"colbert": self.colbert_linear, "sparse": self.sparse_linear})
            return result

    return load_model


# --------------------------------------------------------------------------- before construction


@dataclass
class _HeadCheck:
    component: str
    file: str
    diagnosis: str  # "ok" or what is wrong
    message: str = ""
    expected: str | None = None
    actual: str | None = None
    state: Any = None  # the loaded state dict when ok

    @property
    def ok(self) -> bool:
        return self.diagnosis == "ok"


@dataclass
class _Plan:
    directory: Path
    resolved: Any
    heads: dict[str, _HeadCheck] = field(default_factory=dict)
    allowed_absent: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    def covers(self, name: Any) -> bool:
        return os.fspath(name) in self.names

    def load_from(self, name: Any) -> str:
        """What the loader is given: the directory that was checked, so it loads those files."""
        return str(self.directory)


def _prepare(name_or_path: Any, *, cache_dir: Any, colbert_dim: Any, loader: str) -> _Plan:
    """Verify the model's files and its two head files; raise before anything is built."""
    name = os.fspath(name_or_path)
    allowed = tuple(c for c in HEAD_FILES if guard.random_init_allowed(component=c))
    components = [c for c in COMPONENTS if c not in allowed]
    if not os.path.isdir(name) and not looks_like_model_id(name, namespaced=True):
        raise UsageError(
            f"{loader}: model directory {name} does not exist" if not os.path.exists(name)
            else f"{loader}: {name} is not a directory",
            path=name, expected="a model directory (config.json, weights, sparse_linear.pt, colbert_linear.pt) "
                                "or a Hub id such as BAAI/bge-m3", actual=name,
            remedy="check the path, or download the model first: modelguard fetch BAAI/bge-m3 --local-dir DIR",
        )
    if not os.path.isdir(name) and guard.resolve_model(name, cache_dir=cache_dir).manifest is None:
        # A Hub id with no manifest: download it the way FlagEmbedding itself would, so
        # the heads can be checked before the model is built rather than after.
        name = _snapshot_download(name, cache_dir)
    try:
        resolved = guard.check_before_load(name, components=components, loader=loader, cache_dir=cache_dir)
    except MissingHeadError:
        raise
    except VerificationError as exc:
        report = exc.report
        failed_heads = [c for c in HEAD_FILES if report is not None and c in report.failed_components]
        if not failed_heads:
            raise
        raise _error_from_report(exc, failed_heads, loader, colbert_dim) from None
    directory = Path(resolved.directory) if resolved.directory is not None else Path(name)
    plan = _Plan(directory=directory, resolved=resolved, allowed_absent=(),
                 names=(os.fspath(name_or_path), name, str(directory)))
    expected_shapes = _expected_shapes(directory, colbert_dim)
    manifest = resolved.manifest
    bad: list[_HeadCheck] = []
    absent_allowed: list[str] = []
    for component, file in HEAD_FILES.items():
        entry = manifest.file(file) if manifest is not None else None
        check = _inspect_head(directory, component, file, expected_shapes.get(component),
                              entry.tensors if entry is not None else None)
        plan.heads[component] = check
        if check.ok:
            continue
        if check.diagnosis == "missing" and component in allowed:
            absent_allowed.append(component)
            continue
        bad.append(check)
    if bad:
        raise _head_error(bad, plan, loader, allowed)
    plan.allowed_absent = tuple(absent_allowed)
    guard.mark_verified(directory)  # nested loaders (the backbone's from_pretrained) do not check again
    return plan


def _snapshot_download(repo_id: str, cache_dir: Any) -> str:
    from huggingface_hub import snapshot_download

    # $HF_ENDPOINT read now, not when huggingface_hub was imported.
    return snapshot_download(
        repo_id=repo_id, cache_dir=cache_dir or os.getenv("HF_HUB_CACHE"),
        ignore_patterns=["flax_model.msgpack", "rust_model.ot", "tf_model.h5"],
        endpoint=os.environ.get("HF_ENDPOINT") or None,
    )


def _expected_shapes(directory: Path, colbert_dim: Any) -> dict[str, dict[str, tuple[int, ...]]]:
    """Head shapes implied by config.json's hidden_size (and colbert_dim), if readable."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        hidden = int(config["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out_dim = hidden if not isinstance(colbert_dim, int) or colbert_dim <= 0 else colbert_dim
    return {
        "colbert": {"weight": (out_dim, hidden), "bias": (out_dim,)},
        "sparse": {"weight": (1, hidden), "bias": (1,)},
    }


def _shape_text(shapes: dict[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{k} {list(v)}" for k, v in sorted(shapes.items(), reverse=True))


def _inspect_head(directory: Path, component: str, file: str, shapes: dict[str, tuple[int, ...]] | None,
                  tensors: Any) -> _HeadCheck:
    """Open one head file the way FlagEmbedding will, without building anything."""
    import stat

    path = directory / file
    if tensors:
        shapes = {k: tuple(v.shape) for k, v in tensors.items() if v.shape is not None} or shapes
    expected = (f"a state dict of Linear weights: {_shape_text(shapes)}" if shapes
                else "a state dict of Linear weights (weight, bias)")
    check = functools.partial(_HeadCheck, component, file, expected=expected)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return check("missing", "is missing", actual="no such file")
    except OSError as exc:
        return check("unreadable", f"cannot be read: {exc.strerror}", actual=str(exc.strerror))
    if not stat.S_ISREG(st.st_mode):
        return check("not_a_file", "is not a regular file", actual="not a regular file")
    if st.st_size == 0:
        return check("empty", "is empty (0 bytes)", actual="0 bytes")
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        return check("unreadable", f"cannot be read: {exc.strerror}", actual=str(exc.strerror))
    pointer = parse_lfs_pointer(head)
    if pointer is not None:
        size = f" of {human_size(pointer['size'])}" if pointer.get("size") else ""
        return check("lfs_pointer", f"is a Git LFS pointer stub ({st.st_size} bytes), not the weights{size}",
                     actual=f"Git LFS pointer text ({st.st_size} bytes)")
    page = sniff_error_page(head)
    if page is not None:
        return check("error_page", f"holds a saved {page} page, not the weights", actual=f"{page} text")
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for broken files
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return check("unloadable", f"cannot be loaded by torch.load ({detail[:160]}): truncated or corrupt",
                     actual=f"{human_size(st.st_size)} that torch.load rejects")
    if not isinstance(state, dict) or set(state) != {"weight", "bias"} or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        return check("wrong_keys", f"does not hold a Linear layer's weight and bias (found {keys})",
                     actual=f"keys {keys}")
    found = {k: tuple(v.shape) for k, v in state.items()}
    if shapes and found != shapes:
        return check("wrong_shape", f"has the wrong shape: {_shape_text(found)}, expected {_shape_text(shapes)}",
                     actual=_shape_text(found))
    for name, spec in (tensors or {}).items():
        if spec.dtype is not None and name in state:
            dtype = str(state[name].dtype).removeprefix("torch.")
            if dtype != spec.dtype:
                return check("wrong_dtype", f"{name} is {dtype}, the manifest says {spec.dtype}",
                             actual=f"{name} {dtype}")
    return check("ok", "ok", state=state)


_CONSEQUENCE = ("FlagEmbedding would build BOTH the sparse and colbert heads with random weights "
                "(it loads the heads only when both files load), and its sparse/colbert outputs would "
                "change with torch.manual_seed")


def _opt_out(components: list[str], *, present: bool = False) -> str:
    names = ", ".join(f'"{c}"' for c in components)
    what = "new heads" if len(components) > 1 else f"a new {components[0]} head"
    step = "remove the broken file(s) and load" if present else "load"
    return f"to train {what} on purpose, {step} inside `with modelguard.allow_random_init({names}):`"


def _fetch_remedy(plan: _Plan, file: str) -> str:
    manifest = plan.resolved.manifest
    if manifest is not None and manifest.file(file) is not None:
        return default_remedy(manifest, plan.directory)(manifest.file(file), "missing") or ""
    model = plan.resolved.model_id
    if plan.resolved.how == "hf-cache-snapshot" and model:
        return fetch_command(model, plan.resolved.revision)
    if plan.resolved.how == "hf-listing" and manifest is not None and manifest.lists_every_file:
        return (f"the Hub's listing of {manifest.model} at commit {manifest.revision} (saved at download) has no "
                f"{file}: that commit does not publish it; load a repository or revision that does, or copy {file} "
                f"from the model's source into {quote(str(plan.directory))}")
    return (f"copy {file} from the model's source into {plan.directory} "
            f"(for BAAI/bge-m3 itself: `{fetch_command('BAAI/bge-m3', local_dir=plan.directory)}`)")


def _head_error(bad: list[_HeadCheck], plan: _Plan, loader: str, allowed: tuple[str, ...]) -> Exception:
    model = plan.resolved.model_id or str(plan.directory)
    lines = [f"modelguard refused to load {model} ({loader}): "
             + "; ".join(f"the {c.component} head file {c.file} {c.message}" for c in bad)]
    for c in bad:
        lines.append(f"  {c.file} [{c.component}]: diagnosis {c.diagnosis}; actual: {c.actual}")
    if not plan.resolved.manifest:
        lines.append("  (no manifest applies to this model; head files are checked anyway)")
    elif plan.resolved.how == "hf-listing":
        lines.append(f"  ({plan.resolved.describe()})")
    lines.append(f"  without the guard, {_CONSEQUENCE}")
    remedy = "; ".join(dict.fromkeys(_fetch_remedy(plan, c.file) for c in bad))
    missing = [c.component for c in bad if c.diagnosis == "missing"]
    remedy += "; " + (_opt_out(missing) if missing else _opt_out([c.component for c in bad], present=True))
    first = bad[0]
    return MissingHeadError(
        "\n".join(lines), component=first.component, path=plan.directory / first.file,
        expected=first.expected, actual=first.actual, remedy=remedy,
    )


def _error_from_report(exc: Any, failed_heads: list[str], loader: str, colbert_dim: Any) -> Exception:
    """A verification failure that touches a head, as a MissingHeadError naming it."""
    report = exc.report
    results = [r for r in report.failures if r.component in failed_heads]
    first = results[0]
    heads = ", ".join(f"{r.component} ({r.path}: {r.diagnosis})" for r in results)
    message = (f"modelguard refused to load {report.model} ({loader}): broken head file(s): {heads}; "
               f"without the guard, {_CONSEQUENCE}\n{exc.message}")
    # What the file holds, when it is there: "wrong size" may be a head of another shape.
    directory = Path(report.directory)
    shapes = _expected_shapes(directory, colbert_dim)
    for r in results:
        if r.diagnosis in ("missing", "lfs_pointer"):
            continue
        with inspecting():  # describing a file that failed: not a load for the file-level guard
            check = _inspect_head(directory, r.component, r.path, shapes.get(r.component), None)
        if check.diagnosis in ("wrong_shape", "wrong_keys", "unloadable", "wrong_dtype"):
            message += f"\n  {r.path} opened: {check.message}"
    remedy = exc.remedy or first.remedy or ""
    missing = [r.component for r in results if r.diagnosis == "missing"]
    if missing:
        remedy = (remedy + "; " if remedy else "") + _opt_out(missing)
    return MissingHeadError(
        message, component=first.component, report=report, path=Path(report.directory) / first.path,
        expected=", ".join(f"{k} {v}" for k, v in first.expected.items()) or None,
        actual=", ".join(f"{k} {v}" for k, v in first.actual.items()) or first.diagnosis,
        remedy=remedy,
    )


# --------------------------------------------------------------------------- after construction


def _finish(plan: _Plan, modules: dict[str, Any]) -> None:
    """Each head module holds exactly its file's tensors (loading any FlagEmbedding skipped)."""
    import torch

    for component, module in modules.items():
        check = plan.heads.get(component)
        if module is None or check is None or not check.ok:
            continue  # absent on purpose (allow_random_init), or a head not built at all
        params = dict(module.named_parameters())

        def matches() -> bool:
            return set(params) == set(check.state) and all(
                params[k].shape == v.shape
                and torch.equal(params[k].detach().cpu(), v.to(dtype=params[k].dtype))
                for k, v in check.state.items()
            )

        if not matches() and plan.allowed_absent:
            # FlagEmbedding skipped this good file because the other head is absent (allowed).
            with torch.no_grad():
                module.load_state_dict({k: v.to(params[k].dtype) for k, v in check.state.items()})
        if not matches():
            found = {k: tuple(p.shape) for k, p in params.items()}
            raise MissingHeadError(
                f"modelguard: after construction the {component} head does not hold the weights of "
                f"{check.file}; it was left randomly initialized or changed",
                component=component, path=plan.directory / check.file,
                expected=check.expected, actual=f"module with {_shape_text(found)} and other values",
                remedy="report this with your FlagEmbedding version; do not use this model instance",
            )
