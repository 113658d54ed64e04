"""`modelguard build --from-signature model.sig`: a manifest whose sha256 are the signed ones, written
only once the signature and the files verified (a manifest never records a digest for bytes that
are not there); keys made here with openssl, signatures by the real model-signing library."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import yaml

from helpers.cli import run_cli
from helpers.requires import need

from modelguard import cli, signing

from helpers.signing import FILES, model_signing_cli, write_model

model_signing = need("model_signing")


@pytest.fixture(scope="module")
def signed_template(tmp_path_factory, keys):
    directory = write_model(tmp_path_factory.mktemp("signed") / "tiny-model")
    proc = model_signing_cli("sign", "key", str(directory), "--private_key", str(keys["private"]),
                             "--signature", str(directory / "model.sig"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return directory


@pytest.fixture
def signed(signed_template, tmp_path):
    return Path(shutil.copytree(signed_template, tmp_path / "tiny-model"))


def build_from_signature(signed: Path, key: Path, out: Path, *extra: str):
    return run_cli("build", "--from-signature", str(signed / "model.sig"), "--public-key", str(key),
                   "--model", "acme/tiny-model", "-o", str(out), *extra)


def entries(manifest: Path) -> dict[str, tuple]:
    doc = yaml.safe_load(manifest.read_text())
    return {f["path"]: (f["size"], f["sha256"], f["component"]) for f in doc["files"]}


def test_manifest_from_a_signature_equals_the_hashed_one(signed, keys, tmp_path):
    from_sig = tmp_path / "from-signature.yaml"
    proc = build_from_signature(signed, keys["public"], from_sig)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"wrote {from_sig}: signed by public key sha256:")
    hashed = tmp_path / "hashed.yaml"
    built = run_cli("build", str(signed), "--model", "acme/tiny-model", "-o", str(hashed),
                    "--exclude", "model.sig", "--exclude", ".gitattributes")
    assert built.returncode == 0, built.stderr
    assert entries(from_sig) == entries(hashed)
    assert set(entries(from_sig)) == set(FILES)
    doc = yaml.safe_load(from_sig.read_text())
    assert doc["model"] == "acme/tiny-model"
    assert all(set(f) == {"path", "size", "component", "sha256"} for f in doc["files"])  # the signed digest only
    # the manifest verifies the folder as any other does
    verified = run_cli("verify", str(from_sig), str(signed), "--quiet")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_files_verified_before_are_not_hashed_again(signed, keys, tmp_path, monkeypatch, capsys):
    time.sleep(signing.RACY_WINDOW_NS / 1e9 + 0.1)  # old enough for the digest cache to remember them
    first = run_cli("verify", str(signed / "model.sig"), "--public-key", str(keys["public"]), "--quiet")
    assert first.returncode == 0, first.stdout + first.stderr
    import modelguard.hashing as hashing

    def no_hashing(algorithm, size):
        raise AssertionError(f"build --from-signature started a {algorithm} hash")

    monkeypatch.setattr(hashing, "new_hasher", no_hashing)
    out = tmp_path / "m.yaml"
    rc = cli.main(["build", "--from-signature", str(signed / "model.sig"), "--public-key", str(keys["public"]),
                   "--model", "acme/tiny-model", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert set(entries(out)) == set(FILES)


def test_a_tampered_file_is_refused_and_nothing_is_written(signed, keys, tmp_path):
    data = bytearray((signed / "model.safetensors").read_bytes())
    data[100] ^= 0x01
    (signed / "model.safetensors").write_bytes(bytes(data))
    out = tmp_path / "m.yaml"
    proc = build_from_signature(signed, keys["public"], out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert (f"build refused: files of {signed} do not match the signature {signed / 'model.sig'} (public key "
            "sha256:") in proc.stderr
    assert "a manifest would record digests of bytes that are not there" in proc.stderr
    assert "FAIL model.safetensors [signed]: wrong content: sha256: expected" in proc.stderr
    assert not out.exists()


def test_an_lfs_stub_is_refused_as_such(signed, keys, tmp_path):
    import hashlib

    weights = signed / "model.safetensors"
    oid = hashlib.sha256(weights.read_bytes()).hexdigest()
    weights.write_text(f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {weights.stat().st_size}\n")
    proc = build_from_signature(signed, keys["public"], tmp_path / "m.yaml")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "model.safetensors [signed]: is a Git LFS pointer stub" in proc.stderr
    assert "git lfs pull --include model.safetensors" in proc.stderr


def test_a_signature_by_another_key_is_refused(signed, keys, tmp_path):
    out = tmp_path / "m.yaml"
    proc = build_from_signature(signed, keys["other_public"], out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"signature {signed / 'model.sig'} was made by another key" in proc.stderr
    assert not out.exists()


def test_files_the_signature_does_not_cover_are_left_out_with_a_note(signed, keys, tmp_path):
    (signed / "notes.txt").write_text("added after signing\n")
    out = tmp_path / "m.yaml"
    proc = build_from_signature(signed, keys["public"], out)
    assert proc.returncode == 0, proc.stderr
    assert (f"modelguard: note: 1 file(s) of {signed} are not covered by the signature and are left out of the "
            "manifest: notes.txt") in proc.stderr
    assert "notes.txt" not in entries(out)


def test_to_stdout_with_the_key_from_the_environment(signed, keys):
    proc = run_cli("build", "--from-signature", str(signed / "model.sig"), "--model", "acme/tiny-model",
                   env={"MODELGUARD_PUBLIC_KEY": str(keys["public"])})
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert sorted(f["path"] for f in doc["files"]) == sorted(FILES)


@pytest.mark.parametrize("args, message", [
    (["--public-key", "k.pem"], "--public-key applies to --from-signature only"),
    (["--identity", "a@example.com", "--identity-provider", "https://accounts.example.com"],
     "--identity, --identity-provider apply to --from-signature only"),
])
def test_signer_options_need_from_signature(signed, args, message):
    proc = run_cli("build", str(signed), "--model", "acme/m", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr


def test_from_signature_usage_errors(signed, monkeypatch):
    monkeypatch.delenv("MODELGUARD_PUBLIC_KEY", raising=False)
    no_key = run_cli("build", "--from-signature", str(signed / "model.sig"), "--model", "acme/m")
    assert no_key.returncode == 2
    assert "is a signature: checking it needs to know who must have signed it" in no_key.stderr
    no_model = run_cli("build", "--from-signature", str(signed / "model.sig"), "--public-key", "k.pem")
    assert no_model.returncode == 2 and "build needs --model" in no_model.stderr
    both = run_cli("build", "--from-signature", str(signed / "model.sig"), "--from-hub", "acme/m", "--model", "acme/m")
    assert both.returncode == 2 and "pass either --from-signature or --from-hub, not both" in both.stderr
    for proc in (no_key, no_model, both):
        assert "Traceback" not in proc.stderr
