# over 450 lines: checking a signature, the signed folder and enforcing it at load share one statement cache.
"""OpenSSF model signatures (the ``model-signing`` library) read, written and enforced.

A signature (``model.sig``: a Sigstore bundle whose DSSE envelope holds an in-toto
statement listing one sha256 per file) is one more source of expectations. The
cryptographic check is the ``model-signing`` library's own; the files it lists are then
checked by modelguard's verify engine, with its diagnoses, reports and digest cache.

- :func:`read_signature` verifies the bundle against a public key or a certificate chain
  and returns the signed file list as a :class:`SignedStatement` (its ``manifest`` is a
  modelguard :class:`~modelguard.manifest.Manifest`);
- :func:`verify_signed` does that, then verifies the folder;
- :func:`sign_directory` writes a standard ``model.sig`` that ``model_signing verify``
  accepts; modelguard adds the file sizes under the predicate key ``modelguard`` (ignored
  by other verifiers) so a truncated file is diagnosed as such;
- :func:`enforce_before_load` is what the loader guard runs for a folder holding ``model.sig``.

Only the ``files`` serialization with sha256 is accepted (``model_signing``'s default):
a ``shards`` signature or another hash is refused with a message (exit 2). Keyless Sigstore
signatures are checked against an identity and its provider (:mod:`modelguard.signature_sigstore`);
Sigstore's trust root comes from the network, so offline they fail with a clear error (exit 2).

``model_signing`` is imported only when a signature is checked without a cache hit or
written, never by ``import modelguard``. Install it with ``pip install 'modelguard[signing]'``.
"""

from __future__ import annotations

import os
from shlex import quote
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from .engine import verify_directory
from .errors import SignatureError, SigstoreUnavailableError, UsageError, VerificationError
from .fs import IGNORED_NAMES
from .policy import GuardWarning
from .report import format_report
from .hashing import stat_key
from .signature_bundle import (CACHE_FORMAT, ENV_PUBLIC_KEY, ENV_REQUIRE_SIGNATURE, GIT_PATHS, INSTALL_HINT,
                               PREDICATE_KEY, RACY_WINDOW_NS, SIGNATURE_NAME, SIGNED_COMPONENT, SignedStatement,
                               cached_statement, fingerprint, forget_checked_signatures, library, malformed, read_bytes,
                               short_error, stat_list, store_statement)
from .signature_sigstore import (ENV_IDENTITY, ENV_IDENTITY_PROVIDER, ENV_TRUST_CONFIG, SigstoreTrust,
                                 configured_identity, describe_identity, forget_verifiers, made_with_certificate,
                                 make_trust, signing_certificate, verify_sigstore)
from .signature_writing import sign_directory

__all__ = [
    "CACHE_FORMAT", "ENV_IDENTITY", "ENV_IDENTITY_PROVIDER", "ENV_PUBLIC_KEY", "ENV_REQUIRE_SIGNATURE",
    "ENV_TRUST_CONFIG", "GIT_PATHS", "INSTALL_HINT", "PREDICATE_KEY", "RACY_WINDOW_NS", "SIGNATURE_NAME",
    "SIGNED_COMPONENT", "SignedStatement", "SigstoreTrust", "clear_cache", "configured_identity",
    "configured_public_key",
    "enforce_before_load", "explain", "format_signature", "read_signature", "sign_directory", "signature_required",
    "verify_signed",
]
from .sniff import SNIFF_BYTES, parse_lfs_pointer


# --------------------------------------------------------------------------- reading


