"""Writing an OpenSSF model signature: ``modelguard sign DIR`` / :func:`sign_directory` makes a
standard ``model.sig`` with the ``model-signing`` library (imported only here, when signing),
with a private key or through Sigstore, and adds the file sizes under the predicate key
``modelguard`` so a truncated file is diagnosed."""

from __future__ import annotations

import os
from pathlib import Path
from shlex import quote
from typing import Any, Iterable, Mapping

from .errors import UsageError
from .signature_bundle import PREDICATE_KEY, SIGNATURE_NAME, SignedStatement, library, short_error
from .signature_sigstore import sign_with_sigstore, sigstore_signer


def sign_directory(
    directory: str | os.PathLike[str],
    *,
    private_key: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    password: str | None = None,
    ignore_paths: Iterable[str | os.PathLike[str]] = (),
    sigstore: bool = False,
    use_staging: bool = False,
    identity_token: str | None = None,
    trust_config: str | os.PathLike[str] | None = None,
) -> tuple[Path, SignedStatement]:
    """Sign every file of ``directory`` with the PEM elliptic-curve ``private_key``, or with
    ``sigstore`` (keyless: the identity of ``identity_token``, else of ambient CI credentials,
    else of a browser login, certified by Sigstore's production instance, its staging instance
    with ``use_staging``, or the one a client ``trust_config`` file describes; needs the network).

    Writes a standard model_signing bundle (``files`` serialization, sha256, git paths and the
    signature itself ignored, like ``model_signing sign key``) to ``output`` (default
    ``DIR/model.sig``) and returns its path with the statement. The signed predicate also
    records each file's size under ``modelguard`` (other verifiers ignore it).
    """
    root = Path(directory)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory" if root.exists() else f"model directory {root} does not exist",
                         path=root, expected="the folder of the model to sign")
    if (private_key is None) == (not sigstore):
        raise UsageError(
            "signing needs a private key or Sigstore (one of the two)",
            expected="--private-key KEY.pem, or --sigstore", actual="both" if sigstore else "neither",
            remedy=f"modelguard sign {quote(str(root))} --private-key KEY.pem (or --sigstore, online)",
        )
    if not sigstore and (use_staging or identity_token is not None or trust_config is not None):
        raise UsageError("--use-staging, --identity-token and --trust-config apply to --sigstore only",
                         remedy="add --sigstore, or leave them out to sign with the key")
    if sigstore and password is not None:
        raise UsageError("--password applies to --private-key only", remedy="leave out --password")
    out = Path(output) if output is not None else root / SIGNATURE_NAME
    _, sign_ec_key, _, signing = library()
    from model_signing import hashing
    if sigstore:
        signer = sigstore_signer(use_staging=use_staging, identity_token=identity_token, trust_config=trust_config)
    else:
        signer = _key_signer(sign_ec_key, private_key, password)
    model_root = root.resolve()
    ignored = []
    for p in [*ignore_paths, out]:
        candidate = Path(os.path.abspath(p)).resolve()
        try:
            ignored.append(candidate.relative_to(model_root))
        except ValueError:
            continue
    config = hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=True)
    try:
        manifest = config.hash(root)
    except ValueError as exc:  # e.g. a symlink: model_signing refuses it unless allowed
        raise UsageError(f"{root} cannot be signed: {short_error(exc)}", path=root,
                         remedy="replace links with the files they point to, then sign again") from None
    payload = signing.Payload(manifest)
    sizes = {}
    for descriptor in manifest.resource_descriptors():
        sizes[str(descriptor.identifier)] = os.stat(root / str(descriptor.identifier)).st_size
    _add_sizes(payload, sizes)
    if sigstore:
        signature, signed_by = sign_with_sigstore(signer, payload)
    else:
        signature, signed_by = signer.sign(payload), f"public key {_spki_of_private(signer)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    signature.write(tmp)
    os.replace(tmp, out)
    digests = {str(d.identifier): d.digest.digest_hex for d in manifest.resource_descriptors()}
    serialization = dict(manifest.serialization_type)
    return out, SignedStatement(
        signature=str(out), model_name=str(manifest.model_name),
        signer=signed_by, serialization=serialization,
        ignore_paths=tuple(str(p) for p in serialization.get("ignore_paths", ())), digests=digests, sizes=sizes,
    )


def _key_signer(sign_ec_key: Any, private_key: str | os.PathLike[str], password: str | None) -> Any:
    try:
        return sign_ec_key.Signer(Path(private_key), password)
    except OSError as exc:
        raise UsageError(f"private key {private_key} cannot be read: {exc.strerror or exc}", path=private_key,
                         remedy="check the path of the key") from None
    except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: not an EC key (RSA has no curve)
        raise UsageError(
            f"private key {private_key} cannot be used: {short_error(exc)}", path=private_key,
            expected="a PEM elliptic-curve private key (P-256, P-384 or P-521), e.g. made with "
                     "`openssl ecparam -name prime256v1 -genkey -noout -out private.pem`",
            remedy="pass an unencrypted EC key, or its password with --password",
        ) from None


def _add_sizes(payload: Any, sizes: Mapping[str, int]) -> None:
    """Record ``sizes`` in the payload's predicate (a protobuf Struct) under PREDICATE_KEY."""
    predicate = payload.statement.pb.predicate
    predicate.update({PREDICATE_KEY: {"sizes": {name: size for name, size in sorted(sizes.items())}}})


def _spki_of_private(signer: Any) -> str:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    raw = signer._private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(raw).hexdigest()
