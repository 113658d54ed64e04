"""The loader guard: verify a model's files before it is built, refuse silent random init.

``modelguard.install()`` (or ``import modelguard.auto``) puts a post-import hook on
``sys.meta_path``. When the user's program imports a supported library (see
:data:`modelguard.hooks.HOOKS`), its loader functions are wrapped right after the
library's own import finishes; a library imported earlier is wrapped at once.
modelguard never imports those libraries itself.

Configuration, by argument or environment (arguments win):

- policy, ``MODELGUARD_POLICY``: what to do when files fail verification:
  ``refuse`` (default, raise :class:`~modelguard.errors.VerificationError`),
  ``repair`` (re-download through :func:`modelguard.hub.repair_files`, then verify
  again), ``warn`` (warn and load anyway);
- unknown, ``MODELGUARD_UNKNOWN``: a model with no manifest: ``warn`` (default),
  ``refuse`` or ``allow``. Random initialization is refused either way;
- manifest_dirs, ``MODELGUARD_MANIFEST_PATH``: extra manifest folders;
- offline, ``HF_HUB_OFFLINE``: never download;
- public_key, ``MODELGUARD_PUBLIC_KEY``: a folder holding ``model.sig`` is loaded only if
  that OpenSSF model signature verifies with this key and every file it lists matches
  (:mod:`modelguard.signing`, needs ``modelguard[signing]``); require_signature,
  ``MODELGUARD_REQUIRE_SIGNATURE=1``: refuse a model without such a signature.
- all_files, ``MODELGUARD_ALL_FILES``: for a model that no manifest describes but the
  Hugging Face cache does (:mod:`modelguard.hflisting`), check every listed file, not only
  the files loaders read.

A model in the Hugging Face cache with no manifest is checked against the Hub's listing
saved at download (else its blobs' content addresses); the unknown-model policy applies
only where no such source exists.
- rehash, ``MODELGUARD_REHASH``: hash every file in full before each load, whatever the
  verified-digest cache holds (for high-assurance loads; see :mod:`modelguard.statcache`).

The only way to let a model keep randomly initialized weights is
:func:`allow_random_init` (or ``MODELGUARD_ALLOW_RANDOM_INIT``), naming the
components or key patterns that may be new.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import importlib
import os
import sys
import threading
import warnings
from collections import namedtuple
from pathlib import Path

from .errors import ManifestNotFoundError, ModelGuardError, UsageError, VerificationError
from .hooks import HOOKS

# Kept off the import path: `import modelguard.auto` runs at the top of programs, so
# typing, dataclasses and the manifest schema are loaded only when a model is.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Iterator

    from .manifest import Manifest

POLICIES = ("refuse", "repair", "warn")
UNKNOWN_POLICIES = ("warn", "refuse", "allow")
ENV_POLICY = "MODELGUARD_POLICY"
ENV_UNKNOWN = "MODELGUARD_UNKNOWN"
ENV_ALLOW_RANDOM_INIT = "MODELGUARD_ALLOW_RANDOM_INIT"
LOCAL_MANIFEST_NAME = "modelguard.yaml"
DIRECTORY_MAP_NAME = "directories.yaml"


class GuardWarning(UserWarning):
    """The guard let something through that deserves attention (policy warn, unknown model)."""


class UnknownModelWarning(GuardWarning):
    """A model was loaded that no manifest describes, so its files were not verified."""


class UnsupportedLibraryWarning(GuardWarning):
    """An installed library version is outside what a hook supports; it was not patched."""


# --------------------------------------------------------------------------- configuration


class Policy(namedtuple("Policy", "on_failure unknown manifest_dirs offline all_files rehash",
                        defaults=(None, None, (), None, None, None))):
    """The guard's settings (immutable). ``None`` fields are read from the environment at each check.

    ``on_failure``: refuse | repair | warn; ``unknown``: warn | refuse | allow;
    ``manifest_dirs``: tuple of folders; ``offline``: bool; ``all_files``: bool; ``rehash``: bool.
    """

    __slots__ = ()

    def effective_on_failure(self) -> str:
        return self.on_failure or _env_choice(ENV_POLICY, POLICIES, "refuse")

    def effective_unknown(self) -> str:
        return self.unknown or _env_choice(ENV_UNKNOWN, UNKNOWN_POLICIES, "warn")

    def effective_offline(self) -> bool:
        if self.offline is not None:
            return self.offline
        return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")

    def effective_all_files(self) -> bool:
        if self.all_files is not None:
            return self.all_files
        return os.environ.get("MODELGUARD_ALL_FILES", "").strip().lower() in ("1", "true", "yes", "on")
    def effective_rehash(self) -> bool:
        if self.rehash is not None:
            return self.rehash
        from .statcache import rehash_by_env

        return rehash_by_env()


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise UsageError(
            f"${name}={raw!r} is not a valid setting",
            expected="one of: " + ", ".join(choices), actual=raw,
            remedy=f"export {name}={default}  (or unset it for the default, {default})",
        )
    return value


def _check_choice(what: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in choices:
        raise UsageError(f"{what} {value!r} is not valid", expected="one of: " + ", ".join(choices), actual=repr(value))
    return value.lower()


# --------------------------------------------------------------------------- state

_lock = threading.RLock()
_policy = Policy()
_finder: "_PostImportFinder | None" = None
_patched: dict[str, Any] = {}          # import name -> hook module that patched it
_refused: dict[str, str] = {}          # import name -> why it was not patched
_directory_map: dict[str, tuple[str, str | None]] = {}
# install(public_key=..., require_signature=...); None: read from the environment at each check.
_signing_settings: tuple[str | None, bool | None] = (None, None)
# Directories verified during the current load call: a loader that calls another
# guarded loader (sentence-transformers -> transformers) hashes the files once.
# None outside a guarded load.
_verified: contextvars.ContextVar[frozenset[tuple[str, str]] | None] = contextvars.ContextVar(
    "modelguard_verified", default=None
)
_resolutions: contextvars.ContextVar[dict[tuple[Any, ...], Any] | None] = contextvars.ContextVar(
    "modelguard_resolutions", default=None
)


def current_policy() -> Policy:
    return _policy


def is_installed() -> bool:
    return _finder is not None


def patched_libraries() -> dict[str, str]:
    """Import name -> hook module for every library currently patched."""
    with _lock:
        return {name: hook.__name__ for name, hook in _patched.items()}


def install(
    policy: str | Policy | None = None,
    *,
    manifest_dirs: Iterable[str | os.PathLike[str]] | None = None,
    offline: bool | None = None,
    unknown: str | None = None,
    public_key: str | os.PathLike[str] | None = None,
    require_signature: bool | None = None,
    all_files: bool | None = None,
    rehash: bool | None = None,
) -> None:
    """Guard every supported loader, now and when its library is imported later.

    Idempotent: a second call only updates the settings given. ``policy`` is
    ``refuse`` | ``repair`` | ``warn`` (or a :class:`Policy`); ``unknown`` is
    ``warn`` | ``refuse`` | ``allow``; ``manifest_dirs`` are searched before
    ``$MODELGUARD_MANIFEST_PATH``; ``offline`` overrides ``HF_HUB_OFFLINE``;
    ``public_key`` (a PEM file) overrides ``$MODELGUARD_PUBLIC_KEY`` and
    ``require_signature`` ``$MODELGUARD_REQUIRE_SIGNATURE`` (see :mod:`modelguard.signing`).
    ``all_files``
    (``$MODELGUARD_ALL_FILES``) checks every file of a cache listing, not only what loaders read.
    ``rehash=True`` (or ``MODELGUARD_REHASH=1``) hashes every file in full before each
    load instead of trusting the verified-digest cache.
    """
    global _policy, _finder, _signing_settings
    if isinstance(policy, Policy):
        new = policy
    else:
        new = Policy(
            on_failure=_check_choice("policy", policy, POLICIES),
            unknown=_check_choice("unknown-model policy", unknown, UNKNOWN_POLICIES),
            manifest_dirs=tuple(str(d) for d in manifest_dirs or ()),
            offline=offline,
            all_files=all_files,
            rehash=None if rehash is None else bool(rehash),
        )
    with _lock:
        _signing_settings = (
            os.fspath(public_key) if public_key is not None else _signing_settings[0],
            require_signature if require_signature is not None else _signing_settings[1],
        )
        if _finder is None:
            _policy = new
            _finder = _PostImportFinder()
            sys.meta_path.insert(0, _finder)
            for name in _hook_table():
                if name in sys.modules:
                    _apply_hook(name)
        elif (policy is not None or manifest_dirs is not None or offline is not None or unknown is not None
              or all_files is not None or rehash is not None):
            _policy = Policy(
                on_failure=new.on_failure or _policy.on_failure,
                unknown=new.unknown or _policy.unknown,
                manifest_dirs=new.manifest_dirs or _policy.manifest_dirs,
                offline=new.offline if new.offline is not None else _policy.offline,
                all_files=new.all_files if new.all_files is not None else _policy.all_files,
                rehash=new.rehash if new.rehash is not None else _policy.rehash,
            )


def uninstall() -> None:
    """Remove the import hook and restore every original function. Idempotent."""
    global _finder, _policy, _signing_settings
    with _lock:
        _signing_settings = (None, None)
        if _finder is not None:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(_finder)
            _finder = None
        for name, hook in list(_patched.items()):
            hook.unpatch()
            del _patched[name]
        _refused.clear()
        _policy = Policy()


def _hook_table() -> dict[str, str]:
    return HOOKS


def _library_version(import_name: str, hook: Any) -> str:
    from importlib import metadata

    distribution = getattr(hook, "DISTRIBUTION", import_name.split(".")[0])
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        top = sys.modules.get(import_name.split(".")[0])
        return str(getattr(top, "__version__", "0"))


def _apply_hook(import_name: str) -> None:
    """Patch the already-imported module ``import_name`` with its hook (once)."""
    with _lock:
        if _finder is None or import_name in _patched or import_name in _refused:
            return
        module = sys.modules.get(import_name)
        if module is None:
            return
        hook = importlib.import_module(_hook_table()[import_name])
        version = _library_version(import_name, hook)
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
                from .dependencies import describe_import_failure

                detail = describe_import_failure(import_name, exc)
            else:
                detail = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"modelguard: could not guard {import_name} {version} ({detail}); its loaders are NOT guarded",
                UnsupportedLibraryWarning, stacklevel=3,
            )
            return
        _patched[import_name] = hook


class _LoaderProxy:
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
        _apply_hook(self._spec.name)


class _PostImportFinder:
    """A meta path finder that finds nothing itself: it wraps the real loader of a hooked module."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _hook_table() or fullname in _patched:
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
        spec.loader = _LoaderProxy(spec.loader, spec)
        return spec


