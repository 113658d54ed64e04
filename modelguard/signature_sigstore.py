"""Sigstore (keyless) model signatures: the signer is an identity (an email address or a
workload URI) vouched for by an OpenID Connect provider, in a short-lived certificate from
Sigstore's certificate authority, recorded in Sigstore's transparency log.

- :class:`SigstoreTrust`: the identity and identity provider a signature must name, and the
  Sigstore instance (production, staging, or a trust configuration file) that vouches for them;
- :func:`check_identity`: the bundle's certificate names that identity. Read from the bundle
  alone, before anything else, so a signature by another identity is refused even offline;
- :func:`verify_sigstore`: then ``model_signing``'s Sigstore verifier (sigstore-python): the
  certificate chains to Sigstore's CA, the transparency-log entry, the identity policy, the
  DSSE signature over the signed statement;
- :func:`sigstore_signer` / :func:`sign_with_sigstore`: ``modelguard sign --sigstore``.

Sigstore's trust root (its CA certificates and log keys) comes from its TUF repository over
the network, refreshed whenever a verifier or signer is made. Offline that fails, and the
answer is :class:`~modelguard.errors.SigstoreUnavailableError` (exit 2) saying so, unless a
trust configuration file is given. A signature that verified is remembered by the signature
cache (:mod:`modelguard.signature_bundle`), so checking the unchanged file again needs no network.

``model_signing`` and ``sigstore`` are imported only here, inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .env import ENV_IDENTITY, ENV_IDENTITY_PROVIDER
from .errors import SignatureError, SigstoreUnavailableError, UsageError
from .signature_bundle import fingerprint, read_bytes, short_error

ENV_TRUST_CONFIG = "MODELGUARD_SIGSTORE_TRUST_CONFIG"
PRODUCTION_TUF_URL = "https://tuf-repo-cdn.sigstore.dev"
STAGING_TUF_URL = "https://tuf-repo-cdn.sigstage.dev"
# Fulcio's certificate extensions: the OIDC issuer (v1: raw string; v2: DER UTF8String) and
# the "other name" SAN some identities use.
_ISSUER_V1_OID = "1.3.6.1.4.1.57264.1.1"
_ISSUER_V2_OID = "1.3.6.1.4.1.57264.1.8"
_OTHERNAME_OID = "1.3.6.1.4.1.57264.1.7"
PROVIDER_EXAMPLES = ("https://accounts.google.com, https://github.com/login/oauth, "
                     "https://token.actions.githubusercontent.com")


@dataclass(frozen=True)
class SigstoreTrust:
    """Who must have signed: ``identity`` (the certificate's email or URI) as vouched for by
    ``provider`` (the OIDC issuer URL), under Sigstore's production instance, its staging
    instance (``use_staging``) or the client trust configuration file ``trust_config``."""

    identity: str
    provider: str
    use_staging: bool = False
    trust_config: str | None = None

    def describe(self) -> str:
        where = (f", trust configuration {self.trust_config}" if self.trust_config
                 else ", Sigstore staging" if self.use_staging else "")
        return f"Sigstore identity {self.identity} (identity provider {self.provider}{where})"

    def cache_token(self) -> tuple[Any, ...]:
        """What the signature cache keys on: the identity, the provider, the instance."""
        config = fingerprint(read_bytes(self.trust_config, "trust configuration")) if self.trust_config else None
        return ("sigstore", self.identity, self.provider, bool(self.use_staging), config)

    @property
    def tuf_url(self) -> str:
        return STAGING_TUF_URL if self.use_staging else PRODUCTION_TUF_URL


def make_trust(identity: str | None, provider: str | None, *, use_staging: bool = False,
               trust_config: str | os.PathLike[str] | None = None) -> SigstoreTrust | None:
    """The :class:`SigstoreTrust` the arguments name, None when they name none; a UsageError
    for half of one (an identity without its provider, a provider that is not a URL...)."""
    if identity is None and provider is None and not use_staging and trust_config is None:
        return None
    if not identity:
        raise UsageError(
            "--identity-provider, --use-staging and --trust-config describe a Sigstore signer, "
            "but no identity is given",
            expected="--identity EMAIL_OR_URI --identity-provider ISSUER_URL",
            actual=f"identity provider {provider!r}" if provider else "no identity",
            remedy="pass the signer's identity with --identity (or set "
                   f"{ENV_IDENTITY}), or leave out the Sigstore options",
        )
    if not provider:
        raise UsageError(
            f"checking a Sigstore signature needs the identity provider too: {identity} alone could be "
            "vouched for by any provider",
            expected=f"--identity-provider ISSUER_URL (or ${ENV_IDENTITY_PROVIDER}), e.g. {PROVIDER_EXAMPLES}",
            actual="no identity provider",
            remedy=f"pass --identity-provider with the OIDC issuer the signer logged in with",
        )
    if not re.match(r"https?://[^\s/]+", provider):
        raise UsageError(
            f"identity provider {provider!r} is not an issuer URL", expected=f"a URL such as {PROVIDER_EXAMPLES}",
            actual=provider, remedy="pass the OIDC issuer URL the signer logged in with (--identity-provider)",
        )
    if use_staging and trust_config is not None:
        raise UsageError(
            "--use-staging and --trust-config both choose the Sigstore instance", actual="both given",
            expected="one of them (neither: Sigstore's production instance)", remedy="leave out one of the two",
        )
    return SigstoreTrust(identity, provider, bool(use_staging),
                         os.fspath(trust_config) if trust_config is not None else None)


def configured_identity(identity: str | None = None, provider: str | None = None,
                        trust_config: str | None = None) -> SigstoreTrust | None:
    """The identity the guard requires: the arguments (``install(identity=...,
    identity_provider=..., sigstore_trust_config=...)``), else ``$MODELGUARD_IDENTITY``,
    ``$MODELGUARD_IDENTITY_PROVIDER`` and ``$MODELGUARD_SIGSTORE_TRUST_CONFIG``."""
    identity = identity or os.environ.get(ENV_IDENTITY, "").strip() or None
    provider = provider or os.environ.get(ENV_IDENTITY_PROVIDER, "").strip() or None
    trust_config = trust_config or os.path.expanduser(os.environ.get(ENV_TRUST_CONFIG, "").strip()) or None
    if identity is None and provider is None:
        return None
    try:
        return make_trust(identity, provider, trust_config=trust_config)
    except UsageError as exc:
        raise UsageError(
            f"the guard's Sigstore identity setting is incomplete: {exc.message}",
            expected=f"{ENV_IDENTITY}=EMAIL_OR_URI and {ENV_IDENTITY_PROVIDER}=ISSUER_URL (or "
                     "modelguard.install(identity=..., identity_provider=...))",
            actual=f"{ENV_IDENTITY}={identity or ''!r}, {ENV_IDENTITY_PROVIDER}={provider or ''!r}",
            remedy=f"set both, or unset {ENV_IDENTITY} and {ENV_IDENTITY_PROVIDER}",
        ) from None


def made_with_certificate(signature: str | os.PathLike[str]) -> bool:
    """Whether the bundle's verification material is a certificate (Sigstore, or a
    certificate chain) rather than a public key; False when it cannot be read (the key
    path then reports what is wrong with the file)."""
    try:
        with open(signature, "rb") as f:
            material = json.loads(f.read(16 * 1024 * 1024)).get("verificationMaterial", {})
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(material, dict) and bool(material.get("certificate") or material.get("x509CertificateChain"))


# --------------------------------------------------------------------------- the certificate


def signing_certificate(bundle: Any) -> Any:
    """The leaf certificate of a model_signing (protobuf) bundle, or None for a key signature."""
    from cryptography import x509

    material = bundle.bundle.verification_material
    if material.certificate is not None:
        return x509.load_der_x509_certificate(material.certificate.raw_bytes)
    if material.x509_certificate_chain is not None and material.x509_certificate_chain.certificates:
        return x509.load_der_x509_certificate(material.x509_certificate_chain.certificates[0].raw_bytes)
    return None


def _der_utf8(raw: bytes) -> str:
    """A DER UTF8String's text (Fulcio's v2 extensions); the bytes as text when not one."""
    if len(raw) >= 2 and raw[0] == 0x0C:
        length, start = raw[1], 2
        if length & 0x80:
            count = length & 0x7F
            length, start = int.from_bytes(raw[2:2 + count], "big"), 2 + count
        return raw[start:start + length].decode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def certificate_identity(cert: Any) -> tuple[list[str], str | None]:
    """The identities a certificate names (SAN emails, URIs, Sigstore other names) and its
    OIDC issuer, as Sigstore's identity policy reads them."""
    from cryptography import x509
    from cryptography.x509.oid import ObjectIdentifier

    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.RFC822Name) + san.get_values_for_type(x509.UniformResourceIdentifier)
        names += [_der_utf8(o.value) for o in san.get_values_for_type(x509.OtherName)
                  if o.type_id == ObjectIdentifier(_OTHERNAME_OID)]
    except x509.ExtensionNotFound:
        pass
    issuer = None
    for oid, decode in ((_ISSUER_V1_OID, lambda b: b.decode("utf-8", "replace")), (_ISSUER_V2_OID, _der_utf8)):
        try:
            issuer = decode(cert.extensions.get_extension_for_oid(ObjectIdentifier(oid)).value.value)
            break
        except x509.ExtensionNotFound:
            continue
    return names, issuer


