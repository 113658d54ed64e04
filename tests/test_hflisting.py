"""Zero configuration: a model in the Hugging Face cache with no manifest anywhere is checked
against what the cache recorded — the Hub's listing that ``snapshot_download`` saves at
``trees/<commit>.json``, else the content addresses its blobs are named by.

The real huggingface_hub client downloads from the test Hub (tests/hubserver.py); the
checks then run offline, by the CLI, from Python, and by the guard in front of transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need
from hubserver import lfs_pointer

import modelguard
from modelguard import guard
from modelguard.errors import ManifestNotFoundError
from modelguard.hfcache import repo_folder

need("huggingface_hub")
need("transformers")

MODEL = "org/tinybert"
WEIGHTS = "model.safetensors"
README = b"# tiny bert\n\nA model made by the tests.\n"


@pytest.fixture(scope="module")
def bert_source(tmp_path_factory) -> Path:
    from helpers.tiny_bert import save_tiny_bert

    source = save_tiny_bert(tmp_path_factory.mktemp("tinybert-source") / "tinybert")
    (source / "README.md").write_bytes(README)
    return source


@pytest.fixture
def served(hub, bert_source) -> str:
    """``MODEL`` published on the test Hub; returns its commit."""
    return hub.add_directory(MODEL, bert_source)


def download(hub, cache: Path | None = None, **kwargs) -> Path:
    """``snapshot_download`` of ``MODEL`` with the real client (the default cache unless ``cache``)."""
    from huggingface_hub import snapshot_download

    cache_dir = str(cache) if cache is not None else os.environ["HF_HUB_CACHE"]
    return Path(snapshot_download(MODEL, cache_dir=cache_dir, endpoint=hub.endpoint, **kwargs))


def listing_of(snapshot: Path) -> Path:
    return snapshot.parent.parent / "trees" / f"{snapshot.name}.json"


def offline_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run_cli(*args, env={"HF_HUB_OFFLINE": "1", **env})


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


# --------------------------------------------------------------------------- damage


def _blob(snapshot: Path, rel: str = WEIGHTS) -> Path:
    return Path(os.path.realpath(snapshot / rel))


def flip_byte(snapshot: Path) -> None:
    blob = _blob(snapshot)
    data = bytearray(blob.read_bytes())
    data[-40] ^= 0x55  # inside the last tensor's data: still a loadable safetensors file
    blob.write_bytes(bytes(data))


def truncate(snapshot: Path) -> None:
    blob = _blob(snapshot)
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])


def delete_file(snapshot: Path) -> None:
    (snapshot / WEIGHTS).unlink()


def delete_blob(snapshot: Path) -> None:
    _blob(snapshot).unlink()


def lfs_stub(snapshot: Path) -> None:
    blob = _blob(snapshot)
    blob.write_bytes(lfs_pointer(blob.read_bytes()))


# --------------------------------------------------------------------------- the saved listing


def test_snapshot_download_saves_the_listing_in_the_format_read(hub, served, bert_source):
    snap = download(hub)
    listing = json.loads(listing_of(snap).read_text())
    assert listing["format_version"] == 1
    weights = listing["files"][WEIGHTS]
    published = hub.file(MODEL, served, WEIGHTS)
    assert weights["lfs_sha256"] == published.sha256 and weights["size"] == len(published.data)
    assert listing["files"]["config.json"]["blob_id"] == hub.file(MODEL, served, "config.json").git_sha1
    assert sorted(listing["files"]) == sorted(p.name for p in bert_source.iterdir())


def test_verify_model_id_offline_against_the_saved_listing(hub, served):
    snap = download(hub)
    proc = offline_cli("verify", MODEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{MODEL} @ {served[:12]}  in {snap}"
    assert lines[1] == (f"  expectations: the Hub's listing of commit {served} saved at download "
                        f"({listing_of(snap)})")
    assert any(WEIGHTS in line and "ok (" in line and "sha256" in line for line in lines)
    assert any("config.json" in line and "git_sha1" in line for line in lines)
    assert lines[-1] == (f"verified: 3 file(s) of {MODEL} match the Hub's listing of commit {served[:12]} "
                         "saved at download")

    as_json = json.loads(offline_cli("verify", MODEL, "--json").stdout)
    assert as_json["ok"] is True and as_json["revision"] == served
    assert as_json["expectations"] == {
        "origin": "hub-listing",
        "source": f"the Hub's listing of commit {served} saved at download ({listing_of(snap)})",
        "completeness_checked": True,
    }
    by_path = {f["path"]: f for f in as_json["files"]}
    assert by_path[WEIGHTS]["expected"] == {"size": hub.file(MODEL, served, WEIGHTS).data.__len__(),
                                            "sha256": hub.file(MODEL, served, WEIGHTS).sha256}
    assert by_path["README.md"]["component"] == "other" and by_path["README.md"]["required"] is False

    path_proc = offline_cli("verify", str(snap), "-q")
    assert path_proc.returncode == 0, path_proc.stderr
    assert path_proc.stdout == (f"verified: 3 file(s) of {MODEL} match the Hub's listing of commit "
                                f"{served[:12]} saved at download\n")


def test_verify_from_python_with_no_manifest(hub, served):
    snap = download(hub)
    report = modelguard.verify(MODEL)
    assert report.ok and report.expectations == "hub-listing" and report.completeness_checked
    assert report.directory == str(snap) and report.revision == served
    assert report.manifest_source == f"the Hub's listing of commit {served} saved at download ({listing_of(snap)})"
    by_path = modelguard.verify(str(snap))
    assert by_path.ok and by_path.manifest_source == report.manifest_source


@pytest.mark.parametrize("damage, diagnosis, message", [
    (flip_byte, "digest_mismatch", "right size, wrong content: sha256: expected "),
    (truncate, "truncated", "truncated: "),
    (delete_file, "missing", "missing: not in "),
    (lfs_stub, "lfs_pointer", "is a Git LFS pointer stub ("),
])
def test_each_damage_is_diagnosed_against_the_listing(hub, served, damage, diagnosis, message):
    snap = download(hub)
    damage(snap)
    proc = offline_cli("verify", MODEL, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["expectations"]["origin"] == "hub-listing"
    [failed] = [f for f in doc["files"] if f["status"] == "failed"]
    assert failed["path"] == WEIGHTS and failed["diagnosis"] == diagnosis
    assert failed["message"].startswith(message), failed["message"]
    assert failed["remedy"] == f"download it again: hf download {MODEL} --revision {served} --force-download"

    text = offline_cli("verify", MODEL)
    assert text.returncode == 1
    assert f"FAILED: {MODEL}: 1 of 3 file(s) failed (component(s): files)" in text.stdout
    no_traceback(text)


def test_the_suggested_command_repairs_the_snapshot(hub, served):
    snap = download(hub)
    flip_byte(snap)
    assert offline_cli("verify", MODEL).returncode == 1
    proc = subprocess.run([str(Path(sys.executable).parent / "hf"), "download", MODEL, "--revision", served,
                           "--force-download"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_ENDPOINT": hub.endpoint})
    assert proc.returncode == 0, proc.stderr
    assert offline_cli("verify", MODEL).returncode == 0


# --------------------------------------------------------------------------- no saved listing


@pytest.mark.parametrize("damage, diagnosis, message", [
    (flip_byte, "digest_mismatch", "wrong content: sha256: expected "),
    (truncate, "digest_mismatch", "wrong content: sha256: expected "),
    (delete_blob, "missing", "dangling symlink (points to ../../blobs/"),
    (lfs_stub, "lfs_pointer", "is a Git LFS pointer stub ("),
])
def test_without_a_listing_the_blob_names_are_the_expectations(hub, served, damage, diagnosis, message):
    snap = download(hub)
    listing_of(snap).unlink()
    clean = offline_cli("verify", MODEL)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.splitlines()[1] == (
        f"  expectations: the content addresses of the cache's blobs; completeness not checked "
        f"(no saved listing at {listing_of(snap)}, so files missing from the snapshot cannot be known)")
    assert clean.stdout.splitlines()[-1] == (
        f"verified: 3 file(s) of {MODEL} match their blobs' content addresses (completeness not checked)")

    damage(snap)
    proc = offline_cli("verify", MODEL, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["expectations"]["origin"] == "blob-addresses"
    assert doc["expectations"]["completeness_checked"] is False
    [failed] = [f for f in doc["files"] if f["status"] == "failed"]
    assert failed["path"] == WEIGHTS and failed["diagnosis"] == diagnosis
    assert failed["message"].startswith(message), failed["message"]
    assert "size" not in failed["expected"]  # a blob name carries no size


def test_without_a_listing_a_deleted_file_cannot_be_known_and_the_report_says_so(hub, served):
    snap = download(hub)
    listing_of(snap).unlink()
    delete_file(snap)
    proc = offline_cli("verify", MODEL, "--json")
    assert proc.returncode == 0, proc.stdout
    doc = json.loads(proc.stdout)
    assert [f["path"] for f in doc["files"]] == ["README.md", "config.json"]
    assert doc["expectations"]["completeness_checked"] is False
    assert "completeness not checked" in doc["expectations"]["source"]
    assert "files missing from the snapshot cannot be known" in doc["expectations"]["source"]


@pytest.mark.parametrize("content, why", [
    (b"{not json", "not valid JSON"),
    (b'{"format_version": 2, "files": {}}', "format_version 2 is not 1"),
    (b'{"format_version": 1, "files": {"../x": {"size": 1, "blob_id": "' + b"a" * 40 + b'"}}}',
     "unsafe path '../x'"),
    (b'{"format_version": 1, "files": {"config.json": {"size": -1, "blob_id": "' + b"a" * 40 + b'"}}}',
     "entry 'config.json': size -1 is not a non-negative integer"),
    (b'{"format_version": 1, "files": {"model.safetensors": {"size": 9, "blob_id": "' + b"a" * 40
     + b'", "lfs_sha256": "xyz"}}}', "entry 'model.safetensors': lfs_sha256 'xyz' is not 64 hex digits"),
])
def test_a_bad_listing_is_not_used_and_the_report_says_why(hub, served, content, why):
    snap = download(hub)
    listing_of(snap).write_bytes(content)
    proc = offline_cli("verify", MODEL, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    source = json.loads(proc.stdout)["expectations"]["source"]
    assert source.startswith("the content addresses of the cache's blobs; completeness not checked")
    assert f"the saved listing {listing_of(snap)} was not used: {why}" in source, source


def test_a_local_dir_download_is_checked_against_its_saved_listing(hub, served, tmp_path):
    local = download(hub, local_dir=str(tmp_path / "local"))
    saved = local / ".cache" / "huggingface" / "trees" / f"{served}.json"
    assert saved.is_file()
    proc = offline_cli("verify", str(local))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"  expectations: the Hub's listing of commit {served} saved at download ({saved})" in proc.stdout
    (local / "config.json").write_text('{"model_type": "bert"}')
    bad = offline_cli("verify", str(local), "-q")
    assert bad.returncode == 1
    assert bad.stdout.startswith("FAIL config.json [files]: ")
    assert f"fix: download it again: hf download ORG/NAME --revision {served} --local-dir {local} --force-download" \
        in bad.stdout


def test_docs_are_optional_unless_all_files_are_asked(hub, served):
    download(hub, allow_patterns=["*.json", "*.safetensors"])
    proc = offline_cli("verify", MODEL)
    assert proc.returncode == 0, proc.stdout
    assert any(line.startswith("  skip  other  README.md") for line in proc.stdout.splitlines()), proc.stdout
    every = offline_cli("verify", MODEL, "--all-files", "-q")
    assert every.returncode == 1
    assert every.stdout.startswith("FAIL README.md [files]: missing: not in ")


def test_a_folder_with_no_source_is_a_clear_error(tmp_path, bert_source):
    proc = run_cli("verify", str(bert_source))
    assert proc.returncode == 2
    assert (f"modelguard: error: {bert_source} is a directory with no source of expectations: no manifest names "
            "it, and it is not a Hugging Face cache snapshot or download folder with a saved listing") in proc.stderr
    assert "snapshot_download" in proc.stderr
    no_traceback(proc)
    with pytest.raises(ManifestNotFoundError) as info:
        modelguard.verify("org/absent")
    assert "snapshot_download" in info.value.remedy


# --------------------------------------------------------------------------- the guard in front of transformers

LOAD = """
import sys, warnings
import modelguard
from modelguard.errors import VerificationError