# --------------------------------------------------------------------------- which manifest applies


class ResolvedModel(namedtuple("ResolvedModel", "model_id revision directory manifest how")):
    """What the guard knows about a model being loaded (immutable).

    ``model_id`` (str or None), ``revision`` (str or None), ``directory`` (Path, or None:
    a Hub id not in the cache), ``manifest`` (Manifest or None), and ``how``: one of
    ``hub-id``, ``hf-cache-snapshot``, ``local-manifest``, ``user-mapping``,
    ``identified`` (by file names and sizes), ``hf-listing`` (no manifest: what the
    Hugging Face cache recorded, see :mod:`modelguard.hflisting`), ``unknown``.
    """

    __slots__ = ()

    def describe(self) -> str:
        if self.how == "hf-listing" and self.manifest is not None:
            return f"expectations: {self.manifest.source}"
        how = {
            "hub-id": "Hub id",
            "hf-cache-snapshot": "Hugging Face cache snapshot",
            "local-manifest": f"{LOCAL_MANIFEST_NAME} in the model directory",
            "user-mapping": "user directory mapping",
            "identified": "identified by file names and sizes",
            "unknown": "no manifest",
        }.get(self.how, self.how)
        source = f" ({self.manifest.source})" if self.manifest is not None and self.manifest.source else ""
        return f"manifest: {how}{source}"


