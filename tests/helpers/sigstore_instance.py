"""A Sigstore instance of the tests' own, offline: a certificate authority (Fulcio's role), a
certificate-transparency log and a transparency log (Rekor's role), each an EC key made here.
It writes its client trust configuration (what `--trust-config` takes) and turns a bundle
written by `model_signing sign certificate` with a certificate it issued into the bundle
Sigstore would return: the certificate alone, with an SCT of its CT log embedded, and one dsse
entry of its log (inclusion proof with a signed checkpoint, and a signed inclusion promise).
sigstore-python verifies such a bundle against that trust configuration exactly as it verifies
one from Sigstore's public instance: nothing in the verifier is bypassed."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

SCT_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_id(key) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der_octet_string(data: bytes) -> bytes:
    n = len(data)
    if n < 0x80:
        return b"\x04" + bytes([n]) + data
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(length)]) + length + data


class SigstoreInstance:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.log_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "modelguard tests"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "test sigstore CA")])
        self.ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1)).not_valid_after(self.now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )

    # ------------------------------------------------------------------ trust configuration

    def trust_config(self, signing_config: dict) -> dict:
        start = {"start": (self.now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}

        def log(key, url):
            return {"baseUrl": url, "hashAlgorithm": "SHA2_256",
                    "publicKey": {"rawBytes": _b64(_spki(key.public_key())), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                                  "validFor": start},
                    "logId": {"keyId": _b64(_key_id(key.public_key()))}}

        root = {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.log_key, "https://rekor.test.invalid")],
            "certificateAuthorities": [{
                "subject": {"organization": "modelguard tests", "commonName": "test sigstore CA"},
                "uri": "https://fulcio.test.invalid",
                "certChain": {"certificates": [{"rawBytes": _b64(self.ca_cert.public_bytes(serialization.Encoding.DER))}]},
                "validFor": start}],
            "ctlogs": [log(self.ct_key, "https://ctfe.test.invalid")],
            "timestampAuthorities": [],
        }
        return {"mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
                "trustedRoot": root, "signingConfig": signing_config}

    # ------------------------------------------------------------------ the CA: a certificate for an identity

    def issue(self, identity: str, issuer: str):
        """A short-lived code-signing certificate for ``identity`` (an email) as ``issuer`` vouched,
        with an SCT of this instance's CT log embedded; returns (private key, certificate)."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(minutes=5)).not_valid_after(self.now + dt.timedelta(minutes=10))
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=True)
            .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.57264.1.1"), issuer.encode()),
                           critical=False)
            .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.57264.1.8"),
                                                      b"\x0c" + bytes([len(issuer)]) + issuer.encode()),
                           critical=False)
        )
        precert = builder.sign(self.ca_key, hashes.SHA256())
        tbs = precert.tbs_certificate_bytes
        timestamp = int(self.now.timestamp() * 1000)
        signed_entry = _key_id(self.ca_key.public_key()) + len(tbs).to_bytes(3, "big") + tbs
        digitally_signed = struct.pack(f"!BBQH{len(signed_entry)}sH", 0, 0, timestamp, 1, signed_entry, 0)
        signature = self.ct_key.sign(digitally_signed, ec.ECDSA(hashes.SHA256()))
        sct = (b"\x00" + _key_id(self.ct_key.public_key()) + struct.pack("!Q", timestamp) + b"\x00\x00"
               + b"\x04\x03" + struct.pack("!H", len(signature)) + signature)
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        cert = builder.add_extension(x509.UnrecognizedExtension(SCT_OID, _der_octet_string(sct_list)),
                                     critical=False).sign(self.ca_key, hashes.SHA256())
        assert cert.tbs_precertificate_bytes == tbs
        return key, cert

    # ------------------------------------------------------------------ the log: a bundle

    def log_bundle(self, bundle: dict, cert) -> dict:
        """``bundle`` (a model_signing certificate bundle whose envelope ``cert``'s key signed) as
        Sigstore writes it: the certificate alone and this instance's log entry for the envelope."""
        envelope = bundle["dsseEnvelope"]
        payload = base64.b64decode(envelope["payload"])
        pem = cert.public_bytes(serialization.Encoding.PEM)
        body = json.dumps({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {"envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest()},
                     "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                     "signatures": [{"signature": s["sig"], "verifier": _b64(pem)} for s in envelope["signatures"]]},
        }, separators=(",", ":"), sort_keys=True).encode()
        log_id = _key_id(self.log_key.public_key())
        integrated = int(self.now.timestamp())
        root_hash = hashlib.sha256(b"\x00" + body).digest()
        origin = "rekor.test.invalid - 1"
        note = f"{origin}\n1\n{_b64(root_hash)}\n"
        note_sig = self.log_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = note + "\n" + f"\u2014 rekor.test.invalid {_b64(log_id[:4] + note_sig)}\n"
        import rfc8785

        set_payload = rfc8785.dumps({"body": _b64(body), "integratedTime": integrated, "logID": log_id.hex(),
                                     "logIndex": 0})
        promise = self.log_key.sign(set_payload, ec.ECDSA(hashes.SHA256()))
        out = json.loads(json.dumps(bundle))
        material = out["verificationMaterial"]
        material.pop("x509CertificateChain", None)
        material["certificate"] = {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))}
        material["tlogEntries"] = [{
            "logIndex": "0", "logId": {"keyId": _b64(log_id)}, "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(integrated), "inclusionPromise": {"signedEntryTimestamp": _b64(promise)},
            "inclusionProof": {"logIndex": "0", "rootHash": _b64(root_hash), "treeSize": "1", "hashes": [],
                               "checkpoint": {"envelope": checkpoint}},
            "canonicalizedBody": _b64(body),
        }]
        return out