def read_signature(
    signature: str | os.PathLike[str],
    *,
    public_key: str | os.PathLike[str] | None = None,
    certificate_chain: Iterable[str | os.PathLike[str]] = (),
    identity: str | None = None,
    identity_provider: str | None = None,
    use_staging: bool = False,
    trust_config: str | os.PathLike[str] | None = None,
    cache: bool = True,
) -> SignedStatement:
    """Verify the bundle ``signature`` cryptographically and return what it signs.

    Exactly one source of trust is needed: ``public_key`` (a PEM elliptic-curve public key,
    as ``model_signing verify key`` takes), ``certificate_chain`` (PEM certificates, as
    ``model_signing verify certificate``), or a Sigstore ``identity`` with its
    ``identity_provider`` (the OIDC issuer URL; ``use_staging`` or a client ``trust_config``
    file choose the instance, as ``model_signing verify sigstore`` takes them). Raises
    :class:`SignatureError` (exit 1) for a signature that does not verify (tampered
    statement, another key, untrusted certificate, another identity),
    :class:`SignatureFormatError` (exit 2) for a file that is not a readable signature,
    :class:`SigstoreUnavailableError` (exit 2) when Sigstore's trust root cannot be fetched,
    and :class:`UsageError` (exit 2) for a bad key or an unsupported serialization.

    With ``cache`` (default), a signature already checked with the same key and unchanged
    since (same stat) is not checked again: the answer is remembered in this process and
    in the user's modelguard cache folder, so ``model_signing`` is not even imported.
    """
    chain = [os.fspath(c) for c in certificate_chain]
    sigstore = make_trust(identity, identity_provider, use_staging=use_staging, trust_config=trust_config)
    given = [name for name, value in (("a public key", public_key is not None), ("a certificate chain", chain),
                                      ("a Sigstore identity", sigstore is not None)) if value]
    if len(given) != 1:
        raise UsageError(
            "checking a signature needs a public key, a certificate chain or a Sigstore identity (one of them)",
            expected="--public-key KEY.pem, --certificate-chain CA.pem, or --identity ID --identity-provider URL",
            actual=" and ".join(given) if given else "neither",
            remedy=f"pass the public key of the signer (or set {ENV_PUBLIC_KEY}=KEY.pem)" if not given
            else "pass only the one the signer used",
        )
    path = Path(signature)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(
            f"signature {path} cannot be read: {exc.strerror or exc}", path=path,
            expected="a model.sig file written by `model_signing sign` or `modelguard sign`",
            remedy="check the path; sign the model with: modelguard sign DIR --private-key KEY.pem",
        ) from None
    if sigstore is not None:
        trust: tuple[Any, ...] = sigstore.cache_token()
    elif public_key is not None:
        trust = ("key", fingerprint(read_bytes(public_key, "public key")))
    else:
        trust = ("chain", fingerprint(*(read_bytes(c, "certificate chain file") for c in chain)))
    key = (os.path.realpath(path), tuple(stat_list(st)), trust)
    if cache:
        hit = cached_statement(key)
        if hit is not None:
            return hit
    statement = _check(path, public_key, chain, sigstore)
    if cache:
        store_statement(key, st, statement)
    return statement


def _check(path: Path, public_key: str | os.PathLike[str] | None, chain: list[str],
           sigstore: SigstoreTrust | None = None) -> SignedStatement:
    sign_certificate, sign_ec_key, sign_sigstore_pb, signing = library()
    verifier = None if sigstore is not None else _verifier(sign_certificate, sign_ec_key, public_key, chain)
    try:
        bundle = sign_sigstore_pb.Signature.read(path)
    except UnicodeDecodeError:
        raise malformed(path, "it is not text (a Sigstore bundle is JSON)") from None
    except ValueError as exc:  # json.JSONDecodeError and pydantic's ValidationError are ValueErrors
        raise malformed(path, short_error(exc)) from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise malformed(path, f"a required field is missing or of the wrong type ({short_error(exc)})") from None
    if sigstore is not None:
        payload_type, payload = verify_sigstore(path, bundle, sigstore)
    else:
        payload_type, payload = _verify_bundle(verifier, bundle, path, public_key, chain)
    if payload_type != signing._IN_TOTO_JSON_PAYLOAD_TYPE:
        raise malformed(path, f"the envelope holds {payload_type!r}, not an in-toto statement")
    import json

    try:
        statement = json.loads(payload)
        if statement["_type"] != signing._IN_TOTO_STATEMENT_TYPE:
            raise ValueError(f"statement type {statement['_type']!r}, expected {signing._IN_TOTO_STATEMENT_TYPE}")
        parsed = signing.dsse_payload_to_manifest(statement)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise malformed(path, f"the signed statement cannot be read: {short_error(exc)}") from None
    serialization = dict(parsed.serialization_type)
    method, hash_type = serialization.get("method"), serialization.get("hash_type")
    if method != "files" or hash_type != "sha256":
        raise UsageError(
            f"signature {path} uses the '{method}' serialization with {hash_type}; modelguard checks "
            "per-file sha256 signatures only (model_signing's default)",
            path=path, expected="serialization method 'files', hash_type 'sha256'",
            actual=f"method {method!r}, hash_type {hash_type!r}",
            remedy="verify this signature with `model_signing verify`, or sign the model again with the "
                   "default settings (`modelguard sign DIR --private-key KEY.pem`)",
        )
    digests: dict[str, str] = {}
    for descriptor in parsed.resource_descriptors():
        digests[str(descriptor.identifier)] = descriptor.digest.digest_hex
    sizes = _signed_sizes(statement, digests)
    return SignedStatement(
        signature=str(path), model_name=str(parsed.model_name),
        signer=(describe_identity(signing_certificate(bundle)) if sigstore
                else _describe_signer(bundle, public_key, chain)),
        serialization=serialization, ignore_paths=tuple(str(p) for p in serialization.get("ignore_paths", ())),
        digests=digests, sizes=sizes,
    )