def map_directory(directory: str | os.PathLike[str], model: str, revision: str | None = None) -> None:
    """Declare that the local ``directory`` holds ``model`` (its manifest then applies)."""
    from .registry import validate_model_id

    validate_model_id(model)
    with _lock:
        _directory_map[os.path.realpath(directory)] = (model, revision)


def directory_map_file() -> Path:
    """``$XDG_CONFIG_HOME/modelguard/directories.yaml``: ``/abs/dir: ORG/NAME[@REVISION]`` lines."""
    from .registry import user_manifest_dir

    return user_manifest_dir().parent / DIRECTORY_MAP_NAME


def _mapped_model(directory: Path) -> tuple[str, str | None] | None:
    real = os.path.realpath(directory)
    with _lock:
        if real in _directory_map:
            return _directory_map[real]
    path = directory_map_file()
    if not path.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(
            f"directory mapping {path} cannot be read: {exc}", path=path,
            expected=f"a YAML mapping of directory to model id, e.g. '/models/minilm: sentence-transformers/all-MiniLM-L6-v2'",
            remedy="fix or remove the file",
        ) from None
    if not isinstance(data, dict):
        raise UsageError(
            f"directory mapping {path} is not a mapping", path=path,
            expected="directory: ORG/NAME[@REVISION] lines", actual=type(data).__name__,
        )
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise UsageError(
                f"directory mapping {path}: entry {key!r}: {value!r} is not 'directory: ORG/NAME[@REVISION]'",
                path=path, expected="strings on both sides", actual=f"{key!r}: {value!r}",
            )
        if os.path.realpath(os.path.expanduser(key)) == real:
            model, _, rev = value.partition("@")
            return model.strip(), rev.strip() or None
    return None