def describe_identity(cert: Any) -> str:
    names, issuer = certificate_identity(cert)
    return f"Sigstore identity {', '.join(names) or '(none)'} (identity provider {issuer or 'not recorded'})"


def check_identity(path: Path, bundle: Any, trust: SigstoreTrust) -> Any:
    """Refuse (SignatureError) a bundle whose certificate does not name ``trust``'s identity and
    provider, with Sigstore's own identity policy; returns the certificate. Reads only the
    bundle: nothing is trusted yet, this only refuses early."""
    cert = signing_certificate(bundle)
    expected = f"{trust.identity} (identity provider {trust.provider})"
    if cert is None:
        hint = getattr(bundle.bundle.verification_material.public_key, "hint", None)
        raise SignatureError(
            f"signature {path} was made with a key, not by a Sigstore identity", path=path,
            expected=f"a Sigstore signature by {expected}", actual=f"signed by the key sha256:{hint}",
            remedy="check it with the publisher's public key: --public-key KEY.pem (or $MODELGUARD_PUBLIC_KEY)",
        )
    from sigstore.errors import VerificationError as PolicyError
    from sigstore.verify.policy import Identity

    try:
        Identity(identity=trust.identity, issuer=trust.provider).verify(cert)
    except PolicyError:
        names, issuer = certificate_identity(cert)
        actual = f"{', '.join(names) or 'no identity'} (identity provider {issuer or 'not recorded'})"
        raise SignatureError(
            f"signature {path} was not made by the trusted identity: it was signed by {actual}", path=path,
            expected=expected, actual=actual,
            remedy="check the identity and provider the publisher signs with (both must match), or get the "
                   "model and its signature from that publisher",
        ) from None
    return cert