def _verifier(sign_certificate: Any, sign_ec_key: Any, public_key: Any, chain: list[str]) -> Any:
    try:
        if public_key is not None:
            return sign_ec_key.Verifier(Path(public_key))
        return sign_certificate.Verifier([Path(c) for c in chain])
    except OSError as exc:
        raise UsageError(f"{exc.filename or public_key}: {exc.strerror or exc}", path=exc.filename,
                         remedy="check the path of the key or certificate") from None
    except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: not an EC key (RSA has no curve)
        what = "public key" if public_key is not None else "certificate chain"
        given = public_key if public_key is not None else ", ".join(chain)
        raise UsageError(
            f"{what} {given} cannot be used: {short_error(exc)}", path=given,
            expected=("a PEM elliptic-curve public key (P-256, P-384 or P-521), e.g. made with "
                      "`openssl ec -in private.pem -pubout -out public.pem`") if public_key is not None
            else "PEM certificates (the signer's CA chain)",
            remedy=f"pass the signer's {what}",
        ) from None


def _verify_bundle(verifier: Any, bundle: Any, path: Path, public_key: Any, chain: list[str]) -> tuple[str, bytes]:
    """The cryptographic check (model_signing's); failures become SignatureError (exit 1)."""
    from cryptography.exceptions import InvalidSignature

    trust = f"public key {public_key}" if public_key is not None else "certificate chain " + ", ".join(chain)
    try:
        return verifier._verify_signed_content(bundle)
    except InvalidSignature:
        raise SignatureError(
            f"signature {path} does not verify with the {trust}: the signed statement was altered, "
            "or it was signed by another key",
            path=path, expected=f"a signature made with the private key of the {trust}",
            actual="the signature bytes do not match the statement",
            remedy="get the signature and the model from their publisher again, and check that you hold the publisher's key",
        ) from None
    except (IndexError, AttributeError, TypeError) as exc:
        raise malformed(path, f"the bundle has no usable envelope signature ({short_error(exc)})") from None
    except ValueError as exc:
        text = str(exc)
        if "Key mismatch" in text:
            material = getattr(getattr(bundle, "bundle", None), "verification_material", None)
            signed_with = getattr(getattr(material, "public_key", None), "hint", None)
            raise SignatureError(
                f"signature {path} was made by another key, not the {trust}",
                path=path, expected=f"signed by the key {_spki_hint(public_key) or public_key}",
                actual=f"signed by the key sha256:{signed_with}",
                remedy="use the public key of the publisher who signed this model, or ask them to sign it with "
                       "the key you trust",
            ) from None
        if "media type" in text:
            raise malformed(path, short_error(exc)) from None
        raise SignatureError(
            f"signature {path} does not verify with the {trust}: {short_error(exc)}", path=path,
            remedy="get the signature and the model from their publisher again",
        ) from None
    except Exception as exc:  # pyOpenSSL's X509StoreContextError: the certificate is not trusted
        if type(exc).__name__ == "X509StoreContextError":
            raise SignatureError(
                f"signature {path}: the signing certificate is not trusted by the {trust}: {short_error(exc)}",
                path=path, expected="a signing certificate issued under the given chain",
                remedy="pass the chain that issued the signer's certificate (--certificate-chain)",
            ) from None
        raise


def _spki_hint(public_key: Any) -> str | None:
    """``sha256:<hex>`` of the key's PEM SubjectPublicKeyInfo: model_signing's key hint."""
    if public_key is None:
        return None
    try:
        import hashlib

        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_public_key(Path(public_key).read_bytes())
        raw = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256:" + hashlib.sha256(raw).hexdigest()
    except Exception:
        return None