_manifest_memo: dict[str, tuple[tuple[int, int, int], Manifest | None]] = {}


def _known_manifests(extra_dirs: list[str]) -> Iterator[Manifest]:
    """Every readable manifest on the search path, parsed once per file version."""
    from .errors import ManifestError
    from .manifest import load_manifest
    from .registry import MANIFEST_SUFFIXES, search_path

    seen: set[tuple[str, str | None]] = set()
    for folder in search_path(extra_dirs):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix not in MANIFEST_SUFFIXES:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = _manifest_memo.get(str(path))
            if cached is not None and cached[0] == stamp:
                manifest = cached[1]
            else:
                try:
                    manifest = load_manifest(path)
                except ManifestError:
                    manifest = None
                _manifest_memo[str(path)] = (stamp, manifest)
            if manifest is not None and (manifest.model, manifest.revision) not in seen:
                seen.add((manifest.model, manifest.revision))
                yield manifest


def _identify(directory: Path, extra_dirs: list[str]) -> Manifest | None:
    """The known manifest whose files this directory holds (names present, sizes mostly equal)."""
    best: tuple[int, int, Manifest] | None = None
    for manifest in _known_manifests(extra_dirs):
        required = [e for e in manifest.files if manifest.components[e.component].required]
        if not required:
            continue
        sizes_equal = 0
        complete = True
        for entry in required:
            try:
                st = os.stat(directory / entry.path)
            except OSError:
                complete = False
                break
            sizes_equal += st.st_size == entry.size
        # Every required name present, and at least half the sizes exact: a copy of
        # this model (possibly damaged), not merely a model with the same layout.
        if not complete or 2 * sizes_equal < len(required):
            continue
        score = (sizes_equal, len(required))
        if best is None or score > best[:2]:
            best = (*score, manifest)
    return None if best is None else best[2]