modelguard.install()
from transformers import AutoModel

for name, cache in zip(sys.argv[1::2], sys.argv[2::2]):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            AutoModel.from_pretrained(name, cache_dir=cache or None)
        except VerificationError as exc:
            diagnoses = sorted({r.path + ":" + r.diagnosis for r in exc.report.failures})
            print("REFUSED", " ".join(diagnoses), "|", str(exc).splitlines()[1].strip(), "| fix:", exc.remedy)
        except OSError as exc:
            print("LOADER-ERROR", type(exc).__name__)
        else:
            unknown = [w for w in caught if type(w.message).__name__ == "UnknownModelWarning"]
            print("LOADED", "unknown-warning" if unknown else "no-warning")
"""


def load_each(*targets: tuple[str, Path | str], **env: str) -> list[str]:
    args = [str(a) for target in targets for a in target]
    proc = subprocess.run([sys.executable, "-c", LOAD, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(targets), proc.stdout + proc.stderr[-3000:]
    return lines


def test_the_guard_checks_a_cached_model_with_no_manifest_and_refuses_each_damage(hub, served, tmp_path):
    damages = {"clean": None, "flip": flip_byte, "truncate": truncate, "delete": delete_file, "stub": lfs_stub,
               "readme": None}
    caches = {}
    for name, damage in damages.items():
        snap = download(hub, tmp_path / name)
        if damage is not None:
            damage(snap)
        caches[name] = tmp_path / name
    readme = _blob(download(hub, tmp_path / "readme"), "README.md")
    readme.write_bytes(README.replace(b"tiny", b"TINY"))  # same size, other bytes
    lines = load_each(*((MODEL, caches[name]) for name in damages))
    listing = f"expectations: the Hub's listing of commit {served} saved at download"
    assert lines[0] == "LOADED no-warning", lines  # checked, so no unknown-model warning
    assert lines[1].startswith(f"REFUSED {WEIGHTS}:digest_mismatch | {listing}"), lines
    assert lines[1].endswith(f"fix: download it again: hf download {MODEL} --revision {served} "
                             f"--cache-dir {caches['flip']} --force-download"), lines
    assert lines[2].startswith(f"REFUSED {WEIGHTS}:truncated | {listing}"), lines
    assert lines[3].startswith(f"REFUSED {WEIGHTS}:missing | {listing}"), lines
    assert lines[4].startswith(f"REFUSED {WEIGHTS}:lfs_pointer | {listing}"), lines
    assert lines[5] == "LOADED no-warning", lines  # README is not read by the loader: not checked
    # ... unless every file is asked for.
    assert load_each((MODEL, caches["readme"]), MODELGUARD_ALL_FILES="1") == [
        f"REFUSED README.md:digest_mismatch | {listing} ({listing_of(readme.parent.parent / 'snapshots' / served)})"
        f" | fix: download it again: hf download {MODEL} --revision {served} --cache-dir {caches['readme']}"
        " --force-download"
    ]


def test_the_guard_without_a_listing_checks_blob_addresses(hub, served, tmp_path):
    damages = {"clean": None, "flip": flip_byte, "truncate": truncate, "delete-blob": delete_blob,
               "stub": lfs_stub, "delete-link": delete_file}
    caches = {}
    for name, damage in damages.items():
        snap = download(hub, tmp_path / name)
        listing_of(snap).unlink()
        if damage is not None:
            damage(snap)
        caches[name] = tmp_path / name
    lines = load_each(*((MODEL, caches[name]) for name in damages))
    blobs = "expectations: the content addresses of the cache's blobs; completeness not checked"
    assert lines[0] == "LOADED no-warning", lines
    assert lines[1].startswith(f"REFUSED {WEIGHTS}:digest_mismatch | {blobs}"), lines
    assert lines[2].startswith(f"REFUSED {WEIGHTS}:digest_mismatch | {blobs}"), lines
    assert lines[3].startswith(f"REFUSED {WEIGHTS}:missing | {blobs}"), lines
    assert lines[4].startswith(f"REFUSED {WEIGHTS}:lfs_pointer | {blobs}"), lines
    # A file whose link is gone cannot be known without the listing: transformers reports it itself.
    assert lines[5] == "LOADER-ERROR OSError", lines


def test_the_guard_checks_a_snapshot_path_and_a_local_dir(hub, served, tmp_path):
    snap = download(hub, tmp_path / "cache")
    local = download(hub, local_dir=str(tmp_path / "local"))
    flip_byte(snap)
    blob = local / WEIGHTS
    data = bytearray(blob.read_bytes())
    data[-40] ^= 0x55
    blob.write_bytes(bytes(data))
    lines = load_each((snap, ""), (local, ""))
    assert lines[0].startswith(f"REFUSED {WEIGHTS}:digest_mismatch | expectations: the Hub's listing of commit {served}")
    assert lines[1].startswith(f"REFUSED {WEIGHTS}:digest_mismatch | expectations: the Hub's listing of commit {served}")


def test_unknown_model_message_says_how_to_get_a_source(bert_source, tmp_path):
    import shutil

    plain = Path(shutil.copytree(bert_source, tmp_path / "plain"))
    modelguard.install()
    try:
        with pytest.warns(guard.UnknownModelWarning) as record:
            resolved = guard.check_before_load(plain, loader="test loader")
    finally:
        modelguard.uninstall()
    assert resolved.how == "unknown"
    text = str(record[0].message)
    assert f"no manifest applies to {plain} (loaded by test loader)" in text
    assert f"modelguard build {plain} --model ORG/NAME" in text
    assert ("download it with huggingface_hub's snapshot_download (or `hf download`), which saves the Hub's "
            "listing that the guard then checks the files against") in text


def test_guard_settings_for_cache_listings_in_process(hub, served, monkeypatch):
    from modelguard.errors import VerificationError

    snap = download(hub)
    readme = _blob(snap, "README.md")
    readme.write_bytes(README.replace(b"tiny", b"TINY"))
    modelguard.install()
    try:
        resolved = guard.check_before_load(snap, loader="test loader")
        assert resolved.how == "hf-listing" and resolved.revision == served
        assert resolved.describe() == (f"expectations: the Hub's listing of commit {served} saved at download "
                                       f"({listing_of(snap)})")
        modelguard.install(all_files=True)
        with pytest.raises(VerificationError) as info:
            guard.check_before_load(snap, loader="test loader")
        assert info.value.report.failures[0].path == "README.md"

        modelguard.install("repair", all_files=False)
        flip_byte(snap)
        with pytest.raises(VerificationError) as info:
            guard.check_before_load(snap, loader="test loader")
        text = str(info.value)
        assert f"modelguard could not repair {MODEL} (test loader)" in text
        assert "(repair skipped: it needs a manifest; download the files again with the command below)" in text
        assert len(hub.requests("GET", "/lfs/")) == 1  # only the first download: nothing fetched by the guard
    finally:
        modelguard.uninstall()
