"""The project lock, ``modelguard.lock``: ``lock add`` (from the Hub's metadata, from the
cache offline, from a folder), enforcement by the guard in front of transformers,
``verify --lock`` and ``sync``.

The real huggingface_hub client talks to the test Hub (tests/hubserver.py); loads run in a
subprocess with the lock in its working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need

from modelguard import lockfile, resolve as resolve_module
from modelguard.errors import ManifestError, UsageError, VerificationError
from modelguard.hfcache import repo_folder
from modelguard.lockfile import LOCK_NAME, Lock, find_lock, load_lock, write_lock
from modelguard.locking import entry_for_snapshot

need("huggingface_hub")
need("transformers")

MODEL = "org/tinybert"
OTHER = "org/other"
WEIGHTS = "model.safetensors"
README = b"# tiny bert\n"


@pytest.fixture(scope="module")
def bert_source(tmp_path_factory) -> Path:
    from helpers.tiny_bert import save_tiny_bert

    source = save_tiny_bert(tmp_path_factory.mktemp("lock-bert") / "tinybert")
    (source / "README.md").write_bytes(README)
    return source


@pytest.fixture(scope="module")
def bert_source_v2(tmp_path_factory) -> Path:
    from helpers.tiny_bert import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("lock-bert-v2") / "tinybert", seed=1)


@pytest.fixture
def served(hub, bert_source) -> str:
    """``MODEL`` on the test Hub, tagged v1; returns its commit."""
    return hub.add_directory(MODEL, bert_source, tags=["v1"])


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    return folder


def download(hub, model: str = MODEL, revision: str | None = None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, revision=revision, cache_dir=os.environ["HF_HUB_CACHE"],
                                  endpoint=hub.endpoint))


def cli(*args: str, cwd: Path, offline: bool = False, **env: str) -> subprocess.CompletedProcess:
    proc = run_cli(*args, cwd=cwd, env={**({"HF_HUB_OFFLINE": "1"} if offline else {}), **env})
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def flip_byte(snapshot: Path) -> None:
    blob = Path(os.path.realpath(snapshot / WEIGHTS))
    data = bytearray(blob.read_bytes())
    data[-40] ^= 0x55
    blob.write_bytes(bytes(data))


# --------------------------------------------------------------------------- lock add


def test_lock_add_online_pins_the_commit_from_metadata_and_repeats_byte_identical(hub, served, project):
    proc = cli("lock", "add", MODEL, cwd=project / "src")  # no lock anywhere: created in the working directory
    assert proc.returncode == 0, proc.stderr
    lock_path = project / "src" / LOCK_NAME
    assert proc.stdout.splitlines() == [
        f"locked {MODEL} @ {served} (3 file(s), from the Hub's metadata)",
        f"wrote {lock_path} (1 model(s))",
    ]
    assert hub.requests("GET", "/lfs/") == []  # no weights downloaded
    text = lock_path.read_text()
    assert text.startswith("# modelguard lockfile (schema 1).")
    entry = load_lock(lock_path).get(MODEL)
    assert entry.revision == served and entry.manifest.revision == served
    weights = hub.file(MODEL, served, WEIGHTS)
    assert entry.manifest.file(WEIGHTS).size == len(weights.data)
    assert dict(entry.manifest.file(WEIGHTS).digests) == {"sha256": weights.sha256}
    assert dict(entry.manifest.file("config.json").digests) == {
        "git_sha1": hub.file(MODEL, served, "config.json").git_sha1}
    assert entry.manifest.file("README.md").component == "docs"

    stat_before = lock_path.stat()
    (project / "src" / "deeper").mkdir()
    again = cli("lock", "add", MODEL, cwd=project / "src" / "deeper")  # found from a folder below: the same lock
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == f"unchanged {lock_path} (1 model(s))"
    assert lock_path.read_text() == text and lock_path.stat().st_mtime_ns == stat_before.st_mtime_ns


def test_lock_add_resolves_a_tag_and_keeps_other_entries_sorted(hub, served, bert_source_v2, project):
    newer = hub.add_directory(MODEL, bert_source_v2)  # main moves on; v1 stays
    other = hub.add_directory(OTHER, bert_source_v2)
    lock_path = project / LOCK_NAME
    assert cli("lock", "add", OTHER, f"{MODEL}@v1", "--lock", str(lock_path), cwd=project).returncode == 0
    lock = load_lock(lock_path)
    assert list(lock.entries) == [OTHER, MODEL]  # sorted ("org/other" < "org/tinybert")
    assert lock.get(MODEL).revision == served and lock.get(OTHER).revision == other
    text = lock_path.read_text()
    assert text.index(f"  {OTHER}:") < text.index(f"  {MODEL}:")
    # A later add replaces the entry of the same model only.
    assert cli("lock", "add", MODEL, "--lock", str(lock_path), cwd=project).returncode == 0
    lock = load_lock(lock_path)
    assert lock.get(MODEL).revision == newer and lock.get(OTHER).revision == other


def test_lock_add_offline_from_the_cache_gives_the_online_entry(hub, served, project, tmp_path):
    online = tmp_path / "online.lock"
    assert cli("lock", "add", MODEL, "--lock", str(online), cwd=project).returncode == 0
    download(hub)
    proc = cli("lock", "add", MODEL, cwd=project, offline=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"locked {MODEL} @ {served} (3 file(s), from the Hugging Face cache)"
    assert (project / LOCK_NAME).read_bytes() == online.read_bytes()


def test_entry_for_snapshot_without_a_listing_hashes_and_restricts_to_files(hub, served):
    snap = download(hub)
    with_listing = entry_for_snapshot(MODEL, snap)
    (snap.parent.parent / "trees" / f"{served}.json").unlink()
    hashed = entry_for_snapshot(MODEL, snap)
    assert hashed.to_dict() == with_listing.to_dict()  # blob names say which digest each file gets
    only = entry_for_snapshot(MODEL, snap, files=["config.json", WEIGHTS])
    assert [f.path for f in only.manifest.files] == ["config.json", WEIGHTS]
    flip_byte(snap)
    with pytest.raises(UsageError) as info:
        entry_for_snapshot(MODEL, snap)
    assert "does not match the content address its blob is named by" in info.value.message
    assert "so it is not locked" in info.value.message


def test_lock_add_from_a_folder_hashes_it(hub, served, bert_source, project):
    proc = cli("lock", "add", f"{MODEL}@{served}", "--from", str(bert_source), cwd=project, offline=True)
    assert proc.returncode == 0, proc.stderr
    assert f"(3 file(s), hashed from {bert_source})" in proc.stdout
    entry = load_lock(project / LOCK_NAME).get(MODEL)
    assert entry.revision == served
    assert dict(entry.manifest.file("config.json").digests) == {"sha256": hub.file(MODEL, served, "config.json").sha256}

    no_commit = cli("lock", "add", MODEL, "--from", str(bert_source), cwd=project)
    assert no_commit.returncode == 2
    assert f"modelguard: error: which commit of {MODEL} {bert_source} holds is not known" in no_commit.stderr
    assert f"fix:      name the commit: modelguard lock add {MODEL}@COMMIT --from {bert_source}" in no_commit.stderr


@pytest.mark.parametrize("args, offline, message, fix", [
    (("a/b/c",), False, "'a/b/c' is not a model id", None),
    ((f"{MODEL}@nope",), False, f"revision 'nope' of {MODEL} does not exist on", "check --revision"),
    (("org/absent",), False, "org/absent is not on", "check the model id"),
    ((MODEL,), True, f"HF_HUB_OFFLINE is set and {MODEL} is not in the Hugging Face cache",
     "unset HF_HUB_OFFLINE to lock from the Hub's metadata (no weights are downloaded); or lock a local copy: "
     f"modelguard lock add {MODEL} --from DIR"),
    ((f"{MODEL}@",), False, f"'{MODEL}@' names no revision after '@'", None),
])
def test_lock_add_errors_are_clear(hub, served, project, args, offline, message, fix):
    proc = cli("lock", "add", *args, cwd=project, offline=offline)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"modelguard: error: {message}"), proc.stderr
    if fix:
        assert fix in proc.stderr
    assert not (project / LOCK_NAME).exists()  # nothing written


# --------------------------------------------------------------------------- finding and caching


def test_find_lock_walks_up_and_honours_the_environment(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_lock(deep) is None
    write_lock(tmp_path / LOCK_NAME, Lock())
    assert find_lock(deep) == tmp_path / LOCK_NAME
    named = tmp_path / "elsewhere.lock"
    monkeypatch.setenv("MODELGUARD_LOCK", str(named))
    assert find_lock(deep) == named  # named, even before it exists (lock add creates it there)
    with pytest.raises(UsageError) as info:
        lockfile.current_lock(deep)
    assert info.value.message == f"lock file {named} does not exist (named by $MODELGUARD_LOCK)"
    assert info.value.remedy == f"create it: modelguard lock add ORG/NAME --lock {named}; or unset MODELGUARD_LOCK"


def test_the_lock_is_parsed_once_while_unchanged(hub, served, project, monkeypatch):
    assert cli("lock", "add", MODEL, cwd=project).returncode == 0
    monkeypatch.chdir(project)
    calls = []
    real = lockfile.load_lock
    monkeypatch.setattr(lockfile, "load_lock", lambda path: calls.append(path) or real(path))
    first = resolve_module.resolve(MODEL)
    for _ in range(5):
        assert resolve_module.resolve(MODEL) == first
    assert first.how == "lock" and first.revision == served
    assert first.describe() == f"expectations: {LOCK_NAME} at {project / LOCK_NAME}, entry {MODEL}@{served}"
    assert len(calls) == 1  # parsed once for six resolutions
    lock = load_lock(project / LOCK_NAME)
    write_lock(project / LOCK_NAME, lock.merged([]))  # rewritten (new inode, same bytes): read again
    resolve_module.resolve(MODEL)
    resolve_module.resolve(MODEL)
    assert len(calls) == 2


# --------------------------------------------------------------------------- the guard

LOAD = """
import sys, warnings
import modelguard
from modelguard.errors import ModelGuardError

