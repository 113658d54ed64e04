"""Reading an OpenSSF model signature (``model.sig``): the bundle checked with the
``model-signing`` library against a public key or a certificate chain, the signed file list
as a :class:`SignedStatement`, and a cache of signatures already checked.

:mod:`modelguard.signing` verifies folders with it, writes signatures and enforces them at
load. ``model_signing`` is imported only when a signature is checked without a cache hit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from .env import ENV_PUBLIC_KEY, ENV_REQUIRE_SIGNATURE  # noqa: F401 - re-exported to signing
from .errors import SignatureFormatError, UsageError
from .hashing import stat_key
from .manifest import validate_manifest
from .statcache import cache_disabled_by_env, default_cache_dir

SIGNATURE_NAME = "model.sig"
SIGNED_COMPONENT = "signed"
PREDICATE_KEY = "modelguard"  # where sign_directory records file sizes inside the signed predicate
CACHE_FORMAT = 1
# As for the digest cache: a signature file changed within this window could change again
# inside one timestamp tick without changing its stat key, so it is not remembered.
RACY_WINDOW_NS = 2_000_000_000
INSTALL_HINT = "pip install 'modelguard[signing]'  (model-signing 1.1.1 and pyopenssl)"
# What model_signing ignores by default when it signs (its CLI adds the signature file itself).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


@dataclass(frozen=True)
class SignedStatement:
    """A signature that verified: who signed, how, and the files it lists.

    ``signer``: ``public key sha256:<hex>`` (the sha256 of the key's PEM
    SubjectPublicKeyInfo, as model_signing records it) or ``certificate <subject>``;
    ``ignore_paths``: the paths the signer left out (relative to the model folder);
    ``sizes_signed``: whether the statement records file sizes (signed by modelguard).
    """

    signature: str
    model_name: str
    signer: str
    serialization: Mapping[str, Any]
    ignore_paths: tuple[str, ...]
    digests: Mapping[str, str]
    sizes: Mapping[str, int]
    cached: bool = False

    @property
    def sizes_signed(self) -> bool:
        return bool(self.sizes) and set(self.sizes) == set(self.digests)

    def manifest(self, directory: str | os.PathLike[str]) -> Any:
        """The modelguard manifest of the signed files. Sizes not in the statement are taken
        from the files in ``directory`` (a wrong file then shows as a digest mismatch)."""
        files = []
        for path in sorted(self.digests):
            size = self.sizes.get(path)
            if size is None:
                try:
                    size = os.stat(os.path.join(directory, path)).st_size
                except (OSError, ValueError):
                    size = 0
            files.append({"path": path, "size": size, "sha256": self.digests[path], "component": SIGNED_COMPONENT})
        if not files:
            raise SignatureFormatError(
                f"signature {self.signature} lists no files", path=self.signature,
                expected="at least one signed file", actual="an empty resource list",
                remedy="sign the model folder again: modelguard sign DIR --private-key KEY.pem",
            )
        data = {
            "modelguard": 1, "model": self.model_name or "signed-model",
            "components": {SIGNED_COMPONENT: {"required": True, "description": f"signed by {self.signer}"}},
            "files": files,
        }
        return validate_manifest(data, source=f"{self.signature} (signed by {self.signer})")

    def is_ignored(self, relative: str) -> bool:
        """Whether ``relative`` lies under a path the signer left out (or is the signature)."""
        for ignored in (*self.ignore_paths, *GIT_PATHS):
            ignored = ignored.rstrip("/")
            if relative == ignored or relative.startswith(ignored + "/"):
                return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "signature": self.signature, "model_name": self.model_name, "signer": self.signer,
            "serialization": dict(self.serialization), "ignore_paths": list(self.ignore_paths),
            "files": len(self.digests), "sizes_signed": self.sizes_signed, "cached": self.cached,
        }


# --------------------------------------------------------------------------- the library


def library() -> Any:
    """``model_signing`` (imported on first need), or a UsageError saying how to install it."""
    try:
        import model_signing  # noqa: F401
        from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb, signing
    except ImportError as exc:
        raise UsageError(
            f"signature support needs the model-signing library, which cannot be imported ({exc})",
            expected="model-signing 1.1.1 with pyopenssl", actual=str(exc),
            remedy=INSTALL_HINT,
        ) from None
    return sign_certificate, sign_ec_key, sign_sigstore_pb, signing


def read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(
            f"{what} {path} cannot be read: {exc.strerror or exc}", path=path,
            remedy=f"check the path of the {what}",
        ) from None


def fingerprint(*parts: bytes) -> str:
    import hashlib

    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def stat_list(st: os.stat_result) -> list[int]:
    return list(stat_key(st))


# --------------------------------------------------------------------------- cache of checked signatures

checked_statements: dict[tuple[Any, ...], SignedStatement] = {}


def _store_dir() -> Path | None:
    if cache_disabled_by_env():
        return None
    return default_cache_dir() / "signatures" / f"v{CACHE_FORMAT}"


def _usable(folder: Path, create: bool) -> bool:
    try:
        if create:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.stat(folder)
    except OSError:
        return False
    getuid = getattr(os, "getuid", None)
    return (getuid is None or st.st_uid == getuid()) and not st.st_mode & 0o022


def cached_statement(key: tuple[Any, ...]) -> SignedStatement | None:
    hit = checked_statements.get(key)
    if hit is not None:
        return hit
    folder = _store_dir()
    if folder is None or not _usable(folder, create=False):
        return None
    try:
        import json

        with open(folder / (fingerprint(repr(key).encode()) + ".json"), "rb") as f:
            entry = json.loads(f.read(64 * 1024 * 1024))
        if entry.get("format") != CACHE_FORMAT or entry.get("key") != repr(key):
            return None
        s = entry["statement"]
        statement = SignedStatement(
            signature=str(s["signature"]), model_name=str(s["model_name"]), signer=str(s["signer"]),
            serialization=dict(s["serialization"]), ignore_paths=tuple(str(p) for p in s["ignore_paths"]),
            digests={str(k): str(v) for k, v in s["digests"].items()},
            sizes={str(k): int(v) for k, v in s["sizes"].items()}, cached=True,
        )
    except Exception:  # anything odd is a miss, never a pass
        return None
    checked_statements[key] = statement
    return statement


def store_statement(key: tuple[Any, ...], st: os.stat_result, statement: SignedStatement) -> None:
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_WINDOW_NS:
        return
    checked_statements[key] = replace(statement, cached=True)
    folder = _store_dir()
    if folder is None or not _usable(folder, create=True):
        return
    tmp = None
    try:
        import json
        import tempfile

        document = {"format": CACHE_FORMAT, "key": repr(key), "statement": {
            "signature": statement.signature, "model_name": statement.model_name, "signer": statement.signer,
            "serialization": dict(statement.serialization), "ignore_paths": list(statement.ignore_paths),
            "digests": dict(statement.digests), "sizes": dict(statement.sizes)}}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f)
        os.replace(tmp, folder / (fingerprint(repr(key).encode()) + ".json"))
        tmp = None
    except Exception:
        return
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def forget_checked_signatures() -> None:
    """Forget every checked signature remembered in this process (the durable store stays)."""
    checked_statements.clear()


def malformed(path: Path, detail: str) -> SignatureFormatError:
    return SignatureFormatError(
        f"{path} is not a readable model signature: {detail}", path=path,
        expected="a Sigstore bundle (JSON) written by `model_signing sign` or `modelguard sign`",
        remedy="sign the model again (modelguard sign DIR --private-key KEY.pem), or get the publisher's model.sig",
    )


def short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