def resolve_model(
    name_or_path: str | os.PathLike[str],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ResolvedModel:
    """Which manifest applies to ``name_or_path``, and where its files are.

    Within one guarded load (:func:`verified_scope`) the answer is remembered, so
    nested loaders do not search the manifests again.
    """
    memo = _resolutions.get()
    key = (os.path.abspath(os.fspath(name_or_path)) if os.path.exists(name_or_path) else os.fspath(name_or_path),
           revision, None if cache_dir is None else os.fspath(cache_dir))
    if memo is not None and key in memo:
        return memo[key]
    resolved = _resolve_model(name_or_path, revision, cache_dir=cache_dir)
    if memo is not None:
        memo[key] = resolved
    return resolved


def _resolve_model(
    name_or_path: str | os.PathLike[str],
    revision: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ResolvedModel:
    from . import hfcache
    from .manifest import load_manifest
    from .registry import find_manifest

    extra = list(_policy.manifest_dirs)
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        parsed = hfcache.parse_snapshot_path(path)
        if parsed is not None:
            model, commit = parsed
            root = hfcache.snapshot_root(path)
            manifest = find_manifest(model, commit, extra_dirs=extra)
            if manifest is None:
                listed = _cache_expectations(root)
                if listed is not None:
                    return ResolvedModel(model, commit, root, listed, "hf-listing")
            return ResolvedModel(model, commit, root, manifest, "hf-cache-snapshot")
        local = path / LOCAL_MANIFEST_NAME
        if local.is_file():
            manifest = load_manifest(local)
            return ResolvedModel(manifest.model, manifest.revision, path, manifest, "local-manifest")
        mapped = _mapped_model(path)
        if mapped is not None:
            model, rev = mapped
            manifest = find_manifest(model, rev, extra_dirs=extra)
            if manifest is None:
                from .registry import require_manifest

                require_manifest(model, rev, extra_dirs=extra)  # raises with the search path
            return ResolvedModel(model, rev or manifest.revision, path, manifest, "user-mapping")
        manifest = _identify(path, extra)
        if manifest is not None:
            return ResolvedModel(manifest.model, manifest.revision, path, manifest, "identified")
        listed = _cache_expectations(path)  # a local_dir download with its saved listing
        if listed is not None:
            return ResolvedModel(None, listed.revision, path, listed, "hf-listing")
        return ResolvedModel(None, None, path, None, "unknown")
    if path.exists() or not _looks_like_model_id(text):
        return ResolvedModel(None, revision, path if path.exists() else None, None, "unknown")
    # A branch or tag names whatever commit the cache's refs/ say it is now.
    commit = hfcache.resolve_ref(text, revision, cache_dir) if revision else None
    manifest = find_manifest(text, commit or revision, extra_dirs=extra)
    if manifest is None:
        snap = hfcache.snapshot_path(text, revision, cache_dir)
        listed = _cache_expectations(snap, model=text) if snap is not None else None
        if listed is not None:
            return ResolvedModel(text, listed.revision, snap, listed, "hf-listing")
        return ResolvedModel(text, revision, snap, None, "unknown")
    # No revision asked: the manifest's pinned one (loaders are then given that revision).
    wanted = commit or revision or manifest.revision
    return ResolvedModel(text, wanted, hfcache.snapshot_path(text, wanted, cache_dir), manifest, "hub-id")


def _cache_expectations(directory: Path, model: str | None = None) -> Manifest | None:
    from .hflisting import cache_expectations

    return cache_expectations(directory, all_files=_policy.effective_all_files(), model=model)


def _looks_like_model_id(text: str) -> bool:
    from .registry import validate_model_id

    try:
        validate_model_id(text)
    except UsageError:
        return False
    return not text.startswith((".", "~"))


# --------------------------------------------------------------------------- verification before load


def check_before_load(
    name_or_path: str | os.PathLike[str],
    *,
    components: Iterable[str] | None = None,
    revision: str | None = None,
    loader: str = "transformers",
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> ResolvedModel:
    """Verify the files of the model about to be loaded, and apply the policy.

    ``components`` limits the check (unknown names are ignored, so a loader can
    ask for what it reads). ``local_files_only`` (the loader's own flag) forbids
    downloads for this load. Raises :class:`VerificationError` when the policy is
    ``refuse`` and a file fails; :class:`ManifestNotFoundError` for an unknown
    model when the unknown-model policy is ``refuse``.
    """
    policy = _policy
    if local_files_only:
        policy = policy._replace(offline=True)
    on_failure = policy.effective_on_failure()
    resolved = resolve_model(name_or_path, revision, cache_dir=cache_dir)
    signed = _check_signature(resolved, name_or_path, loader, on_failure)
    manifest = resolved.manifest
    if manifest is None:
        if signed:
            return resolved  # the signature listed every file, and they verified
        if resolved.directory is None and not _looks_like_model_id(os.fspath(name_or_path)):
            return resolved  # neither a folder nor a model id: the loader reports its own "not found"
        done = _verified.get()
        key = (os.path.realpath(resolved.directory) if resolved.directory else os.fspath(name_or_path), "?")
        if done is None or key not in done:
            _unknown_model(name_or_path, resolved, policy.effective_unknown(), loader)
            if done is not None:
                _verified.set(done | {key})
        return resolved
    if resolved.how == "hf-listing":
        # The loaders' component names mean nothing to a cache listing: check the files loaders read.
        from .hflisting import checked_components

        components = checked_components(manifest, policy.effective_all_files())
    wanted = None
    if components is not None:
        wanted = sorted(set(components) & set(manifest.components))
        if not wanted:
            return resolved
    directory = resolved.directory
    fetched = None
    if directory is None:
        fetched = _download(resolved, wanted, policy, cache_dir)
        directory = Path(fetched.directory)
        resolved = ResolvedModel(resolved.model_id, resolved.revision, directory, manifest, resolved.how)
    key = (os.path.realpath(directory), ",".join(wanted) if wanted is not None else "*")
    done = _verified.get()
    if done is not None and (key in done or (key[0], "*") in done):
        return resolved
    report = fetched if fetched is not None else _verify(manifest, directory, wanted)
    if not report.ok:
        if on_failure == "repair" and not policy.effective_offline() and manifest.origin == "manifest":
            _repair(manifest, directory, wanted, report)
            report = _verify(manifest, directory, wanted)
        if not report.ok:
            error = _verification_error(resolved, report, loader, on_failure, policy.effective_offline())
            if on_failure == "warn":
                warnings.warn(str(error), GuardWarning, stacklevel=3)
            else:
                raise error
    _refuse_unsafe_files(manifest, directory, wanted, on_failure)
    if done is not None:
        _verified.set(done | {key})
    return resolved


def _check_signature(resolved: ResolvedModel, name_or_path: Any, loader: str, on_failure: str) -> bool:
    """With a signing key or the signature requirement configured, check ``model.sig`` (once
    per load). True when a signature verified with every file it lists."""
    from .signing import configured_public_key, signature_required

    public_key = configured_public_key(_signing_settings[0])
    require = signature_required(_signing_settings[1])
    if public_key is None and not require:
        return False
    directory = resolved.directory
    if directory is not None and not Path(directory).is_dir():
        directory = None  # a Hub id not downloaded yet
    if directory is None and not require:
        return False
    done = _verified.get()
    key = (os.path.realpath(directory) if directory is not None else os.fspath(name_or_path), "signature")
    if done is not None and any(kind == "signature" and (key[0] == path or key[0].startswith(path + os.sep))
                                for path, kind in done):
        return True  # this folder, or the signed folder holding it, verified in this load
    from .signing import enforce_before_load

    statement = enforce_before_load(directory, public_key=public_key, require=require, loader=loader,
                                    target=resolved.model_id or os.fspath(name_or_path), on_failure=on_failure)
    if statement is None:
        return False
    if done is not None:
        _verified.set(_verified.get() | {key})
    return True


# Findings that mean code would run on load: refused whatever the failure policy.
_CODE_RISKS = ("dangerous_pickle", "mislabeled")


def _refuse_unsafe_files(manifest: Manifest, directory: Path, components: list[str] | None,
                         on_failure: str) -> None:
    """Scan the pickle-based weights and safetensors headers about to be loaded (never loading them)."""
    from .safety import require_safe, scan_manifest_files

    unsafe = [f for f in scan_manifest_files(manifest, directory, components) if not f.safe]
    code = [f for f in unsafe if f.diagnosis in _CODE_RISKS]
    if code or (unsafe and on_failure != "warn"):
        require_safe(code or unsafe)
    for finding in unsafe:
        warnings.warn(f"modelguard: {finding.path}: {finding.message}", GuardWarning, stacklevel=4)


def in_loader_scope() -> bool:
    """Whether the caller runs inside a guarded loader (see :func:`verified_scope`)."""
    return _verified.get() is not None


@contextlib.contextmanager
def verified_scope() -> Iterator[None]:
    """Within this block, directories verified once are not hashed again by nested loaders."""
    current = _verified.get()
    token = _verified.set(frozenset() if current is None else current)
    memo = _resolutions.get()
    memo_token = _resolutions.set({} if memo is None else memo)
    try:
        yield
    finally:
        _resolutions.reset(memo_token)
        _verified.reset(token)


def _verify(manifest: Manifest, directory: Path, components: list[str] | None) -> Any:
    from .verify import verify

    return verify(manifest, directory, components=components, rehash=_policy.effective_rehash())


def _unknown_model(name_or_path: Any, resolved: ResolvedModel, unknown: str, loader: str) -> None:
    if unknown == "allow":
        return
    from shlex import quote

    from .registry import search_path

    target = resolved.model_id or os.fspath(name_or_path)
    model = quote(resolved.model_id) if resolved.model_id else "ORG/NAME"
    where = resolved.directory or name_or_path
    remedy = (
        f"write a manifest: `modelguard build {quote(os.fspath(where))} --model {model} "
        f"-o {quote(str(Path(os.fspath(where)) / LOCAL_MANIFEST_NAME))}`"
        if resolved.directory is not None and resolved.how == "unknown" and Path(os.fspath(where)).is_dir()
        else f"write a manifest with `modelguard build DIR --model {model}` into one of: "
             + ", ".join(str(d) for d in search_path(list(_policy.manifest_dirs)))
    ) + ("; or download it with huggingface_hub's snapshot_download (or `hf download`), which saves the Hub's "
         "listing that the guard then checks the files against"
         f"; or set {ENV_UNKNOWN}=allow to load unverified models without this message")
    message = (f"modelguard: no manifest applies to {target} (loaded by {loader}), "
               "so its files are not verified; random initialization is still refused")
    pinned = _manifest_for_another_revision(resolved)
    if pinned is not None:
        message += f"; the manifest for {resolved.model_id} pins revision {pinned}, not {resolved.revision}"
        remedy = (f"load revision {pinned} (`modelguard fetch {model} --revision {quote(pinned)}`), "
                  f"or add a manifest for {resolved.revision}; " + remedy)
    if unknown == "refuse":
        raise ManifestNotFoundError(
            message.replace("so its files are not verified; random initialization is still refused",
                            "and the unknown-model policy 'refuse' forbids loading unverified models"),
            path=where, remedy=remedy,
        )
    warnings.warn(f"{message}\n  fix: {remedy}", UnknownModelWarning, stacklevel=4)


def _manifest_for_another_revision(resolved: ResolvedModel) -> str | None:
    """The revision a known manifest of this model pins, when it is not the one being loaded."""
    if not resolved.model_id or not resolved.revision:
        return None
    from .registry import find_manifest

    try:
        manifest = find_manifest(resolved.model_id, extra_dirs=list(_policy.manifest_dirs))
    except ModelGuardError:
        return None
    if manifest is None or not manifest.revision:
        return None
    return manifest.revision


def _download(resolved: ResolvedModel, components: list[str] | None, policy: Policy,
              cache_dir: str | os.PathLike[str] | None) -> Any:
    """A Hub model with a manifest but not in the cache: fetch exactly its pinned files.

    Returns the verification report of the fetched files.
    """
    manifest = resolved.manifest
    assert manifest is not None and resolved.model_id is not None
    from shlex import quote

    fetch_cmd = (f"modelguard fetch {quote(manifest.model)}"
                 + (f" --revision {quote(manifest.revision)}" if manifest.revision else ""))
    if policy.effective_offline():
        from .errors import OfflineError

        raise OfflineError(
            f"{manifest.model} is not in the Hugging Face cache and downloads are off (HF_HUB_OFFLINE or local_files_only)",
            expected=f"a snapshot of {manifest.model}" + (f" at {manifest.revision}" if manifest.revision else ""),
            actual="no snapshot in " + str(_hf_cache(cache_dir)),
            remedy=f"run `{fetch_cmd}` while online, then load again",
        )
    try:
        from .hub import fetch
    except ImportError:
        raise ModelGuardError(
            f"{manifest.model} is not in the Hugging Face cache, and this installation of modelguard cannot download",
            expected="modelguard with Hub support (modelguard.hub.fetch)", actual="no modelguard.hub",
            remedy="download the model first (huggingface-cli download), then load again",
        ) from None
    return fetch(manifest, resolved.revision, components=components, cache_dir=cache_dir)


def _hf_cache(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    from .hfcache import hf_cache_dir

    return hf_cache_dir(cache_dir)


def _repair(manifest: Manifest, directory: Path, components: list[str] | None, report: Any) -> None:
    try:
        from .hub import repair_files  # written alongside the fetch command
    except ImportError:
        raise ModelGuardError(
            "policy 'repair' needs modelguard.hub.repair_files, which this installation of modelguard lacks",
            expected="modelguard with Hub support", actual="no modelguard.hub.repair_files",
            remedy=f"set {ENV_POLICY}=refuse and run `modelguard fetch {_quote(manifest.model)}`, or upgrade modelguard",
        ) from None
    repair_files(manifest, directory, components=components)


def _quote(text: str) -> str:
    """``text`` quoted for a POSIX shell, for the commands printed in remedies."""
    from shlex import quote

    return quote(text)


def _verification_error(
    resolved: ResolvedModel, report: Any, loader: str, on_failure: str, offline: bool
) -> VerificationError:
    from .verify import format_report

    manifest = resolved.manifest
    assert manifest is not None
    verb = {"refuse": "refused to load", "repair": "could not repair", "warn": "loading despite failed checks:"}
    lines = [
        f"modelguard {verb[on_failure]} {manifest.model} ({loader}) from {report.directory}: "
        f"files do not match {report.expectations_phrase}",
        f"  {resolved.describe()}",
        *("  " + line for line in format_report(report, quiet=True).splitlines()),
    ]
    remedies = list(dict.fromkeys(r.remedy for r in report.failures if r.remedy))
    remedy = "; ".join(remedies) if remedies else None
    if on_failure == "repair" and offline:
        lines.append("  (repair skipped: downloads are off, HF_HUB_OFFLINE)")
    elif on_failure == "repair" and manifest.origin != "manifest":
        lines.append("  (repair skipped: it needs a manifest; download the files again with the command below)")
    if resolved.how == "identified":
        hint = (f"if this directory is a different model (e.g. a fine-tune of {manifest.model}), save its own manifest: "
                f"`modelguard build {_quote(str(report.directory))} --model ORG/NAME "
                f"-o {_quote(str(Path(report.directory) / LOCAL_MANIFEST_NAME))}`")
        remedy = f"{remedy}; {hint}" if remedy else hint
    elif on_failure == "refuse" and remedy and manifest.origin == "manifest":
        remedy += f"; or set {ENV_POLICY}=repair to re-download broken files while loading"
    return VerificationError("\n".join(lines), report=report, path=report.directory, remedy=remedy)


# --------------------------------------------------------------------------- random-init opt-out


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
    from .errors import RandomInitError

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