def _describe_signer(bundle: Any, public_key: Any, chain: list[str]) -> str:
    """``bundle``: the model_signing Signature read from the file."""
    if public_key is not None:
        return f"public key {_spki_hint(public_key) or os.fspath(public_key)}"
    try:
        from cryptography import x509

        raw = bundle.bundle.verification_material.x509_certificate_chain.certificates[0].raw_bytes
        return "certificate " + x509.load_der_x509_certificate(raw).subject.rfc4514_string()
    except Exception:
        return "certificate chain " + ", ".join(chain)


def _signed_sizes(statement: Mapping[str, Any], digests: Mapping[str, str]) -> dict[str, int]:
    """The file sizes modelguard records in the signed predicate, when present and well-formed."""
    extra = statement.get("predicate", {}).get(PREDICATE_KEY)
    sizes = extra.get("sizes") if isinstance(extra, dict) else None
    if not isinstance(sizes, dict):
        return {}
    out = {}
    for name, size in sizes.items():
        if name in digests and isinstance(size, (int, float)) and not isinstance(size, bool) \
                and size >= 0 and int(size) == size:
            out[name] = int(size)
    return out if set(out) == set(digests) else {}


# --------------------------------------------------------------------------- verifying a folder


def verify_signed(
    signature: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    public_key: str | os.PathLike[str] | None = None,
    certificate_chain: Iterable[str | os.PathLike[str]] = (),
    identity: str | None = None,
    identity_provider: str | None = None,
    use_staging: bool = False,
    trust_config: str | os.PathLike[str] | None = None,
    strict_extra: bool = False,
    all_digests: bool = False,
    cache: Any = True,
    progress: Any = None,
) -> tuple[SignedStatement, Any]:
    """Check the signature (trusting what :func:`read_signature` takes), then every file it
    lists in ``directory`` with the verify engine.

    Returns ``(statement, report)``; ``report.extra_files`` are the files the signature
    does not cover (the paths its signer ignored, such as ``.git`` and the signature
    itself, left out); with ``strict_extra`` they fail the report.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(
            f"model directory {root} does not exist" if not root.exists() else f"{root} is not a directory",
            path=root, expected="the folder the signature was made for",
        )
    statement = read_signature(signature, public_key=public_key, certificate_chain=certificate_chain,
                               identity=identity, identity_provider=identity_provider, use_staging=use_staging,
                               trust_config=trust_config, cache=cache is not False)
    manifest = statement.manifest(root)
    report = verify_directory(manifest, root, strict_extra=strict_extra, all_digests=all_digests, cache=cache,
                    progress=progress)
    return statement, explain(statement, report, signature)


def explain(statement: SignedStatement, report: Any, signature: str | os.PathLike[str]) -> Any:
    """The report with signature-specific detail: LFS stubs among mismatches, extra files
    filtered by the signer's ignore list."""
    sig_rel = _relative_to(signature, report.directory)
    extra = tuple(p for p in report.extra_files if p != sig_rel and not statement.is_ignored(p))
    files = report.files
    if not statement.sizes_signed:
        files = tuple(_refine(r, report.directory) for r in files)
    return replace(report, files=files, extra_files=extra)


def _relative_to(path: str | os.PathLike[str], directory: str) -> str | None:
    try:
        return Path(os.path.realpath(path)).relative_to(os.path.realpath(directory)).as_posix()
    except ValueError:
        return None


