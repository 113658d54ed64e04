"""OpenSSF model signatures (the real model-signing library) read by `modelguard verify`
and written by `modelguard sign`; keys made here with openssl, everything offline."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.requires import need

from helpers.cli import run_cli
from helpers.signing import FILES, key_hint, make_key_pair, model_signing_cli, openssl, write_model
from modelguard import signing
from modelguard.errors import SignatureError, SignatureFormatError, UsageError
from modelguard.statcache import StatCache

model_signing = need("model_signing")

@pytest.fixture(scope="module")
def signed_template(tmp_path_factory, keys):
    """A model folder signed by the real `model_signing sign key` command (never modified)."""
    directory = write_model(tmp_path_factory.mktemp("signed") / "tiny-model")
    proc = model_signing_cli("sign", "key", str(directory), "--private_key", str(keys["private"]),
                             "--signature", str(directory / "model.sig"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return directory


@pytest.fixture
def signed(signed_template, tmp_path):
    return Path(shutil.copytree(signed_template, tmp_path / "tiny-model"))


def verify_cli(signed: Path, public: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("verify", str(signed / "model.sig"), str(signed), "--public-key", str(public), *extra)


# --------------------------------------------------------------------------- verify


def test_model_signed_by_model_signing_verifies(signed, keys):
    proc = verify_cli(signed, keys["public"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == (f"signature ok: {signed / 'model.sig'} signed by public key sha256:{key_hint(keys['public'])} "
                        "(4 file(s))")
    assert lines[-1] == "verified: 4 file(s) of tiny-model match the manifest"
    for rel in FILES:
        assert any(line.split()[:3] == ["ok", "signed", rel] for line in lines), (rel, proc.stdout)
    # .git, .gitattributes and the signature itself are not "files the signature does not cover"
    assert "not in the manifest" not in proc.stdout


def test_signature_next_to_the_files_needs_no_directory(signed, keys):
    proc = run_cli("verify", str(signed / "model.sig"), "--public-key", str(keys["public"]), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "verified: 4 file(s) of tiny-model match the manifest"


def test_byte_flip_is_a_digest_mismatch_naming_the_file(signed, keys):
    weights = signed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0x01
    weights.write_bytes(bytes(data))
    proc = verify_cli(signed, keys["public"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    expected = hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert f"FAIL  signed  model.safetensors      wrong content: sha256: expected {expected}, got {actual}" \
        in proc.stdout
    assert "FAILED: tiny-model: 1 of 4 file(s) failed (component(s): signed)" in proc.stdout
    doc = json.loads(verify_cli(signed, keys["public"], "--json").stdout)
    assert doc["ok"] is False
    assert {f["path"]: f["diagnosis"] for f in doc["files"]}["model.safetensors"] == "digest_mismatch"
    assert doc["signature"]["signer"] == f"public key sha256:{key_hint(keys['public'])}"


def test_signature_by_another_key_fails_with_a_clear_message(signed, keys):
    proc = verify_cli(signed, keys["other_public"])
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert f"modelguard: error: signature {signed / 'model.sig'} was made by another key, not the public key " \
           f"{keys['other_public']}" in proc.stderr
    assert f"expected: signed by the key sha256:{key_hint(keys['other_public'])}" in proc.stderr
    assert f"actual:   signed by the key sha256:{key_hint(keys['public'])}" in proc.stderr
    doc = json.loads(verify_cli(signed, keys["other_public"], "--json").stdout)
    assert doc["ok"] is False and doc["error"]["error"] == "SignatureError"


def test_altered_statement_does_not_verify(signed, keys):
    """Someone rewrites a signed digest (to match a substituted file): the signature breaks."""
    sig = signed / "model.sig"
    bundle = json.loads(sig.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    evil = b"not the published weights"
    for resource in statement["predicate"]["resources"]:
        if resource["name"] == "model.safetensors":
            resource["digest"] = hashlib.sha256(evil).hexdigest()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(bundle))
    (signed / "model.safetensors").write_bytes(evil)
    proc = verify_cli(signed, keys["public"])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"signature {sig} does not verify with the public key {keys['public']}: the signed statement was " \
           "altered, or it was signed by another key" in proc.stderr


@pytest.mark.parametrize("content, detail", [
    (b"", "is not a readable model signature"),
    (b"\xff\xfe\x00garbage", "it is not text"),
    (b"{not json", "is not a readable model signature"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}', "a required field is missing"),
    (b"[1, 2, 3]", "is not a readable model signature"),
])
def test_malformed_signature_file_is_exit_2_without_traceback(signed, keys, content, detail):
    (signed / "model.sig").write_bytes(content)
    proc = verify_cli(signed, keys["public"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"modelguard: error: {signed / 'model.sig'}" in proc.stderr
    assert detail in proc.stderr
    assert "fix:      sign the model again (modelguard sign DIR --private-key KEY.pem)" in proc.stderr


def test_bundle_without_envelope_signatures_is_malformed(signed, keys):
    sig = signed / "model.sig"
    bundle = json.loads(sig.read_text())
    bundle["dsseEnvelope"]["signatures"] = []
    sig.write_text(json.dumps(bundle))
    with pytest.raises(SignatureFormatError, match="the bundle has no usable envelope signature"):
        signing.read_signature(sig, public_key=keys["public"], cache=False)


def test_usage_errors_are_exit_2(signed, keys, tmp_path):
    no_key = run_cli("verify", str(signed / "model.sig"), str(signed))
    assert no_key.returncode == 2
    assert "is a signature: checking it needs to know who must have signed it" in no_key.stderr
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("hello\n")
    bad_key = verify_cli(signed, not_a_key)
    assert bad_key.returncode == 2 and "Traceback" not in bad_key.stderr
    assert f"public key {not_a_key} cannot be used" in bad_key.stderr
    rsa, rsa_public = tmp_path / "rsa.pem", tmp_path / "rsa.pub.pem"
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(rsa))
    openssl("pkey", "-in", str(rsa), "-pubout", "-out", str(rsa_public))
    rsa_key = verify_cli(signed, rsa_public)
    assert rsa_key.returncode == 2 and "Traceback" not in rsa_key.stderr
    assert "a PEM elliptic-curve public key (P-256, P-384 or P-521)" in rsa_key.stderr
    missing = run_cli("verify", str(tmp_path / "nowhere.sig"), str(signed), "--public-key", str(keys["public"]))
    assert missing.returncode == 2
    assert f"signature {tmp_path / 'nowhere.sig'} cannot be read: No such file or directory" in missing.stderr
    components = verify_cli(signed, keys["public"], "--components", "dense")
    assert components.returncode == 2
    assert "--components does not apply to a signature" in components.stderr


def test_public_key_from_the_environment(signed, keys):
    proc = run_cli("verify", str(signed / "model.sig"), "--quiet", env={"MODELGUARD_PUBLIC_KEY": str(keys["public"])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("signature ok:")


def test_missing_and_lfs_stub_files_are_diagnosed(signed, keys):
    (signed / "tokenizer.json").unlink()
    data = FILES["model.safetensors"]
    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
               f"size {len(data)}\n")
    (signed / "model.safetensors").write_text(pointer)
    doc = json.loads(verify_cli(signed, keys["public"], "--json").stdout)
    by_path = {f["path"]: f for f in doc["files"]}
    assert by_path["tokenizer.json"]["diagnosis"] == "missing"
    stub = by_path["model.safetensors"]
    assert stub["diagnosis"] == "lfs_pointer"
    assert stub["message"] == (f"is a Git LFS pointer stub ({len(pointer)} bytes), not the file; "
                               "this is the pointer to the signed file: run `git lfs pull`")
    assert "size" not in stub["expected"]  # the signature made by model_signing records no sizes
    assert doc["summary"] == {"files": 4, "ok": 2, "failed": 2, "skipped": 0, "extra": 0}


def test_files_not_covered_are_reported_and_fail_with_strict(signed, keys):
    (signed / "added.py").write_text("print('not signed')\n")
    (signed / ".git" / "index").write_bytes(b"git internals are ignored by the signer")
    plain = verify_cli(signed, keys["public"])
    assert plain.returncode == 0, plain.stdout
    assert "note  1 file(s) not in the manifest (not checked): added.py" in plain.stdout
    strict = verify_cli(signed, keys["public"], "--strict", "--json")
    assert strict.returncode == 1
    doc = json.loads(strict.stdout)
    assert doc["extra_files"] == ["added.py"] and doc["ok"] is False


def test_shard_serialization_is_refused_with_a_message(tmp_path, keys):
    directory = write_model(tmp_path / "sharded")
    model_signing.signing.Config().use_elliptic_key_signer(private_key=keys["private"]).set_hashing_config(
        model_signing.hashing.Config().use_shard_serialization()).sign(directory, directory / "model.sig")
    proc = verify_cli(directory, keys["public"])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "uses the 'shards' serialization with sha256; modelguard checks per-file sha256 signatures only" \
        in proc.stderr


def test_digest_cache_is_used_for_signed_files(signed, keys, tmp_path):
    cache = StatCache(tmp_path / "mgcache", racy_window_ns=0)
    _, first = signing.verify_signed(signed / "model.sig", signed, public_key=keys["public"], cache=cache)
    assert first.ok and not any(r.cached for r in first.files)
    _, second = signing.verify_signed(signed / "model.sig", signed, public_key=keys["public"], cache=cache)
    assert second.ok and all(r.cached for r in second.files)
    assert second.result("model.safetensors").message == "ok (16.38 KB, sha256, cached)"


def test_checked_signature_is_remembered_across_processes(signed, keys, isolated_env):
    """A warm check reads the statement from the user's cache: model_signing is not imported."""
    time.sleep(signing.RACY_WINDOW_NS / 1e9 + 0.1)  # a signature written just now is not remembered
    first = json.loads(verify_cli(signed, keys["public"], "--json").stdout)
    assert first["ok"] is True and first["signature"]["cached"] is False
    assert len(list((isolated_env / "mgcache" / "signatures" / "v1").glob("*.json"))) == 1
    probe = (
        "import sys, json\nfrom modelguard.cli import main\n"
        f"rc = main(['verify', {str(signed / 'model.sig')!r}, '--public-key', {str(keys['public'])!r}, '--json'])\n"
        "print(json.dumps({'rc': rc, 'model_signing': 'model_signing' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc, probe_result = proc.stdout.rsplit("\n", 2)[0], json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe_result == {"rc": 0, "model_signing": False}
    assert json.loads(doc)["signature"]["cached"] is True
    # another key is another cache entry: it is checked, and refused
    assert verify_cli(signed, keys["other_public"]).returncode == 1
    # a changed signature file is checked again
    sig = signed / "model.sig"
    sig.write_text(sig.read_text().replace('"tlogEntries"', ' "tlogEntries"', 1))
    again = json.loads(verify_cli(signed, keys["public"], "--json").stdout)
    assert again["ok"] is True and again["signature"]["cached"] is False


def test_signing_needs_a_key_and_one_source_of_trust(signed, keys):
    with pytest.raises(UsageError, match="needs a public key, a certificate chain or a Sigstore identity"):
        signing.read_signature(signed / "model.sig")
    with pytest.raises(UsageError, match="needs a public key, a certificate chain or a Sigstore identity"):
        signing.read_signature(signed / "model.sig", public_key=keys["public"], certificate_chain=[keys["public"]])
    with pytest.raises(SignatureError, match="was made by another key"):
        signing.read_signature(signed / "model.sig", public_key=keys["other_public"], cache=False)


# --------------------------------------------------------------------------- certificates


def test_certificate_chain_signature_verifies_and_an_unrelated_chain_is_refused(tmp_path, keys):
    ca_key, _ = make_key_pair(tmp_path, "ca")
    openssl("req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=Model Publisher CA", "-days", "30",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
            "-out", str(tmp_path / "ca.crt"))
    leaf_key, _ = make_key_pair(tmp_path, "leaf")
    openssl("req", "-new", "-key", str(leaf_key), "-subj", "/CN=release-bot", "-out", str(tmp_path / "leaf.csr"))
    ext = tmp_path / "leaf.ext"
    ext.write_text("keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n")
    openssl("x509", "-req", "-in", str(tmp_path / "leaf.csr"), "-CA", str(tmp_path / "ca.crt"), "-CAkey",
            str(ca_key), "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(tmp_path / "leaf.crt"))
    directory = write_model(tmp_path / "model")
    proc = model_signing_cli("sign", "certificate", str(directory), "--private_key", str(leaf_key),
                             "--signing_certificate", str(tmp_path / "leaf.crt"),
                             "--certificate_chain", str(tmp_path / "ca.crt"),
                             "--signature", str(directory / "model.sig"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ok = run_cli("verify", str(directory / "model.sig"), "--certificate-chain", str(tmp_path / "ca.crt"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[0].endswith("signed by certificate CN=release-bot (4 file(s))")
    other_ca_key, _ = make_key_pair(tmp_path, "other-ca")
    openssl("req", "-x509", "-new", "-key", str(other_ca_key), "-subj", "/CN=Someone Else", "-days", "30",
            "-out", str(tmp_path / "other.crt"))
    refused = run_cli("verify", str(directory / "model.sig"), "--certificate-chain", str(tmp_path / "other.crt"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    assert "the signing certificate is not trusted by the certificate chain" in refused.stderr


# --------------------------------------------------------------------------- sign


def test_modelguard_sign_is_accepted_by_model_signing_verify(tmp_path, keys):
    directory = write_model(tmp_path / "to-sign")
    proc = run_cli("sign", str(directory), "--private-key", str(keys["private"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == (f"signed 4 file(s) of {directory} with public key "
                                   f"sha256:{key_hint(keys['public'])}: wrote {directory / 'model.sig'}")
    accepted = model_signing_cli("verify", "key", str(directory), "--signature", str(directory / "model.sig"),
                                 "--public_key", str(keys["public"]))
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Verification succeeded" in accepted.stdout + accepted.stderr
    # and by modelguard, which reads the sizes it signed: a truncated file is diagnosed as such
    weights = directory / "model.safetensors"
    weights.write_bytes(FILES["model.safetensors"][:4096])
    doc = json.loads(run_cli("verify", str(directory / "model.sig"), "--public-key", str(keys["public"]),
                             "--json").stdout)
    assert doc["signature"]["sizes_signed"] is True
    result = {f["path"]: f for f in doc["files"]}["model.safetensors"]
    assert result["diagnosis"] == "truncated"
    assert result["message"].startswith("truncated: 4096 of 16384 bytes present (25.0%")
    rejected = model_signing_cli("verify", "key", str(directory), "--signature", str(directory / "model.sig"),
                                 "--public_key", str(keys["public"]))
    assert rejected.returncode != 0


def test_sign_to_another_output_and_refusals(tmp_path, keys):
    directory = write_model(tmp_path / "m")
    out = tmp_path / "sigs" / "m.sig"
    proc = run_cli("sign", str(directory), "--private-key", str(keys["private"]), "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["signature"] == str(out) and doc["files"] == 4
    assert not (directory / "model.sig").exists()
    assert run_cli("verify", str(out), str(directory), "--public-key", str(keys["public"])).returncode == 0
    wrong = run_cli("sign", str(directory), "--private-key", str(keys["public"]))
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert f"private key {keys['public']} cannot be used" in wrong.stderr
    rsa = tmp_path / "rsa.pem"
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(rsa))
    unsupported = run_cli("sign", str(directory), "--private-key", str(rsa))
    assert unsupported.returncode == 2 and "Traceback" not in unsupported.stderr
    assert "a PEM elliptic-curve private key (P-256, P-384 or P-521)" in unsupported.stderr
    nowhere = run_cli("sign", str(tmp_path / "nowhere"), "--private-key", str(keys["private"]))
    assert nowhere.returncode == 2
    assert f"model directory {tmp_path / 'nowhere'} does not exist" in nowhere.stderr
