"""``modelguard lock record -- CMD``: an unmodified script that loads models from the Hub is run
guarded, and every model it loads is pinned in the lock (id, commit, the files the loaders
read). The real huggingface_hub, transformers and sentence-transformers against the test Hub
(tests/hubserver.py)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need

from modelguard.lockfile import load_lock
from modelguard.recording import ENV_RECORD, LoadRecord, read_records, record_load

need("huggingface_hub")
need("transformers")
need("sentence_transformers")

ST_MODEL = "org/tiny-st"
BERT_MODEL = "org/tinybert"

SCRIPT = """
import sys
from sentence_transformers import SentenceTransformer
from transformers import AutoModel

st = SentenceTransformer("org/tiny-st", device="cpu")
bert = AutoModel.from_pretrained("org/tinybert")
print("LOADED", st.encode(["the guard verifies every file"]).shape[1], type(bert).__name__)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    from helpers.st_model import save_tiny_sentence_transformer
    from helpers.tiny_bert import save_tiny_bert

    root = tmp_path_factory.mktemp("record-sources")
    st = save_tiny_sentence_transformer(root / "st")
    (st / "README.md").write_text("# tiny sentence-transformers model\n")
    return {ST_MODEL: st, BERT_MODEL: save_tiny_bert(root / "bert", seed=1)}  # other weights than the ST model's


@pytest.fixture
def served(hub, sources) -> dict[str, str]:
    """Both models on the test Hub; model id -> commit."""
    return {model: hub.add_directory(model, folder) for model, folder in sources.items()}


def snapshot_download(hub, model: str) -> Path:
    from huggingface_hub import snapshot_download as download

    return Path(download(model, cache_dir=os.environ["HF_HUB_CACHE"], endpoint=hub.endpoint))


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "script.py").write_text(textwrap.dedent(SCRIPT))
    return folder


def record(project: Path, *options: str, script_args: tuple[str, ...] = (), env: dict | None = None):
    return run_cli("lock", "record", *options, "--", sys.executable, str(project / "script.py"), *script_args,
                   cwd=project, env=env)


def test_a_script_run_unchanged_pins_both_models_and_recording_again_changes_nothing(hub, served, project):
    for model in served:
        snapshot_download(hub, model)
    proc = record(project, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED 16 BertModel" in proc.stdout
    lock_path = project / "modelguard.lock"
    lock = load_lock(lock_path)
    assert sorted(lock.entries) == sorted([BERT_MODEL, ST_MODEL])
    for model, commit in served.items():
        assert lock.get(model).revision == commit
    st_files = {f.path for f in lock.get(ST_MODEL).manifest.files}
    # what sentence-transformers reads, not the model card
    assert {"modules.json", "model.safetensors", "config.json", "tokenizer.json", "1_Pooling/config.json"} <= st_files
    assert "README.md" not in st_files
    assert {f.path for f in lock.get(BERT_MODEL).manifest.files} == {"config.json", "model.safetensors"}
    weights = next(f for f in lock.get(BERT_MODEL).manifest.files if f.path == "model.safetensors")
    assert weights.digests["sha256"] == hub.file(BERT_MODEL, served[BERT_MODEL], "model.safetensors").sha256
    assert f"modelguard lock record: 2 model(s) added to or updated in {lock_path}:" in proc.stderr
    assert f"  {BERT_MODEL} @ {served[BERT_MODEL]} (2 files)" in proc.stderr

    before = lock_path.read_bytes()
    stamp = lock_path.stat().st_mtime_ns
    again = record(project, env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert lock_path.read_bytes() == before and lock_path.stat().st_mtime_ns == stamp
    assert f"modelguard lock record: {lock_path} unchanged: every model loaded is locked already" in again.stderr

    # the lock written is the one the guard enforces: the script runs under it, guarded
    guarded = run_cli("run", "--unknown", "refuse", "--", sys.executable, str(project / "script.py"), cwd=project,
                      env={"HF_HUB_OFFLINE": "1"})
    assert guarded.returncode == 0, guarded.stderr[-3000:]
    assert "LOADED 16 BertModel" in guarded.stdout
    # and a locked file damaged in the cache stops the unchanged script before the model is built
    from huggingface_hub import try_to_load_from_cache

    blob = Path(os.path.realpath(try_to_load_from_cache(BERT_MODEL, "model.safetensors")))
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))
    stopped = run_cli("run", "--", sys.executable, str(project / "script.py"), cwd=project,
                      env={"HF_HUB_OFFLINE": "1"})
    assert stopped.returncode == 1 and "LOADED" not in stopped.stdout
    assert f"VerificationError: modelguard refused to load {BERT_MODEL}" in stopped.stderr
    assert f"modelguard.lock at {lock_path}, entry {BERT_MODEL}@{served[BERT_MODEL]}" in stopped.stderr
    assert "FAIL model.safetensors" in stopped.stderr


