"""Lock entries that name who must have signed a model (``signed_by``): ``lock add
--signed-by-key``, enforcement by the guard before construction, ``verify --lock``, and the
schema's validation. Real model-signing library, keys made by openssl, tiny BERT models
served by the test Hub."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.requires import need

from modelguard import lockfile, signing
from modelguard.errors import ManifestError
from modelguard.hfcache import repo_folder
from modelguard.lockfile import LOCK_NAME, dump_lock, parse_lock_text

from test_lock import cli, download, load_each

need("huggingface_hub")
need("transformers")
need("model_signing")

SIGNED, UNSIGNED, OTHER_KEY = "org/signed", "org/unsigned", "org/other-key"


@pytest.fixture(scope="module")
def sources(tmp_path_factory, keys):
    """Three copies of one tiny BERT: signed by the publisher, unsigned, signed by another key."""
    from helpers.tiny_bert import save_tiny_bert

    root = tmp_path_factory.mktemp("lock-signed")
    unsigned = save_tiny_bert(root / "unsigned")
    signed = Path(shutil.copytree(unsigned, root / "signed"))
    signing.sign_directory(signed, private_key=keys["private"])
    other = Path(shutil.copytree(unsigned, root / "other"))
    signing.sign_directory(other, private_key=keys["other_private"])
    return {SIGNED: signed, UNSIGNED: unsigned, OTHER_KEY: other}


@pytest.fixture
def project(tmp_path, hub, sources, keys):
    """A project whose lock requires each model to be signed by the publisher's key (kept in the project)."""
    folder = tmp_path / "project"
    (folder / "keys").mkdir(parents=True)
    shutil.copy(keys["public"], folder / "keys" / "publisher.pem")
    for model, source in sources.items():
        hub.add_directory(model, source)
    proc = cli("lock", "add", *sources, "--signed-by-key", str(folder / "keys" / "publisher.pem"), cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "signed by the key keys/publisher.pem)" in proc.stdout
    for model in sources:
        download(hub, model)
    return folder


def test_lock_add_records_signed_by_relative_to_the_lock_and_keeps_it(project):
    lock_path = project / LOCK_NAME
    text = lock_path.read_text()
    assert text.count("  signed_by:\n      public_key: keys/publisher.pem\n") == 3
    lock = lockfile.load_lock(lock_path)
    entry = lock.get(SIGNED)
    assert entry.signed_by == lockfile.SignedBy(public_key="keys/publisher.pem")
    assert entry.signed_by.key_path(lock_path) == str(project / "keys" / "publisher.pem")
    assert dump_lock(lock) == text  # stable
    # Re-adding without the option keeps the signer; the bytes do not change.
    again = cli("lock", "add", SIGNED, cwd=project)
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr
    assert lock_path.read_text() == text
    # Merging an entry that names no signer (lock add, lock record) keeps the recorded one.
    assert lock.merged([lockfile.LockEntry(SIGNED, entry.revision, entry.manifest)]).get(SIGNED).signed_by \
        == entry.signed_by
    # Without signed_by, entries serialise exactly as before the field existed.
    plain = lockfile.Lock({m: replace(e, signed_by=None) for m, e in lock.entries.items()})
    assert dump_lock(plain) == text.replace("    signed_by:\n      public_key: keys/publisher.pem\n", "")


def test_the_guard_requires_the_locked_signer(project):
    lock_path = project / LOCK_NAME
    lock = lockfile.load_lock(lock_path)
    signed, unsigned, other = (load_each(project, (m, "")) for m in (SIGNED, UNSIGNED, OTHER_KEY))
    assert signed == ["LOADED built=1 no-warning"]
    [line] = unsigned
    snap = repo_folder(UNSIGNED) / "snapshots" / lock.get(UNSIGNED).revision
    assert line.startswith(
        f"REFUSED SignatureError built=0 | modelguard refused to load {UNSIGNED} (transformers "
        f"BertModel.from_pretrained): the project lock requires it signed by the key keys/publisher.pem ({LOCK_NAME} at {lock_path}, entry "
        f"{UNSIGNED}@{lock.get(UNSIGNED).revision}), and {snap} holds no model.sig"), line
    assert "fix:      put the publisher's model.sig in the model folder" in line
    assert f"or remove signed_by from {UNSIGNED} in {lock_path}" in line
    [line] = other
    assert line.startswith(f"REFUSED SignatureError built=0 | modelguard refused to load {OTHER_KEY} (transformers "), line
    assert (f"the project lock requires {OTHER_KEY} signed by the key keys/publisher.pem ({LOCK_NAME} at "
            f"{lock_path}, entry {OTHER_KEY}@{lock.get(OTHER_KEY).revision})") in line
    assert "correct signed_by in " + str(lock_path) in line
    # The guard-wide key setting does not replace the lock's signer for a locked model.
    assert load_each(project, (OTHER_KEY, ""), MODELGUARD_PUBLIC_KEY=str(project / "nothing.pem"))[0].startswith(
        "REFUSED SignatureError built=0")


def test_verify_lock_checks_the_signer(project):
    lock_path = project / LOCK_NAME
    bad = cli("verify", "--lock", "--json", cwd=project, offline=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    models = {m["model"]: m for m in json.loads(bad.stdout)["models"]}
    assert models[SIGNED]["status"] == "verified"
    assert models[UNSIGNED]["status"] == "failed"
    assert models[UNSIGNED]["message"].startswith(
        "the lock requires a model.sig signed by the key keys/publisher.pem, and ")
    assert models[UNSIGNED]["message"].endswith("holds none")
    assert models[OTHER_KEY]["status"] == "failed"
    assert models[OTHER_KEY]["message"].startswith("the lock requires a model.sig signed by the key keys/publisher.pem: ")
    assert f"correct signed_by of {OTHER_KEY} in {lock_path}" in models[OTHER_KEY]["remedy"]
    text = cli("verify", "--lock", cwd=project, offline=True)
    assert text.returncode == 1
    assert f"FAILED: {UNSIGNED} @ " in text.stdout and "holds none" in text.stdout
    assert text.stdout.splitlines()[-1] == f"FAILED: 2 of 3 locked model(s) did not verify: {OTHER_KEY}, {UNSIGNED}"
    # Only the signed model locked: verify --lock passes.
    only = project / "only.lock"
    lock = lockfile.load_lock(lock_path)
    lockfile.write_lock(only, lockfile.Lock({SIGNED: lock.get(SIGNED)}, only))
    ok = cli("verify", "--lock", str(only), cwd=project, offline=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.splitlines()[-1] == "verified: all 1 locked model(s) verified"


REV = "5f887ac2e39c7875ed2afe5ff671830b2d7811f3"
ENTRY = (f"modelguard_lock: 1\nmodels:\n  org/x:\n    revision: {REV}\n    signed_by: %s\n    files:\n    - path: a.bin\n      size: 1\n"
         f"      sha256: {'ab' * 32}\n")


@pytest.mark.parametrize("value, problem", [
    ("{public_key: k.pem, identity: a@b.c}", "names both a public key and a Sigstore identity"),
    ("{key: k.pem}", "unknown key 'key'"),
    ("{identity: a@b.c}", "the identity a@b.c without its identity_provider: any provider could vouch for it"),
    ("{identity_provider: https://accounts.google.com}", "identity_provider without an identity"),
    ("{identity: a@b.c, identity_provider: accounts.google.com}", "not an issuer URL"),
    ("{public_key: 3}", "not a non-empty string"),
    ("{public_key: ''}", "not a non-empty string"),
    ("k.pem", "not a mapping naming a key or an identity"),
    ("{}", "not a mapping naming a key or an identity"),
])
def test_malformed_signed_by_is_refused_clearly(tmp_path, value, problem):
    with pytest.raises(ManifestError) as info:
        parse_lock_text(ENTRY % value, source="L")
    assert info.value.message.startswith("lock file L: models.org/x.signed_by"), info.value.message
    assert problem in info.value.message
    (tmp_path / LOCK_NAME).write_text(ENTRY % value)
    proc = cli("verify", "--lock", cwd=tmp_path, offline=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"modelguard: error: lock file {tmp_path / LOCK_NAME}: models.org/x.signed_by")
    assert problem in proc.stderr


def test_a_valid_identity_signed_by_round_trips():
    text = ENTRY % "{identity_provider: https://accounts.google.com, identity: a@b.c}"
    lock = parse_lock_text(text)
    assert lock.get("org/x").signed_by == lockfile.SignedBy(identity="a@b.c",
                                                            identity_provider="https://accounts.google.com")
    out = dump_lock(lock)
    assert "    signed_by:\n      identity: a@b.c\n      identity_provider: https://accounts.google.com\n" in out
    assert dump_lock(parse_lock_text(out)) == out


@pytest.mark.parametrize("args, message", [
    (["--signed-by-key", "absent.pem"], "--signed-by-key absent.pem: no such file"),
    (["--signed-by-identity", "a@b.c"], "the identity a@b.c without its identity_provider"),
    (["--identity-provider", "https://accounts.google.com"], "--identity-provider names the issuer of"),
    (["--signed-by-identity", "a@b.c", "--identity-provider", "nope"], "not an issuer URL"),
])
def test_lock_add_signed_by_option_errors(tmp_path, args, message):
    proc = cli("lock", "add", "org/x", *args, cwd=tmp_path, offline=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / LOCK_NAME).exists()
