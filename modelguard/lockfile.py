"""The project lockfile, ``modelguard.lock``: every model a project uses, pinned to a commit,
with each file's size and digests.

Where: the file named by ``$MODELGUARD_LOCK``, else the first ``modelguard.lock`` found in
the working directory or one of its parents (:func:`find_lock`). ``$MODELGUARD_LOCK`` naming
a file that does not exist is no error while finding (``lock add`` creates the file there),
but an error (:class:`~modelguard.errors.UsageError`, exit 2) wherever the lock must be read:
the guard, ``verify --lock`` and ``sync`` never quietly run without the lock the
environment names.

Schema 1 (YAML; read with the manifest loader's rules and limits: no tags, anchors, aliases
or duplicate keys, bounded size, nesting and node count)::

    # modelguard lockfile (schema 1). Update with `modelguard lock add ORG/NAME[@REV]`.
    modelguard_lock: 1
    models:
      org/name:                          # a Hub model id, sorted
        revision: 0123...cdef            # the commit (40 hex digits), never a branch
        signed_by:                       # optional: who must have signed the model (model.sig)
          public_key: keys/publisher.pem # a PEM public key; relative to the lock file's folder
        # or, for a Sigstore signature:  signed_by: {identity: EMAIL_OR_URI, identity_provider: URL}
        components:                      # as in a manifest; optional (one component, "model")
          model: {required: true, description: ...}
        files:                           # as in a manifest, sorted by path
        - path: model.safetensors
          size: 1234
          component: model
          sha256: ...                    # LFS files: the Hub's sha256
        - path: config.json
          size: 56
          component: model
          git_sha1: ...                  # small files: the Hub's git blob id

``signed_by`` (optional) names the one key or Sigstore identity the model's ``model.sig`` must
be signed by: the guard then refuses the model unless its folder holds a signature that verifies
with it (as ``MODELGUARD_REQUIRE_SIGNATURE=1`` with that key, for this model only), and
``verify --lock`` checks it too. It holds either ``public_key: PATH`` or ``identity`` and
``identity_provider`` (an issuer URL), never both; it is validated strictly (:class:`SignedBy`).

Each entry is the body of a schema-1 manifest (``modelguard: 1`` and ``model:`` are implied
by the key) plus its ``revision``, and is validated as one (:func:`~modelguard.manifest_schema.validate_manifest`).
Output is sorted and stable: writing the same lock twice gives the same bytes, and the
file is replaced atomically. The lock is read once per process and kept while the file's
stat key is unchanged (:func:`cached_lock`).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from shlex import quote
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .errors import ManifestError, UsageError
from .hashing import stat_key
from .manifest import MAX_MANIFEST_BYTES, Manifest, dump_yaml, load_yaml_text, write_text_atomic
from .manifest_schema import SCHEMA_VERSION, validate_manifest
from .registry import looks_like_model_id

LOCK_NAME = "modelguard.lock"
ENV_LOCK = "MODELGUARD_LOCK"
LOCK_SCHEMA = 1
HEADER = "# modelguard lockfile (schema 1). Update with `modelguard lock add ORG/NAME[@REV]`.\n"
ENTRY_KEYS = ("revision", "signed_by", "description", "components", "files")
SIGNED_BY_KEYS = ("public_key", "identity", "identity_provider")
_ISSUER_URL = re.compile(r"\Ahttps?://[^\s/]+\S*\Z")
_COMMIT = re.compile(r"\A[0-9a-f]{40}\Z")


@dataclass(frozen=True)
class SignedBy:
    """Who a locked model must be signed by: a PEM public key (``public_key``, as written in the
    lock: a relative path is relative to the lock file's folder), or a Sigstore ``identity``
    with its ``identity_provider``."""

    public_key: str | None = None
    identity: str | None = None
    identity_provider: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {k: v for k in sorted(SIGNED_BY_KEYS) if (v := getattr(self, k)) is not None}

    def key_path(self, lock_path: str | os.PathLike[str] | None) -> str | None:
        """The public key's path: relative paths from the folder of the lock at ``lock_path``."""
        if self.public_key is None:
            return None
        key = os.path.expanduser(self.public_key)
        if lock_path is None or os.path.isabs(key):
            return key
        return os.path.join(os.path.dirname(os.path.abspath(lock_path)), key)

    def describe(self) -> str:
        if self.public_key is not None:
            return f"the key {self.public_key}"
        return f"the identity {self.identity} (issued by {self.identity_provider})"


@dataclass(frozen=True)
class LockEntry:
    """One locked model: its id, the commit it is pinned to, and its files (a :class:`Manifest`
    whose ``model`` and ``revision`` are the entry's); ``signed_by``: who must have signed it."""

    model_id: str
    revision: str
    manifest: Manifest
    signed_by: SignedBy | None = None

    def to_dict(self) -> dict[str, Any]:
        body = self.manifest.to_dict()
        out: dict[str, Any] = {"revision": self.revision}
        if self.signed_by is not None:
            out["signed_by"] = self.signed_by.to_dict()
        for key in ("description", "components", "files"):
            if key in body:
                out[key] = body[key]
        return out

    @property
    def label(self) -> str:
        return f"{self.model_id}@{self.revision}"


def make_entry(model_id: str, manifest: Manifest, *, source: str | None = None,
               signed_by: SignedBy | None = None) -> LockEntry:
    """A :class:`LockEntry` for ``manifest`` (its revision must be a commit)."""
    revision = manifest.revision or ""
    if not _COMMIT.match(revision):
        raise UsageError(
            f"{model_id}: a lock pins a commit, not {revision or 'no revision'!r}",
            expected="a commit id (40 hexadecimal digits)", actual=revision or None,
            remedy=f"name the commit: modelguard lock add {model_id}@COMMIT",
        )
    pinned = Manifest(model=model_id, revision=revision, components=manifest.components,
                      files=tuple(sorted(manifest.files, key=lambda e: e.path)),
                      source=source or manifest.source, description=manifest.description)
    return LockEntry(model_id, revision, pinned, signed_by)


@dataclass(frozen=True)
class Lock:
    """A lockfile's content (immutable): ``entries`` maps model id to :class:`LockEntry`."""

    entries: Mapping[str, LockEntry] = field(default_factory=lambda: MappingProxyType({}))
    path: Path | None = None

    def __post_init__(self) -> None:
        ordered = {key: self.entries[key] for key in sorted(self.entries)}
        object.__setattr__(self, "entries", MappingProxyType(ordered))

    def get(self, model_id: str) -> LockEntry | None:
        return self.entries.get(model_id)

    def merged(self, entries: Iterable[LockEntry]) -> Lock:
        """This lock with ``entries`` added; an entry replaces the one of the same model id, keeping
        its ``signed_by`` when the new entry names none (``lock add`` and ``lock record`` never drop a
        signer; delete ``signed_by`` from the file to drop it)."""
        combined = dict(self.entries)
        for entry in entries:
            old = combined.get(entry.model_id)
            if entry.signed_by is None and old is not None and old.signed_by is not None:
                entry = replace(entry, signed_by=old.signed_by)
            combined[entry.model_id] = entry
        return Lock(combined, self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"modelguard_lock": LOCK_SCHEMA,
                "models": {model: entry.to_dict() for model, entry in self.entries.items()}}


# --------------------------------------------------------------------------- finding


def find_lock(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The lock that applies: ``$MODELGUARD_LOCK`` (returned whether or not it exists), else the
    first ``modelguard.lock`` file in ``start`` (default: the working directory) or above; None."""
    named = os.environ.get(ENV_LOCK, "").strip()
    if named:
        return Path(os.path.abspath(os.path.expanduser(named)))
    try:
        here = Path(os.path.abspath(start if start is not None else os.getcwd()))
    except OSError:  # the working directory was removed
        return None
    for folder in (here, *here.parents):
        candidate = folder / LOCK_NAME
        if candidate.is_file():
            return candidate
    return None


def lock_source(path: str | os.PathLike[str], entry: LockEntry) -> str:
    """How reports name a lock entry: ``modelguard.lock at PATH, entry ORG/NAME@COMMIT``."""
    return f"{LOCK_NAME} at {path}, entry {entry.label}"


# --------------------------------------------------------------------------- reading


def load_lock(path: str | os.PathLike[str]) -> Lock:
    """Read and validate the lock at ``path``. Raises :class:`UsageError` when it does not exist,
    :class:`ManifestError` when it cannot be read or breaks the schema."""
    p = Path(path)
    try:
        if not p.is_file():
            if p.exists():
                raise UsageError(f"lock file {p} is not a regular file", path=p,
                                 remedy=f"point {ENV_LOCK} or --lock at a {LOCK_NAME} file")
            via_env = os.environ.get(ENV_LOCK, "").strip()
            raise UsageError(
                f"lock file {p} does not exist" + (f" (named by ${ENV_LOCK})" if via_env else ""),
                path=p, expected="a lock file", actual="nothing at that path",
                remedy=f"create it: modelguard lock add ORG/NAME --lock {_quote(p)}"
                       + (f"; or unset {ENV_LOCK}" if via_env else ""),
            )
        with open(p, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"lock file {p} cannot be read: {exc.strerror}", path=p) from None
    return parse_lock_text(raw, source=str(p), path=p)


def parse_lock_text(text: str | bytes, source: str = "<lock>", path: Path | None = None) -> Lock:
    """Parse and validate lock YAML text. Raises :class:`ManifestError`."""
    data = load_yaml_text(text, source, what="lock file")
    return validate_lock(data, source=source, path=path)


def _fail(source: str, where: str, problem: str, expected: str, actual: Any = None,
          remedy: str | None = None) -> None:
    shown = None if actual is None else (repr(actual) if len(repr(actual)) <= 80 else repr(actual)[:77] + "...")
    raise ManifestError(f"lock file {source}: {where}: {problem}", path=source, expected=expected, actual=shown,
                        remedy=remedy)


def validate_lock(data: Any, source: str = "<lock>", path: Path | None = None) -> Lock:
    """Validate parsed lock data and build a :class:`Lock`; each entry is checked as a manifest."""
    shape = "a YAML mapping with keys modelguard_lock: 1 and models: {ORG/NAME: {revision, files}}"
    if not isinstance(data, dict):
        _fail(source, "top level", "not a mapping" + (": the file is empty" if data is None else ""), shape,
              None if data is None else data, remedy="write one with `modelguard lock add ORG/NAME`")
    for key in data:
        if key not in ("modelguard_lock", "models"):
            _fail(source, "top level", f"unknown key {key!r}", "modelguard_lock, models", key,
                  remedy="remove the key; unknown keys are refused so a typo cannot weaken a check")
    version = data.get("modelguard_lock")
    if type(version) is not int or version != LOCK_SCHEMA:
        _fail(source, "modelguard_lock", "missing or unsupported lock schema version", f"{LOCK_SCHEMA}", version,
              remedy="upgrade modelguard if the lock was written by a newer version")
    models = data.get("models")
    if models is None:
        models = {}
    if not isinstance(models, dict):
        _fail(source, "models", "not a mapping", "model id -> {revision, components, files}", models)
    entries: dict[str, LockEntry] = {}
    folded: dict[str, str] = {}
    for model, body in models.items():
        if not isinstance(model, str) or not looks_like_model_id(model) or len(model) > 256:
            _fail(source, "models", f"{model!r} is not a model id", "ORG/NAME, e.g. BAAI/bge-m3", model)
        if model.lower() in folded:
            _fail(source, f"models.{model}", f"differs from {folded[model.lower()]!r} only by case",
                  "each model once", model, remedy="remove one of the two entries")
        folded[model.lower()] = model
        where = f"models.{model}"
        if not isinstance(body, dict):
            _fail(source, where, "not a mapping", "{revision: COMMIT, components: ..., files: [...]}", body)
        for key in body:
            if key not in ENTRY_KEYS:
                _fail(source, where, f"unknown key {key!r}", "one of: " + ", ".join(ENTRY_KEYS), key,
                      remedy="remove the key; the model id is the entry's key")
        revision = body.get("revision")
        if not isinstance(revision, str) or not _COMMIT.match(revision):
            _fail(source, f"{where}.revision", "not a commit", "40 lowercase hexadecimal digits", revision,
                  remedy=f"pin the commit: modelguard lock add {model}@REVISION")
        signed_by = (validate_signed_by(body["signed_by"], source, f"{where}.signed_by")
                     if "signed_by" in body else None)
        manifest = validate_manifest({"modelguard": SCHEMA_VERSION, "model": model,
                                      **{k: v for k, v in body.items() if k != "signed_by"}},
                                     source=f"{source} (entry {model})")
        entry = LockEntry(model, revision, manifest)
        label = lock_source(path if path is not None else source, entry)
        entries[model] = make_entry(model, manifest, source=label, signed_by=signed_by)
    return Lock(entries, path)


def validate_signed_by(data: Any, source: str = "<lock>", where: str = "signed_by") -> SignedBy:
    """A :class:`SignedBy` from an entry's ``signed_by`` value: ``{public_key: PATH}`` or
    ``{identity: EMAIL_OR_URI, identity_provider: URL}``; :class:`ManifestError` for anything else."""
    shape = "{public_key: PATH} or {identity: EMAIL_OR_URI, identity_provider: ISSUER_URL}"
    if not isinstance(data, dict) or not data:
        _fail(source, where, "not a mapping naming a key or an identity", shape, data,
              remedy="write it with: modelguard lock add ORG/NAME --signed-by-key KEY.pem")
    for key in data:
        if key not in SIGNED_BY_KEYS:
            _fail(source, where, f"unknown key {key!r}", "one of: " + ", ".join(SIGNED_BY_KEYS), key,
                  remedy="remove the key; unknown keys are refused so a typo cannot weaken a check")
    for key, value in data.items():
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            _fail(source, f"{where}.{key}", "not a non-empty string without surrounding spaces", "a string", value)
    if "public_key" in data and ("identity" in data or "identity_provider" in data):
        _fail(source, where, "names both a public key and a Sigstore identity", shape,
              ", ".join(sorted(data)), remedy="keep the one the model is signed with")
    if "public_key" in data:
        return SignedBy(public_key=data["public_key"])
    if "identity" not in data:
        _fail(source, where, "identity_provider without an identity", shape, ", ".join(sorted(data)),
              remedy="add the signer's identity: identity: EMAIL_OR_URI")
    if "identity_provider" not in data:
        _fail(source, where, f"the identity {data['identity']} without its identity_provider: any provider "
              "could vouch for it", shape, ", ".join(sorted(data)),
              remedy="add the OIDC issuer the signer logged in with: identity_provider: URL")
    if not _ISSUER_URL.match(data["identity_provider"]):
        _fail(source, f"{where}.identity_provider", "not an issuer URL", "a URL such as https://accounts.google.com",
              data["identity_provider"])
    return SignedBy(identity=data["identity"], identity_provider=data["identity_provider"])


# --------------------------------------------------------------------------- writing


def dump_lock(lock: Lock) -> str:
    """Stable, sorted, diff-friendly YAML for ``lock``."""
    return dump_yaml(lock.to_dict(), HEADER)


def write_lock(path: str | os.PathLike[str], lock: Lock) -> Path:
    """Write ``lock`` to ``path`` atomically; the same lock always gives the same bytes."""
    return write_text_atomic(path, dump_lock(lock))


# --------------------------------------------------------------------------- the lock of this process

_memo: dict[str, tuple[Any, Lock]] = {}
_memo_lock = threading.Lock()


def cached_lock(path: str | os.PathLike[str]) -> Lock:
    """:func:`load_lock`, remembered per path while the file's stat key (inode, size, times) is
    unchanged: a guarded load costs one stat, not a parse."""
    key_path = os.path.abspath(path)
    try:
        key = stat_key(os.stat(key_path))
    except OSError:
        return load_lock(key_path)  # raises the clear error
    with _memo_lock:
        known = _memo.get(key_path)
    if known is not None and known[0] == key:
        return known[1]
    lock = load_lock(key_path)
    with _memo_lock:
        _memo[key_path] = (key, lock)
    return lock


def current_lock(start: str | os.PathLike[str] | None = None) -> Lock | None:
    """The lock that applies here (:func:`find_lock`), read once per process; None when there is none."""
    path = find_lock(start)
    return None if path is None else cached_lock(path)


def _quote(path: Any) -> str:
    return quote(os.fspath(path))