# --------------------------------------------------------------------------- verifying


def verify_sigstore(path: Path, bundle: Any, trust: SigstoreTrust) -> tuple[str, bytes]:
    """The identity check, then ``model_signing``'s Sigstore verifier; returns the DSSE
    payload type and payload. ``bundle``: the file as model_signing's protobuf reader read it."""
    check_identity(path, bundle, trust)
    from model_signing._signing import sign_sigstore
    from sigstore.errors import Error as SigstoreLibraryError

    try:
        signature = sign_sigstore.Signature.read(path)
    except (SigstoreLibraryError, ValueError) as exc:
        detail = short_error(exc)
        if not bundle.bundle.verification_material.tlog_entries:
            detail = "it has no transparency-log entry, as a signature made with a certificate of your own CA"
        raise SignatureError(
            f"signature {path} is not a Sigstore signature: {detail}", path=path,
            expected="a bundle with a certificate from Sigstore's CA and one transparency-log entry "
                     "(as `model_signing sign sigstore` writes)",
            actual=short_error(exc),
            remedy="a signature made under your own certificate authority is checked with --certificate-chain CA.pem",
        ) from None
    verifier = _verifier(trust, f"check the Sigstore signature {path}")
    try:
        return verifier._verify_signed_content(signature)
    except SigstoreLibraryError as exc:
        raise SignatureError(
            f"signature {path} does not verify as signed by {trust.describe()}: {short_error(exc)}", path=path,
            expected="a certificate issued by Sigstore's CA to that identity, recorded in Sigstore's transparency "
                     "log, and a signature over this statement",
            actual=short_error(exc),
            remedy="get the signature and the model from their publisher again",
        ) from None


_verifiers: dict[tuple[Any, ...], Any] = {}


def _verifier(trust: SigstoreTrust, doing: str) -> Any:
    """model_signing's Sigstore verifier for ``trust`` (made once per process: making it
    fetches Sigstore's trust root)."""
    token = trust.cache_token()
    made = _verifiers.get(token)
    if made is not None:
        return made
    from model_signing._signing import sign_sigstore
    from sigstore.errors import TUFError

    try:
        made = sign_sigstore.Verifier(identity=trust.identity, oidc_issuer=trust.provider,
                                      use_staging=trust.use_staging,
                                      trust_config=Path(trust.trust_config) if trust.trust_config else None)
    except TUFError as exc:
        raise unavailable(doing, trust.tuf_url, exc) from None
    except ValueError as exc:  # a trust configuration that is not one (pydantic's errors are ValueErrors)
        raise UsageError(
            f"trust configuration {trust.trust_config} cannot be read: {short_error(exc)}", path=trust.trust_config,
            expected="a Sigstore client trust configuration (JSON, media type "
                     "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json)",
            remedy="pass the trust configuration of the Sigstore instance the signer used, or leave out --trust-config",
        ) from None
    _verifiers[token] = made
    return made


