"""Sigstore (keyless) signatures checked against an identity and its provider: `verify
--identity/--identity-provider`, `sign --sigstore`, and the guard with MODELGUARD_IDENTITY.

Everything is offline. Sigstore's trust root comes from its TUF repository over the network,
so the network is blocked here (HTTPS_PROXY is a closed local port: a connection is refused at
once, nothing can hang). What can be shown offline is shown with the real libraries:

- the identity check reads the bundle's certificate before anything is trusted, so a signature
  by another identity is refused offline. The certificates are made here with openssl, with the
  SAN and OIDC-issuer extensions Sigstore's CA (Fulcio) writes; the bundles are written by the
  real `model_signing sign certificate`;
- a bundle naming the right identity goes on to Sigstore's verifier: without network, the trust
  root cannot be fetched, a clear error (exit 2); with a trust configuration file (the trust root
  sigstore-python ships), the verifier runs offline and refuses a certificate Sigstore never issued;
- acceptance: a Sigstore instance of the tests' own (helpers/sigstore_instance.py: a CA, a CT log
  and a transparency log) issues the certificate and logs the signature; with its trust
  configuration, sigstore-python verifies the bundle as it verifies the public instance's (and
  `model_signing verify sigstore` accepts it), at the command line and under the guard.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need

import modelguard
from modelguard import guard, signing
from modelguard.errors import SignatureError, SigstoreUnavailableError, UsageError, VerificationError

from helpers.signing import make_key_pair, model_signing_cli, openssl, write_model

model_signing = need("model_signing")
sigstore = need("sigstore")

ISSUER = "https://accounts.example.com"
CLOSED_PROXY = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def no_network(monkeypatch, isolated_env):
    """Every connection goes to a closed local port (refused at once); sigstore's TUF folders are this test's."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, CLOSED_PROXY)
    for name in ("NO_PROXY", "no_proxy", "MODELGUARD_PUBLIC_KEY", "MODELGUARD_IDENTITY",
                 "MODELGUARD_IDENTITY_PROVIDER", "MODELGUARD_REQUIRE_SIGNATURE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(isolated_env / "data"))
    signing.clear_cache()


def identity_certificate(folder: Path, email: str, issuer: str = ISSUER) -> dict[str, Path]:
    """A CA and a leaf certificate shaped as Sigstore's CA issues them: the identity in the SAN,
    the OIDC issuer in Fulcio's v1 (raw) and v2 (UTF8String) extensions, code signing."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, _ = make_key_pair(folder, "ca")
    openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/O=sigstore.dev/CN=sigstore", "-days", "30",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-out", str(folder / "ca.crt"))
    leaf_key, _ = make_key_pair(folder, "leaf")
    openssl("req", "-new", "-key", str(leaf_key), "-subj", "/O=sigstore.dev", "-out", str(folder / "leaf.csr"))
    (folder / "leaf.ext").write_text(
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n"
        f"subjectAltName=email:{email}\n"
        f"1.3.6.1.4.1.57264.1.1=DER:{issuer.encode().hex()}\n"
        f"1.3.6.1.4.1.57264.1.8=ASN1:UTF8String:{issuer}\n")
    openssl("x509", "-req", "-in", str(folder / "leaf.csr"), "-CA", str(folder / "ca.crt"), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "30", "-extfile", str(folder / "leaf.ext"), "-out", str(folder / "leaf.crt"))
    return {"key": leaf_key, "cert": folder / "leaf.crt", "ca": folder / "ca.crt"}


def sign_with_certificate(directory: Path, cert: dict[str, Path]) -> Path:
    proc = model_signing_cli("sign", "certificate", str(directory), "--private_key", str(cert["key"]),
                             "--signing_certificate", str(cert["cert"]), "--certificate_chain", str(cert["ca"]),
                             "--signature", str(directory / "model.sig"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return directory / "model.sig"


def sigstore_shaped(signature: Path) -> Path:
    """The bundle in the shape Sigstore writes (v0.3: the leaf certificate alone and one
    transparency-log entry), so that sigstore-python reads it. The log entry is made up: no
    verifier can accept it, which is the point of the tests that reach the verifier."""
    bundle = json.loads(signature.read_text())
    material = bundle["verificationMaterial"]
    material["certificate"] = material.pop("x509CertificateChain")["certificates"][0]
    zeros = base64.b64encode(bytes(32)).decode()
    material["tlogEntries"] = [{
        "logIndex": "1", "logId": {"keyId": zeros}, "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": "1700000000", "inclusionPromise": {"signedEntryTimestamp": zeros},
        "inclusionProof": {"logIndex": "1", "rootHash": zeros, "treeSize": "2", "hashes": [zeros],
                           "checkpoint": {"envelope": "rekor.sigstore.dev - 1\n2\nAAAA\n"}},
        "canonicalizedBody": base64.b64encode(b"{}").decode(),
    }]
    signature.write_text(json.dumps(bundle))
    return signature


@pytest.fixture(scope="module")
def mallory(tmp_path_factory):
    return identity_certificate(tmp_path_factory.mktemp("mallory"), "mallory@example.com")


@pytest.fixture(scope="module")
def signed_template(tmp_path_factory, mallory):
    directory = write_model(tmp_path_factory.mktemp("identity") / "tiny-model")
    sign_with_certificate(directory, mallory)
    return directory


@pytest.fixture
def signed(signed_template, tmp_path):
    return Path(shutil.copytree(signed_template, tmp_path / "tiny-model"))


def verify_identity(signature: Path, identity: str, provider: str = ISSUER, *extra: str):
    return run_cli("verify", str(signature), "--identity", identity, "--identity-provider", provider, *extra,
                   timeout=120)


# --------------------------------------------------------------------------- verify: the identity


def test_signature_by_another_identity_is_refused_naming_both(signed):
    proc = verify_identity(signed / "model.sig", "alice@example.com")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (f"signature {signed / 'model.sig'} was not made by the trusted identity: it was signed by "
            f"mallory@example.com (identity provider {ISSUER})") in proc.stderr
    assert f"expected: alice@example.com (identity provider {ISSUER})" in proc.stderr
    assert f"actual:   mallory@example.com (identity provider {ISSUER})" in proc.stderr


def test_same_identity_from_another_provider_is_refused(signed):
    proc = verify_identity(signed / "model.sig", "mallory@example.com", "https://token.actions.githubusercontent.com")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "expected: mallory@example.com (identity provider https://token.actions.githubusercontent.com)" in proc.stderr
    assert f"actual:   mallory@example.com (identity provider {ISSUER})" in proc.stderr


def test_certificate_signature_without_a_log_entry_is_not_taken_for_sigstore(signed, mallory):
    proc = verify_identity(signed / "model.sig", "mallory@example.com")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (f"signature {signed / 'model.sig'} is not a Sigstore signature: it has no transparency-log entry, "
            "as a signature made with a certificate of your own CA") in proc.stderr
    assert "checked with --certificate-chain CA.pem" in proc.stderr
    # and that way it verifies
    ok = run_cli("verify", str(signed / "model.sig"), "--certificate-chain", str(mallory["ca"]), "--quiet")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_key_signature_checked_for_an_identity_says_it_was_made_with_a_key(tmp_path):
    private, _ = make_key_pair(tmp_path, "publisher")
    directory = write_model(tmp_path / "m")
    assert run_cli("sign", str(directory), "--private-key", str(private)).returncode == 0
    proc = verify_identity(directory / "model.sig", "alice@example.com")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "was made with a key, not by a Sigstore identity" in proc.stderr
    assert "check it with the publisher's public key: --public-key KEY.pem" in proc.stderr


# --------------------------------------------------------------------------- verify: the trust root


def test_trust_root_unreachable_is_a_clear_error_exit_2(signed):
    sig = sigstore_shaped(signed / "model.sig")
    proc = verify_identity(sig, "mallory@example.com")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (f"cannot check the Sigstore signature {sig}: Sigstore's trust root could not be fetched from "
            "https://tuf-repo-cdn.sigstore.dev: Failed to refresh TUF metadata") in proc.stderr
    assert "expected: network access to https://tuf-repo-cdn.sigstore.dev (Sigstore's TUF repository" in proc.stderr
    assert "offline, pass --trust-config CONFIG.json" in proc.stderr
    staging = verify_identity(sig, "mallory@example.com", ISSUER, "--use-staging")
    assert staging.returncode == 2
    assert "could not be fetched from https://tuf-repo-cdn.sigstage.dev" in staging.stderr
    # the identity check needs no network: another identity is still exit 1, not "offline"
    other = verify_identity(sig, "alice@example.com")
    assert other.returncode == 1 and "was not made by the trusted identity" in other.stderr


def test_read_signature_raises_the_unavailable_error(signed):
    sig = sigstore_shaped(signed / "model.sig")
    with pytest.raises(SigstoreUnavailableError) as caught:
        signing.read_signature(sig, identity="mallory@example.com", identity_provider=ISSUER)
    assert caught.value.exit_code == 2
    assert "Sigstore's trust root could not be fetched" in caught.value.message


def shipped_trust_config(folder: Path) -> Path:
    """A client trust configuration made of the production trust root sigstore-python ships."""
    store = Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    config = {"mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
              "trustedRoot": json.loads((store / "trusted_root.json").read_text()),
              "signingConfig": json.loads((store / "signing_config.v0.2.json").read_text())}
    path = folder / "trust_config.json"
    path.write_text(json.dumps(config))
    return path


def test_with_a_trust_configuration_the_verifier_runs_offline_and_refuses_a_foreign_certificate(signed, tmp_path):
    sig = sigstore_shaped(signed / "model.sig")
    config = shipped_trust_config(tmp_path)
    proc = verify_identity(sig, "mallory@example.com", ISSUER, "--trust-config", str(config))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (f"signature {sig} does not verify as signed by Sigstore identity mallory@example.com (identity "
            f"provider {ISSUER}, trust configuration {config})") in proc.stderr
    assert "could not be fetched" not in proc.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    bad = verify_identity(sig, "mallory@example.com", ISSUER, "--trust-config", str(broken))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"trust configuration {broken} cannot be read" in bad.stderr


# --------------------------------------------------------------------------- a Sigstore instance of our own


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    """The tests' Sigstore instance and its client trust configuration file."""
    from helpers.sigstore_instance import SigstoreInstance

    inst = SigstoreInstance()
    store = Path(sigstore.__file__).parent / "_store" / "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev"
    config = tmp_path_factory.mktemp("instance") / "trust_config.json"
    config.write_text(json.dumps(inst.trust_config(json.loads((store / "signing_config.v0.2.json").read_text()))))
    return inst, config


def sign_as(instance, directory: Path, identity: str, issuer: str = ISSUER) -> Path:
    """Sign ``directory`` as ``identity``: the instance's CA issues the certificate,
    `model_signing sign certificate` signs, the instance's log records it."""
    from cryptography.hazmat.primitives import serialization

    inst, _ = instance
    key, cert = inst.issue(identity, issuer)
    folder = directory.parent / f"{directory.name}-signer"
    folder.mkdir()
    paths = {"key": folder / "leaf.key", "cert": folder / "leaf.crt", "ca": folder / "ca.crt"}
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["ca"].write_bytes(inst.ca_cert.public_bytes(serialization.Encoding.PEM))
    sig = sign_with_certificate(directory, paths)
    sig.write_text(json.dumps(inst.log_bundle(json.loads(sig.read_text()), cert)))
    return sig


@pytest.fixture
def genuine(instance, tmp_path):
    return sign_as(instance, write_model(tmp_path / "tiny-model"), "alice@example.com")


def test_a_genuine_sigstore_signature_verifies_with_its_trust_configuration(genuine, instance):
    _, config = instance
    proc = verify_identity(genuine, "alice@example.com", ISSUER, "--trust-config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"signature ok: {genuine} signed by Sigstore identity alice@example.com "
                        f"(identity provider {ISSUER}) (4 file(s))")
    assert lines[-1] == "verified: 4 file(s) of tiny-model match the manifest"
    # the same bundle is what model_signing itself accepts
    accepted = model_signing_cli("verify", "sigstore", str(genuine.parent), "--signature", str(genuine),
                                 "--identity", "alice@example.com", "--identity_provider", ISSUER,
                                 "--trust_config", str(config))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Verification succeeded" in accepted.stdout + accepted.stderr


def test_genuine_signature_refusals(genuine, instance):
    _, config = instance
    other = verify_identity(genuine, "bob@example.com", ISSUER, "--trust-config", str(config))
    assert other.returncode == 1 and "actual:   alice@example.com (identity provider" in other.stderr
    offline = verify_identity(genuine, "alice@example.com")  # Sigstore's public instance: needs its trust root
    assert offline.returncode == 2 and "Sigstore's trust root could not be fetched" in offline.stderr
    weights = genuine.parent / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[7] ^= 0x01
    weights.write_bytes(bytes(data))
    tampered = verify_identity(genuine, "alice@example.com", ISSUER, "--trust-config", str(config), "--json")
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    doc = json.loads(tampered.stdout)
    assert doc["signature"]["signer"] == f"Sigstore identity alice@example.com (identity provider {ISSUER})"
    result = {f["path"]: f for f in doc["files"]}["model.safetensors"]
    assert result["status"] == "failed" and result["diagnosis"] == "digest_mismatch"


def test_an_altered_statement_in_a_sigstore_bundle_does_not_verify(genuine, instance):
    _, config = instance
    bundle = json.loads(genuine.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "0" * 64
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    genuine.write_text(json.dumps(bundle))
    proc = verify_identity(genuine, "alice@example.com", ISSUER, "--trust-config", str(config))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"signature {genuine} does not verify as signed by Sigstore identity alice@example.com" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_verified_sigstore_signature_is_remembered_so_no_trust_root_is_needed_again(genuine, instance,
                                                                                       monkeypatch):
    import time

    from modelguard import signature_sigstore

    _, config = instance
    time.sleep(signing.RACY_WINDOW_NS / 1e9 + 0.1)  # the signature file is older than the racy window
    trust = {"identity": "alice@example.com", "identity_provider": ISSUER, "trust_config": config}
    first = signing.read_signature(genuine, **trust)
    assert first.cached is False and first.signer.startswith("Sigstore identity alice@example.com")
    signing.clear_cache()  # this process forgets; the durable store remains

    def no_trust_root(*args, **kwargs):
        raise AssertionError("a remembered signature made a Sigstore verifier (which fetches the trust root)")

    monkeypatch.setattr(signature_sigstore, "_verifier", no_trust_root)
    again = signing.read_signature(genuine, **trust)
    assert again.cached is True and again.digests == first.digests
    # another identity is not answered from what was remembered for this one
    with pytest.raises(SignatureError, match="was not made by the trusted identity"):
        signing.read_signature(genuine, identity="bob@example.com", identity_provider=ISSUER, trust_config=config)


def test_build_from_a_sigstore_signature(genuine, instance, tmp_path):
    _, config = instance
    out = tmp_path / "m.yaml"
    proc = run_cli("build", "--from-signature", str(genuine), "--identity", "alice@example.com",
                   "--identity-provider", ISSUER, "--trust-config", str(config), "--model", "acme/m", "-o", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"wrote {out}: signed by Sigstore identity alice@example.com")
    assert run_cli("verify", str(out), str(genuine.parent), "--quiet").returncode == 0


# --------------------------------------------------------------------------- verify: options


@pytest.mark.parametrize("args, message", [
    (["--identity", "alice@example.com"], "checking a Sigstore signature needs the identity provider too"),
    (["--identity-provider", ISSUER], "describe a Sigstore signer, but no identity is given"),
    (["--identity", "alice@example.com", "--identity-provider", "accounts.example.com"],
     "identity provider 'accounts.example.com' is not an issuer URL"),
    (["--identity", "a@example.com", "--identity-provider", ISSUER, "--use-staging", "--trust-config", "x.json"],
     "--use-staging and --trust-config both choose the Sigstore instance"),
])
def test_incomplete_identity_options_are_usage_errors(signed, args, message):
    proc = run_cli("verify", str(signed / "model.sig"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("other", [["--public-key", "pub.pem"], ["--certificate-chain", "ca.pem"]])
def test_identity_excludes_a_key_or_a_chain(signed, other):
    proc = run_cli("verify", str(signed / "model.sig"), *other, "--identity", "a@example.com",
                   "--identity-provider", ISSUER)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{other[0]} and --identity, --identity-provider name different kinds of signer" in proc.stderr


def test_model_signing_spellings_get_a_hint_and_the_environment_is_read(signed, monkeypatch):
    spelled = run_cli("verify", str(signed / "model.sig"), "--identity", "alice@example.com",
                      "--identity_provider", ISSUER)
    assert spelled.returncode == 2
    assert "unknown option '--identity_provider'; did you mean '--identity-provider'?" in spelled.stderr
    from_env = run_cli("verify", str(signed / "model.sig"),
                       env={"MODELGUARD_IDENTITY": "alice@example.com", "MODELGUARD_IDENTITY_PROVIDER": ISSUER})
    assert from_env.returncode == 1 and "expected: alice@example.com" in from_env.stderr
    with pytest.raises(UsageError, match="one of them"):
        signing.read_signature(signed / "model.sig", public_key="k.pem", identity="a@example.com",
                               identity_provider=ISSUER)


# --------------------------------------------------------------------------- sign --sigstore


def test_sign_with_sigstore_offline_is_a_clear_error_and_writes_nothing(tmp_path):
    directory = write_model(tmp_path / "m")
    proc = run_cli("sign", str(directory), "--sigstore", "--identity-token", "not-a-real-token", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert ("cannot sign with Sigstore: Sigstore's trust root could not be fetched from "
            "https://tuf-repo-cdn.sigstore.dev") in proc.stderr
    assert "or sign with a key: modelguard sign DIR --private-key KEY.pem" in proc.stderr
    assert not (directory / "model.sig").exists()


@pytest.mark.parametrize("args, message", [
    ([], "signing needs a private key or Sigstore (one of the two)"),
    (["--sigstore", "--private-key", "k.pem"], "signing needs a private key or Sigstore (one of the two)"),
    (["--private-key", "k.pem", "--identity-token", "t"], "--identity-token and --trust-config apply to --sigstore only"),
    (["--private-key", "k.pem", "--use-staging"], "apply to --sigstore only"),
    (["--sigstore", "--password", "pw"], "--password applies to --private-key only"),
    (["--sigstore", "--use-staging", "--trust-config", "c.json"],
     "--use-staging and --trust-config both choose the Sigstore instance"),
])
def test_sign_argument_errors(tmp_path, args, message):
    directory = write_model(tmp_path / "m")
    proc = run_cli("sign", str(directory), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (directory / "model.sig").exists()


# --------------------------------------------------------------------------- at load


transformers = need("transformers")
need("torch")


@pytest.fixture
def bert(tmp_path, mallory):
    from helpers.tiny_bert import save_tiny_bert

    directory = save_tiny_bert(tmp_path / "tiny-bert")
    sign_with_certificate(directory, mallory)
    return directory


@pytest.fixture
def constructions(monkeypatch):
    built = []
    original = transformers.BertModel.__init__

    def counting_init(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.BertModel, "__init__", counting_init)
    return built


@pytest.fixture
def guarded():
    guard.uninstall()
    yield
    guard.uninstall()


def test_guard_refuses_a_model_signed_by_another_identity(bert, monkeypatch, guarded, constructions):
    monkeypatch.setenv("MODELGUARD_IDENTITY", "alice@example.com")
    monkeypatch.setenv("MODELGUARD_IDENTITY_PROVIDER", ISSUER)
    modelguard.install(unknown="refuse")
    with pytest.raises(SignatureError) as caught:
        transformers.BertModel.from_pretrained(bert)
    assert constructions == []
    message = str(caught.value)
    assert message.startswith(f"modelguard refused to load {bert} (transformers")
    assert f"): signature {bert / 'model.sig'} was not made by the trusted identity" in message.splitlines()[0]
    assert f"expected: alice@example.com (identity provider {ISSUER})" in message
    assert f"actual:   mallory@example.com (identity provider {ISSUER})" in message


def test_guard_says_why_when_the_trust_root_cannot_be_fetched(bert, guarded, constructions):
    sigstore_shaped(bert / "model.sig")
    modelguard.install(unknown="refuse", identity="mallory@example.com", identity_provider=ISSUER)
    with pytest.raises(SigstoreUnavailableError) as caught:
        transformers.BertModel.from_pretrained(bert)
    assert constructions == []
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(f"modelguard refused to load {bert} (transformers")
    assert f"): cannot check the Sigstore signature {bert / 'model.sig'}: Sigstore's trust root" in caught.value.message
    assert "load it once where Sigstore is reachable" in caught.value.remedy


def test_guard_with_a_key_and_an_identity_checks_each_signature_by_its_kind(bert, tmp_path, monkeypatch, guarded,
                                                                             constructions):
    private, public = make_key_pair(tmp_path, "publisher")
    key_signed = Path(shutil.copytree(bert, tmp_path / "key-signed"))
    (key_signed / "model.sig").unlink()
    signing.sign_directory(key_signed, private_key=private)
    monkeypatch.setenv("MODELGUARD_PUBLIC_KEY", str(public))
    modelguard.install(unknown="refuse", identity="alice@example.com", identity_provider=ISSUER)
    transformers.BertModel.from_pretrained(key_signed)  # the key signature verifies with the key
    assert constructions == ["BertModel"]
    with pytest.raises(SignatureError, match="was not made by the trusted identity"):
        transformers.BertModel.from_pretrained(bert)  # the certificate signature is checked for the identity
    assert constructions == ["BertModel"]


def test_required_signature_with_only_an_identity_refuses_an_unsigned_copy(bert, monkeypatch, guarded,
                                                                            constructions):
    (bert / "model.sig").unlink()
    monkeypatch.setenv("MODELGUARD_REQUIRE_SIGNATURE", "1")
    modelguard.install(unknown="refuse", identity="alice@example.com", identity_provider=ISSUER)
    with pytest.raises(SignatureError) as caught:
        transformers.BertModel.from_pretrained(bert)
    assert constructions == []
    assert "MODELGUARD_REQUIRE_SIGNATURE is set and" in caught.value.message
    assert caught.value.expected == "a model.sig signed by the trusted key or identity"


def test_guard_loads_a_model_signed_by_the_trusted_identity_and_refuses_it_tampered(
        instance, tmp_path, monkeypatch, guarded, constructions):
    from helpers.tiny_bert import save_tiny_bert

    _, config = instance
    directory = save_tiny_bert(tmp_path / "tiny-bert")
    sign_as(instance, directory, "alice@example.com")
    constructions.clear()  # the model saved above was built too
    monkeypatch.setenv("MODELGUARD_IDENTITY", "alice@example.com")
    monkeypatch.setenv("MODELGUARD_IDENTITY_PROVIDER", ISSUER)
    monkeypatch.setenv("MODELGUARD_SIGSTORE_TRUST_CONFIG", str(config))
    modelguard.install(unknown="refuse")
    transformers.BertModel.from_pretrained(directory)
    assert constructions == ["BertModel"]
    weights = directory / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    signing.clear_cache()
    with pytest.raises(VerificationError) as caught:
        transformers.BertModel.from_pretrained(directory)
    assert constructions == ["BertModel"]
    assert f"files do not match the signature {directory / 'model.sig'} (Sigstore identity alice@example.com" \
        in caught.value.message


def test_identity_without_its_provider_is_a_usage_error_at_load(bert, monkeypatch, guarded, constructions):
    monkeypatch.setenv("MODELGUARD_IDENTITY", "alice@example.com")
    modelguard.install(unknown="refuse")
    with pytest.raises(UsageError) as caught:
        transformers.BertModel.from_pretrained(bert)
    assert constructions == []
    assert caught.value.message.startswith("the guard's Sigstore identity setting is incomplete")
    assert "MODELGUARD_IDENTITY_PROVIDER" in caught.value.remedy