modelguard.install()
import transformers
from transformers import AutoModel

built = []
real_init = transformers.BertModel.__init__
def counting_init(self, *a, **k):
    built.append(1)
    real_init(self, *a, **k)
transformers.BertModel.__init__ = counting_init

for target, revision in zip(sys.argv[1::2], sys.argv[2::2]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            AutoModel.from_pretrained(target, revision=revision or None)
        except ModelGuardError as exc:
            print("REFUSED", type(exc).__name__, "built=%d" % len(built), "|", str(exc).replace("\\n", " // "))
        except OSError as exc:
            print("LOADER-ERROR", type(exc).__name__, str(exc).splitlines()[0])
        else:
            unknown = [w for w in caught if type(w.message).__name__ == "UnknownModelWarning"]
            print("LOADED", "built=%d" % len(built), "unknown-warning" if unknown else "no-warning")
    built.clear()
"""


def load_each(cwd: Path, *targets: tuple[str, str], **env: str) -> list[str]:
    args = [a for t in targets for a in t]
    proc = subprocess.run([sys.executable, "-c", LOAD, *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(targets), proc.stdout + proc.stderr[-3000:]
    return lines


def test_the_guard_enforces_the_lock(hub, served, bert_source_v2, project):
    lock_path = project / LOCK_NAME
    assert cli("lock", "add", MODEL, cwd=project).returncode == 0
    old = download(hub)
    newer = hub.add_directory(MODEL, bert_source_v2)  # main moves to another commit
    new = download(hub)
    assert new.name == newer
    other = hub.add_directory(OTHER, bert_source_v2)
    download(hub, OTHER)
    lines = load_each(project, (MODEL, ""), (str(old), ""), (str(new), ""), (MODEL, newer), (MODEL, "main"),
                      (MODEL, served), (OTHER, ""))
    assert lines[0] == "LOADED built=1 no-warning", lines  # the locked commit, though main moved on
    assert lines[1] == "LOADED built=1 no-warning", lines
    refusal = (f"REFUSED VerificationError built=0 | modelguard refused {MODEL} at revision {newer}: "
               f"the project lock pins {served}")
    assert lines[2].startswith(refusal), lines
    assert f"where:    {lock_path}" in lines[2]
    assert f"expected: {MODEL} at {served} ({LOCK_NAME} at {lock_path}, entry {MODEL}@{served})" in lines[2]
    assert (f"fix:      load the locked revision (leave revision= out, or pass revision={served}); or, to move "
            f"the lock to this revision: modelguard lock add {MODEL}@{newer} --lock {lock_path}") in lines[2]
    assert lines[3].startswith(refusal), lines
    assert lines[4].startswith(f"REFUSED VerificationError built=0 | modelguard refused {MODEL} at revision main "
                               f"(commit {newer}): the project lock pins {served}"), lines
    assert lines[5] == "LOADED built=1 no-warning", lines  # the locked commit, named
    # Not in the lock: the cache's listing applies as before (no unknown-model warning).
    assert lines[6] == "LOADED built=1 no-warning", lines
    assert other  # published


def test_a_corrupted_locked_file_is_refused_before_construction(hub, served, project):
    lock_path = project / LOCK_NAME
    assert cli("lock", "add", MODEL, cwd=project).returncode == 0
    snap = download(hub)
    flip_byte(snap)
    listing = snap.parent.parent / "trees" / f"{served}.json"
    listing.unlink()  # the lock, not the cache's own record, is what catches it
    [line] = load_each(project, (MODEL, ""))
    assert line.startswith(f"REFUSED VerificationError built=0 | modelguard refused to load {MODEL} (transformers "), line
    assert f"from {snap}: files do not match the manifest" in line
    assert f"expectations: {LOCK_NAME} at {lock_path}, entry {MODEL}@{served}" in line
    assert f"FAIL {WEIGHTS} [model]: right size, wrong content" in line
    # Elsewhere (no lock found) the same cache is checked against its blob names only.
    [elsewhere] = load_each(project.parent, (MODEL, ""))
    assert "REFUSED" in elsewhere and "content addresses of the cache's blobs" in elsewhere

    # `verify ORG/NAME` uses the lock entry too; the fix the guard printed repairs the snapshot.
    verify = cli("verify", MODEL, "--json", cwd=project, offline=True)
    assert verify.returncode == 1
    doc = json.loads(verify.stdout)
    assert doc["manifest"] == f"{LOCK_NAME} at {lock_path}, entry {MODEL}@{served}"
    fix = f"modelguard fetch {MODEL} --revision {served}"
    assert f"fix:      {fix}" in line
    repaired = cli(*fix.split()[1:], cwd=project)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert f"repaired    {WEIGHTS}: repaired (" in repaired.stdout
    assert load_each(project, (MODEL, "")) == ["LOADED built=1 no-warning"]


def test_a_missing_lock_named_by_the_environment_stops_the_guard(hub, served, project):
    download(hub)
    [line] = load_each(project, (MODEL, ""), MODELGUARD_LOCK=str(project / "absent.lock"))
    assert line.startswith(f"REFUSED UsageError built=0 | lock file {project / 'absent.lock'} does not exist "
                           "(named by $MODELGUARD_LOCK)"), line


# --------------------------------------------------------------------------- verify --lock and sync


def test_verify_lock_sync_and_offline_load(hub, served, bert_source_v2, project):
    other = hub.add_directory(OTHER, bert_source_v2)
    lock_path = project / LOCK_NAME
    assert cli("lock", "add", MODEL, OTHER, cwd=project).returncode == 0
    snap = download(hub)
    download(hub, OTHER)

    ok = cli("verify", "--lock", cwd=project, offline=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0] == f"{LOCK_NAME}: {lock_path} (2 model(s))"
    assert f"{OTHER} @ {other[:12]}  in {repo_folder(OTHER) / 'snapshots' / other}" in lines
    assert lines[-1] == "verified: all 2 locked model(s) verified"

    flip_byte(snap)
    bad = cli("verify", "--lock", str(lock_path), "--json", cwd=project.parent, offline=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["lock"] == str(lock_path)
    by_model = {m["model"]: m for m in doc["models"]}
    assert by_model[OTHER]["status"] == "verified"
    assert by_model[MODEL]["status"] == "failed" and by_model[MODEL]["revision"] == served
    [failed] = [f for f in by_model[MODEL]["report"]["files"] if f["status"] == "failed"]
    assert failed["path"] == WEIGHTS and failed["diagnosis"] == "digest_mismatch"
    assert by_model[MODEL]["remedy"] == f"modelguard sync --lock {lock_path}"

    # The cache is gone: verify --lock says so, sync restores it, then everything passes offline.
    shutil.rmtree(os.environ["HF_HUB_CACHE"])
    gone = cli("verify", "--lock", cwd=project, offline=True)
    assert gone.returncode == 1
    assert f"FAILED: {MODEL} @ {served[:12]}: not present: no copy at {served} in the Hugging Face cache" in gone.stdout
    assert "  fix: modelguard sync" in gone.stdout
    assert gone.stdout.splitlines()[-1] == f"FAILED: 2 of 2 locked model(s) did not verify: {OTHER}, {MODEL}"

    offline_sync = cli("sync", cwd=project, offline=True)
    assert offline_sync.returncode == 1
    assert "need downloading" in offline_sync.stdout and "fix: unset HF_HUB_OFFLINE, then run `modelguard sync" \
        in offline_sync.stdout

    synced = cli("sync", cwd=project)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"modelguard: sync [2/2] {MODEL} @ {served[:12]}" in synced.stderr
    assert f"  downloaded  {WEIGHTS}: downloaded (" in synced.stderr
    assert f"  recorded {served[:12]} as the cache's refs/main (there was none)" in synced.stderr
    assert (repo_folder(MODEL) / "refs" / "main").read_text() == served  # offline loads naming no revision
    assert synced.stdout.splitlines()[-1] == "synced: all 2 locked model(s) verified"
    n_lfs = len(hub.requests("GET", "/lfs/"))

    again = cli("sync", "--json", cwd=project, offline=True)  # offline, all present: only verifies
    assert again.returncode == 0, again.stdout + again.stderr
    doc = json.loads(again.stdout)
    assert doc["ok"] is True and {a["action"] for m in doc["models"] for a in m["actions"]} == {"kept"}
    assert len(hub.requests("GET", "/lfs/")) == n_lfs

    assert cli("verify", "--lock", cwd=project, offline=True).returncode == 0
    assert load_each(project, (MODEL, ""), (OTHER, "")) == ["LOADED built=1 no-warning"] * 2


def test_sync_into_a_local_dir_and_verify_it(hub, served, project, tmp_path):
    assert cli("lock", "add", MODEL, cwd=project).returncode == 0
    models = tmp_path / "models"
    synced = cli("sync", "--local-dir", str(models), cwd=project)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert (models / MODEL / WEIGHTS).read_bytes() == hub.file(MODEL, served, WEIGHTS).data
    assert cli("verify", "--lock", "--local-dir", str(models), cwd=project, offline=True).returncode == 0
    (models / MODEL / "config.json").write_text("{}")
    proc = cli("verify", "--lock", "--local-dir", str(models), "-q", cwd=project, offline=True)
    assert proc.returncode == 1
    assert "FAIL config.json [model]:" in proc.stdout
    assert f"  fix: modelguard sync --lock {project / LOCK_NAME} --local-dir {models}" in proc.stdout


def test_verify_lock_usage_errors(project):
    none = cli("verify", "--lock", cwd=project)
    assert none.returncode == 2
    assert none.stderr.startswith(f"modelguard: error: no {LOCK_NAME} in {project} or any folder above it")
    assert "fix:      create one: modelguard lock add ORG/NAME; or pass --lock FILE" in none.stderr
    write_lock(project / LOCK_NAME, Lock())
    both = cli("verify", "--lock", "--local-dir", "a", "--cache-dir", "b", cwd=project)
    assert both.returncode == 2 and "--local-dir and --cache-dir exclude each other" in both.stderr
    target = cli("verify", MODEL, "--lock", cwd=project)
    assert target.returncode == 2 and "TARGET does not go with it" in target.stderr
    bare = cli("verify", cwd=project)
    assert bare.returncode == 2 and "verify needs a TARGET, or --lock" in bare.stderr
    missing = cli("sync", "--lock", str(project / "nope.lock"), cwd=project)
    assert missing.returncode == 2
    assert f"modelguard: error: lock file {project / 'nope.lock'} does not exist" in missing.stderr


def test_a_broken_lock_stops_the_guard_with_the_manifest_loaders_message(project, monkeypatch):
    (project / LOCK_NAME).write_text("modelguard_lock: 1\nmodels:\n  org/x: &a {}\n")
    monkeypatch.chdir(project)
    with pytest.raises(ManifestError) as info:
        resolve_module.resolve("org/x")
    assert info.value.message.startswith(f"lock file {project / LOCK_NAME} is not valid YAML at line 3")
    assert "anchors (&name) are not allowed" in info.value.message
    assert not isinstance(info.value, VerificationError)


def test_the_readme_lock_example_is_a_valid_lock():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Project lockfile"):readme.index("## In production")]
    block = section[section.index("```yaml\n# modelguard lockfile") + len("```yaml\n"):]
    block = block[:block.index("```")]
    lock = lockfile.parse_lock_text(block, source="README.md")
    entry = lock.get("org/tiny")
    assert entry.revision == "5f887ac2e39c7875ed2afe5ff671830b2d7811f3"
    assert [f.path for f in entry.manifest.files] == ["README.md", "model.safetensors"]
    assert block.startswith(lockfile.HEADER)


def test_a_direct_read_of_a_locked_snapshot_file_is_checked_against_the_lock(hub, served, bert_source_v2, project,
                                                                              monkeypatch, installed_guard):
    from safetensors import torch as safetensors_torch

    assert cli("lock", "add", MODEL, cwd=project).returncode == 0
    old = download(hub)
    hub.add_directory(MODEL, bert_source_v2)
    new = download(hub)
    monkeypatch.chdir(project)
    assert set(safetensors_torch.load_file(str(old / WEIGHTS)))  # the locked bytes load
    with pytest.raises(VerificationError) as info:
        safetensors_torch.load_file(str(new / WEIGHTS))
    assert info.value.message == (f"modelguard refused {MODEL} at revision {new.name}: "
                                  f"the project lock pins {served}")
    flip_byte(old)
    with pytest.raises(VerificationError) as info:
        safetensors_torch.load_file(str(old / WEIGHTS))
    text = str(info.value)
    assert f"modelguard refused to load {MODEL} (safetensors.torch.load_file)" in text
    assert f"expectations: {LOCK_NAME} at {project / LOCK_NAME}, entry {MODEL}@{served}" in text