def unavailable(doing: str, url: str, exc: BaseException, *, signing: bool = False) -> SigstoreUnavailableError:
    """The error for a trust root that cannot be fetched (``exc``: sigstore's TUFError)."""
    reason = _reason(exc)
    return SigstoreUnavailableError(
        f"cannot {doing}: Sigstore's trust root could not be fetched from {url}: {reason}",
        expected=f"network access to {url} (Sigstore's TUF repository: its CA certificates and "
                 "transparency-log keys, refreshed before each use)",
        actual=reason,
        remedy=(f"sign where {url} and Sigstore's services are reachable (directly or through HTTPS_PROXY), "
                "or sign with a key: modelguard sign DIR --private-key KEY.pem") if signing else
               (f"run where {url} is reachable (directly or through HTTPS_PROXY); offline, pass --trust-config "
                "CONFIG.json (a Sigstore client trust configuration), or use a key signature (--public-key); "
                "a signature that verified once is remembered while the file is unchanged, so checking it again "
                "needs no network"),
    )


def _reason(exc: BaseException) -> str:
    """An exception with its cause, in one line (sigstore's network errors say little themselves)."""
    cause = exc.__cause__
    text = short_error(exc) or type(exc).__name__
    if cause is None:
        return text
    return f"{text} ({type(cause).__name__}{': ' + short_error(cause) if str(cause) else ''})"


# --------------------------------------------------------------------------- signing


def sigstore_signer(*, use_staging: bool = False, identity_token: str | None = None,
                    trust_config: str | os.PathLike[str] | None = None) -> Any:
    """model_signing's Sigstore signer: the identity comes from ``identity_token``, else ambient
    credentials (a CI workload identity), else the interactive OAuth flow in a browser."""
    if use_staging and trust_config is not None:
        raise UsageError("--use-staging and --trust-config both choose the Sigstore instance",
                         actual="both given", remedy="leave out one of the two")
    from model_signing._signing import sign_sigstore
    from sigstore.errors import Error as SigstoreLibraryError
    from sigstore.errors import TUFError
    from sigstore.oidc import IssuerError

    try:
        return sign_sigstore.Signer(use_ambient_credentials=True, use_staging=use_staging,
                                    identity_token=identity_token,
                                    trust_config=Path(trust_config) if trust_config is not None else None)
    except TUFError as exc:
        raise unavailable("sign with Sigstore", STAGING_TUF_URL if use_staging else PRODUCTION_TUF_URL,
                          exc, signing=True) from None
    except (IssuerError, SigstoreLibraryError) as exc:  # e.g. the identity provider's configuration unreachable
        raise SigstoreUnavailableError(
            f"cannot sign with Sigstore: its identity provider cannot be reached: {_reason(exc)}",
            actual=_reason(exc), expected="Sigstore's OIDC identity provider reachable",
            remedy="sign where Sigstore is reachable, or sign with a key: modelguard sign DIR --private-key KEY.pem",
        ) from None
    except OSError as exc:
        raise UsageError(f"trust configuration {trust_config} cannot be read: {exc.strerror or exc}",
                         path=trust_config, remedy="check the path of --trust-config") from None
    except ValueError as exc:
        raise UsageError(f"cannot sign with Sigstore: {short_error(exc)}", path=trust_config,
                         remedy="check --identity-token and --trust-config") from None


def sign_with_sigstore(signer: Any, payload: Any) -> tuple[Any, str]:
    """Sign ``payload``; returns the signature and who signed (from the issued certificate)."""
    from sigstore.errors import Error as SigstoreLibraryError
    from sigstore.oidc import IdentityError

    try:
        signature = signer.sign(payload)
    except IdentityError as exc:
        raise UsageError(
            f"Sigstore did not accept the identity: {short_error(exc)}", actual=short_error(exc),
            expected="a valid OIDC identity token (--identity-token), ambient CI credentials, or a browser login",
            remedy="get a fresh identity token from your identity provider, or sign with a key (--private-key)",
        ) from None
    except (SigstoreLibraryError, OSError) as exc:
        raise SigstoreUnavailableError(
            f"cannot sign with Sigstore: {_reason(exc)}", actual=_reason(exc),
            expected="Sigstore's certificate authority (Fulcio) and transparency log (Rekor) reachable",
            remedy="sign where Sigstore is reachable, or sign with a key: modelguard sign DIR --private-key KEY.pem",
        ) from None
    return signature, describe_identity(signature.bundle.signing_certificate)


def forget_verifiers() -> None:
    _verifiers.clear()