def _refine(result: Any, directory: str) -> Any:
    """Without signed sizes, a file of the wrong length shows as a digest mismatch: say
    when it is a Git LFS pointer to the signed file, and that it may be truncated."""
    if result.status != "failed":
        return result
    # The size the engine compared with was the file's own: it is no expectation.
    result = replace(result, expected={k: v for k, v in result.expected.items() if k != "size"})
    if result.diagnosis != "digest_mismatch":
        return result
    try:
        with open(os.path.join(directory, result.path), "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return result
    pointer = parse_lfs_pointer(head)
    expected_sha = result.expected.get("sha256")
    if pointer is not None:
        same = pointer["oid_sha256"] == expected_sha
        detail = ("this is the pointer to the signed file: run `git lfs pull`" if same
                  else f"a pointer to a DIFFERENT file (oid {pointer['oid_sha256']}): the clone is at another revision")
        return replace(result, diagnosis="lfs_pointer",
                       message=f"is a Git LFS pointer stub ({result.actual.get('size')} bytes), not the file; {detail}",
                       actual={**result.actual, "lfs_oid_sha256": pointer["oid_sha256"], "lfs_size": pointer["size"]},
                       remedy=f"cd {quote(str(directory))} && git lfs pull --include {quote(str(result.path))}")
    message = result.message.replace("right size, wrong content: ", "wrong content: ", 1)
    return replace(result, message=message + " (the signature records no sizes: a truncated or "
                                             "partly written file also shows this way)",
                   remedy=f"restore {result.path} from the publisher of the signed model")


def format_signature(statement: SignedStatement) -> str:
    """One line for reports: the signature that verified and who signed it."""
    how = ", cached" if statement.cached else ""
    return (f"signature ok: {statement.signature} signed by {statement.signer} "
            f"({len(statement.digests)} file(s){how})")


# --------------------------------------------------------------------------- at load


def configured_public_key(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The key the guard checks signatures with: ``explicit``, else ``$MODELGUARD_PUBLIC_KEY``."""
    if explicit is not None:
        return os.fspath(explicit)
    raw = os.environ.get(ENV_PUBLIC_KEY, "").strip()
    return os.path.expanduser(raw) if raw else None


def signature_required(explicit: bool | None = None) -> bool:
    """``explicit``, else ``$MODELGUARD_REQUIRE_SIGNATURE`` (1/true/yes/on)."""
    if explicit is not None:
        return bool(explicit)
    raw = os.environ.get(ENV_REQUIRE_SIGNATURE, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise UsageError(
        f"${ENV_REQUIRE_SIGNATURE}={raw!r} is not a valid setting", expected="1 or 0", actual=raw,
        remedy=f"export {ENV_REQUIRE_SIGNATURE}=1 to refuse unsigned models, or unset it",
    )


# Folders whose signed files verified in this process, with the stat of every signed file and
# of every folder (a file added or removed changes its folder's stat): while none changed, a
# warm guarded load reads nothing. Only stats older than the racy window are kept.
_folders: dict[tuple[str, str, str], tuple[tuple[tuple[str, tuple[int, ...]], ...], Any]] = {}


def _stamps(directory: str | os.PathLike[str], statement: SignedStatement) -> list[tuple[str, tuple[int, ...]]] | None:
    root = os.path.realpath(directory)
    paths = [os.path.join(root, p) for p in statement.digests]
    for current, dirs, _ in os.walk(root):
        dirs[:] = [d for d in dirs if d not in IGNORED_NAMES]
        paths.append(current)
    stamps = []
    newest_allowed = time.time_ns() - RACY_WINDOW_NS
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            return None
        if max(st.st_mtime_ns, st.st_ctime_ns) > newest_allowed:
            return None
        stamps.append((path, tuple(stat_key(st))))
    return stamps


def _remember_folder(directory: str | os.PathLike[str], statement: SignedStatement, report: Any) -> None:
    stamps = _stamps(directory, statement)
    if stamps is not None:
        _folders[(os.path.realpath(directory), statement.signature, statement.signer)] = (tuple(stamps), report)


def _unchanged_report(directory: str | os.PathLike[str], statement: SignedStatement) -> Any:
    """The report of an earlier verification of this folder, if nothing in it changed since."""
    entry = _folders.get((os.path.realpath(directory), statement.signature, statement.signer))
    if entry is None:
        return None
    stamps, report = entry
    for path, key in stamps:
        try:
            if tuple(stat_key(os.stat(path))) != key:
                return None
        except OSError:
            return None
    return report


def enforce_before_load(
    directory: str | os.PathLike[str] | None,
    *,
    public_key: str | None,
    require: bool,
    loader: str,
    target: str,
    on_failure: str = "refuse",
    identity: SigstoreTrust | None = None,
) -> SignedStatement | None:
    """What the guard does before building a model from ``directory``.

    A ``model.sig`` there is checked with ``public_key`` or, for a signature made with a
    certificate, against the Sigstore ``identity`` (with both configured, the signature's
    kind chooses), and every file it lists is verified;
    failures raise (:class:`SignatureError`, :class:`VerificationError`; with ``on_failure``
    ``warn`` they warn instead). Files the signature does not cover are refused when
    ``require`` is set (the loader could read them), else a warning. With ``require``, a
    model without a signature that verifies is refused. Returns the statement, or None when
    there was nothing to check.
    """
    what = f"modelguard refused to load {target} ({loader})"
    sig = Path(directory) / SIGNATURE_NAME if directory is not None else None
    if sig is None or not sig.is_file():
        if require:
            where = f"{directory} holds no {SIGNATURE_NAME}" if directory is not None else \
                "the model is not on this machine yet, so no signature can be checked before it is downloaded"
            raise SignatureError(
                f"{what}: {ENV_REQUIRE_SIGNATURE} is set and {where}",
                path=directory if directory is not None else target,
                expected=f"a {SIGNATURE_NAME} signed by the trusted key or identity", actual="no signature",
                remedy=(f"get the model with its signature from the publisher, or sign a folder you trust: "
                        f"modelguard sign {quote(str(directory)) if directory else 'DIR'} --private-key KEY.pem; "
                        f"unset {ENV_REQUIRE_SIGNATURE} to load unsigned models"),
            )
        return None
    if public_key is None and identity is None:
        if require:
            raise UsageError(
                f"{what}: {ENV_REQUIRE_SIGNATURE} is set but no key or identity to check signatures with is configured",
                expected=f"{ENV_PUBLIC_KEY}=PATH/TO/public.pem, or {ENV_IDENTITY} and {ENV_IDENTITY_PROVIDER} "
                         "(or modelguard.install(public_key=...) / install(identity=..., identity_provider=...))",
                remedy=f"export {ENV_PUBLIC_KEY}=public.pem",
            )
        return None
    if identity is not None and (public_key is None or made_with_certificate(sig)):
        trust: dict[str, Any] = {"identity": identity.identity, "identity_provider": identity.provider,
                                 "use_staging": identity.use_staging, "trust_config": identity.trust_config}
    else:
        trust = {"public_key": public_key}
    try:
        statement = read_signature(sig, **trust)
    except SignatureError as exc:
        raise SignatureError(f"{what}: {exc.message}", path=exc.path, expected=exc.expected,
                             actual=exc.actual, remedy=exc.remedy) from None
    except SigstoreUnavailableError as exc:
        raise SigstoreUnavailableError(
            f"{what}: {exc.message}", expected=exc.expected, actual=exc.actual,
            remedy=f"load it once where Sigstore is reachable (a signature that verified is remembered while the "
                   f"file is unchanged), set {ENV_TRUST_CONFIG} to a Sigstore client trust configuration, or use "
                   f"a model signed with a key and set {ENV_PUBLIC_KEY}",
        ) from None
    report = _unchanged_report(directory, statement)
    if report is None:
        _, report = verify_signed(sig, directory, **trust)
        if report.ok:
            _remember_folder(directory, statement, report)
    if not report.ok:
        lines = [f"{what}: files do not match the signature {sig} ({statement.signer})",
                 *("  " + line for line in format_report(report, quiet=True).splitlines())]
        remedies = list(dict.fromkeys(r.remedy for r in report.failures if r.remedy))
        error = VerificationError("\n".join(lines), report=report, path=report.directory,
                                  remedy="; ".join(remedies) if remedies else None)
        if on_failure != "warn":
            raise error
        warnings.warn(str(error), GuardWarning, stacklevel=4)
    if report.extra_files:
        shown = ", ".join(report.extra_files[:10]) + (" ..." if len(report.extra_files) > 10 else "")
        message = (f"{len(report.extra_files)} file(s) in {directory} are not covered by the signature "
                   f"{sig}: {shown}")
        if require and on_failure != "warn":
            raise VerificationError(
                f"{what}: {message}; {ENV_REQUIRE_SIGNATURE} is set and the loader could read them",
                report=report, path=report.directory, expected="only files the signature lists",
                actual=shown, remedy=f"remove those files, or sign the folder again with them",
            )
        warnings.warn(f"modelguard: {message} (not verified)", GuardWarning, stacklevel=4)
    return statement


def clear_cache() -> None:
    """Forget every checked signature and verified folder remembered in this process (the
    durable store stays)."""
    forget_checked_signatures()
    forget_verifiers()
    _folders.clear()