def test_a_model_the_script_downloads_itself_is_pinned_and_downloaded_once(hub, served, project):
    snapshot_download(hub, ST_MODEL)  # the transformers model is not in the cache: the script fetches it
    proc = record(project, script_args=("3",))
    assert proc.returncode == 3, proc.stderr[-3000:]  # the command's exit code
    assert "LOADED 16 BertModel" in proc.stdout
    assert "the command exited with code 3; the loads before that are recorded" in proc.stderr
    lock = load_lock(project / "modelguard.lock")
    assert lock.get(BERT_MODEL).revision == served[BERT_MODEL]
    assert lock.get(ST_MODEL).revision == served[ST_MODEL]
    bert_files = {f.path for f in lock.get(BERT_MODEL).manifest.files}
    assert {"config.json", "model.safetensors"} <= bert_files
    # each file came over the wire once, fetched by the script; modelguard downloaded nothing
    assert len(hub.requests("GET", f"/{BERT_MODEL}/resolve/{served[BERT_MODEL]}/config.json")) == 1
    assert len(hub.transfers(hub.file(BERT_MODEL, served[BERT_MODEL], "model.safetensors"))) == 1
    before = (project / "modelguard.lock").read_bytes()
    again = record(project, env={"HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert (project / "modelguard.lock").read_bytes() == before
    assert "unchanged: every model loaded is locked already" in again.stderr


def test_a_local_folder_is_named_as_not_locked(tmp_path, project, sources):
    (project / "script.py").write_text(textwrap.dedent(f"""
        from transformers import AutoModel
        AutoModel.from_pretrained({str(sources[BERT_MODEL])!r})
        print("LOADED")
    """))
    proc = record(project, "--unknown", "allow", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"not locked: {sources[BERT_MODEL]} (loaded by transformers BertModel.from_pretrained) is not a " \
           "Hugging Face cache snapshot; lock a local folder with `modelguard lock add ORG/NAME --from " in proc.stderr
    assert "unchanged: no model from the cache was loaded" in proc.stderr
    assert not (project / "modelguard.lock").exists()


def test_usage_errors_are_exit_2(project):
    proc = run_cli("lock", "record", cwd=project)
    assert proc.returncode == 2
    assert "modelguard lock record: no command to run" in proc.stderr
    missing = run_cli("lock", "record", "--", "no-such-program-here", cwd=project)
    assert missing.returncode == 2
    assert "modelguard lock record: cannot run no-such-program-here: no such command on PATH" in missing.stderr
    (project / "modelguard.lock").write_text("modelguard_lock: 1\nmodels: [\n")
    broken = record(project)
    assert broken.returncode == 2, broken.stderr
    assert "LOADED" not in broken.stdout and "Traceback" not in broken.stderr
    assert "modelguard.lock" in broken.stderr


def test_records_are_appended_lines_that_read_back(tmp_path, monkeypatch):
    path = tmp_path / "loads.jsonl"
    monkeypatch.setenv(ENV_RECORD, str(path))
    record_load("org/a", "c" * 40, tmp_path / "snap", ["b.bin", "a.json", "a.json"], how="hf-listing", loader="x")
    record_load(None, None, None, None, how="unknown", loader="y", cache_dir=tmp_path)
    with open(path, "a") as fh:
        fh.write('{"modelguard-record": 1, "model": "org/cut"')  # a write cut short by a crash
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["files"] == ["a.json", "b.bin"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert read_records(path) == [
        LoadRecord("org/a", "c" * 40, str(tmp_path / "snap"), ("a.json", "b.bin"), "hf-listing", "x"),
        LoadRecord(None, None, None, None, "unknown", "y", str(tmp_path)),
    ]
    assert read_records(tmp_path / "absent.jsonl") == []


def test_a_copy_damaged_after_its_load_is_named_not_locked_and_the_others_are(hub, served, project):
    snapshot_download(hub, ST_MODEL)  # saved listing; the transformers model comes without one
    (project / "script.py").write_text(textwrap.dedent(SCRIPT.replace("sys.exit(", """
import os
from huggingface_hub import try_to_load_from_cache
blob = os.path.realpath(try_to_load_from_cache("org/tinybert", "model.safetensors"))
data = bytearray(open(blob, "rb").read())
data[-100] ^= 0xFF
open(blob, "wb").write(bytes(data))  # damaged after the load: the lock must not pin these bytes
sys.exit(""", 1)))
    proc = record(project)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "LOADED 16 BertModel" in proc.stdout
    assert f"not locked: {BERT_MODEL} @ {served[BERT_MODEL]}: " in proc.stderr
    assert "does not match the content address its blob is named by" in proc.stderr
    lock = load_lock(project / "modelguard.lock")
    assert sorted(lock.entries) == [ST_MODEL]


def test_a_load_let_through_by_policy_warn_is_not_recorded(hub, served, project):
    snapshot = snapshot_download(hub, BERT_MODEL)
    snapshot_download(hub, ST_MODEL)
    blob = Path(os.path.realpath(snapshot / "model.safetensors"))
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.write_bytes(bytes(data))
    proc = record(project, "--policy", "warn", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loading despite failed checks: org/tinybert" in proc.stderr
    lock = load_lock(project / "modelguard.lock")
    assert sorted(lock.entries) == [ST_MODEL]


def test_loads_that_cannot_become_entries_are_named(tmp_path):
    from modelguard._commands.lock_record import entries_from_records
    from modelguard.lockfile import Lock

    folder = tmp_path / "plain-folder"
    folder.mkdir()
    records = [
        LoadRecord("org/absent", None, None, None, "unknown", "transformers BertModel.from_pretrained"),
        LoadRecord(None, None, str(folder), ("config.json",), "local-manifest", "torch.load"),
    ]
    entries, notes, failed = entries_from_records(records, Lock())
    assert entries == [] and failed is False
    assert notes == [
        "not locked: org/absent (loaded by transformers BertModel.from_pretrained) has no snapshot in the Hugging "
        "Face cache after the run; lock it with `modelguard lock add org/absent`",
        f"not locked: {folder} (loaded by torch.load) is not a Hugging Face cache snapshot; lock a local folder "
        f"with `modelguard lock add ORG/NAME --from {folder}`",
    ]


def test_a_file_read_directly_from_a_snapshot_is_recorded(hub, served, project):
    snapshot_download(hub, BERT_MODEL)
    (project / "script.py").write_text(textwrap.dedent("""
        from huggingface_hub import snapshot_download
        from safetensors.torch import load_file

        folder = snapshot_download("org/tinybert", local_files_only=True)
        print("TENSORS", len(load_file(folder + "/model.safetensors")))
    """))
    proc = record(project, "--unknown", "allow", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TENSORS" in proc.stdout
    entry = load_lock(project / "modelguard.lock").get(BERT_MODEL)
    assert entry.revision == served[BERT_MODEL]
    assert [f.path for f in entry.manifest.files] == ["model.safetensors"]
