"""`modelguard audit`: sampling settings, missing heads, sentence-transformers configs, integrity."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from helpers.cli import run_cli
from modelguard import auditing
from modelguard.auditing import FAILED, NOTE, VARIES, Finding, audit, register_check
from modelguard.errors import UsageError


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def sampling_lm(tiny_lm_template, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_lm_template, tmp_path / "sampling-lm"))


@pytest.fixture
def greedy_lm(tiny_lm_template, tmp_path) -> Path:
    """The same model, greedy: do_sample false, but a temperature left in the file."""
    directory = Path(shutil.copytree(tiny_lm_template, tmp_path / "greedy-lm"))
    gen = json.loads((directory / "generation_config.json").read_text())
    gen.update(do_sample=False, temperature=0.7)
    gen.pop("top_k")
    (directory / "generation_config.json").write_text(json.dumps(gen))
    return directory


def _cache_snapshot(source: Path, model: str, commit: str = COMMIT) -> Path:
    """Put ``source``'s files into the (per-test) Hugging Face cache as model@commit, refs/main -> commit."""
    repo = Path(os.environ["HF_HUB_CACHE"]) / ("models--" + model.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def _write_user_manifest(directory: Path, model: str, revision: str) -> Path:
    from modelguard.build import build_manifest
    from modelguard.manifest import save_manifest
    from modelguard.registry import user_manifest_dir

    path = user_manifest_dir() / f"{model}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_manifest(build_manifest(directory, model, revision), path)
    return path


def test_cli_flags_do_sample_true(sampling_lm):
    proc = run_cli("audit", str(sampling_lm))
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "generation_config.json:do_sample: do_sample = true" in out
    assert "every call can give a different answer" in out
    assert "temperature = 0.7" in out and "top_k = 20" in out
    assert "GenerationConfig(do_sample=False)" in out
    assert "SamplingParams(temperature=0)" in out
    assert "NOT ok: 3 finding(s) make outputs vary (do_sample, temperature, top_k)" in out
    assert "Traceback" not in proc.stderr


def test_cli_json_lists_sampling_findings_and_remedies(sampling_lm):
    proc = run_cli("audit", str(sampling_lm), "--json")
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert doc["files_read"] == ["generation_config.json"]
    sampling = doc["sections"]["sampling"]
    assert [f["code"] for f in sampling] == ["do_sample", "temperature", "top_k"]
    assert {f["severity"] for f in sampling} == {"varies"}
    assert sampling[1]["value"] == 0.7 and sampling[1]["source"] == "generation_config.json:temperature"
    assert any("do_sample=False" in h for h in doc["how_to_make_deterministic"])
    assert any("SamplingParams(seed=0" in h for h in doc["how_to_make_deterministic"])
    assert doc["integrity"] is None
    assert doc["sections"]["integrity"][0]["code"] == "no_manifest"


def test_greedy_model_is_ok_and_notes_the_unused_temperature(greedy_lm):
    report = audit(greedy_lm)
    assert report.ok, report.findings
    note = report.section("sampling")[0]
    assert (note.code, note.severity) == ("sampling_settings_unused", NOTE)
    assert "temperature=0.7 set but do_sample is not true" in note.message
    assert "vllm" in note.message
    assert report.format().endswith("ok: nothing in the configuration makes outputs vary (no manifest applied)")
    proc = run_cli("audit", str(greedy_lm))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: nothing in the configuration makes outputs vary" in proc.stdout


def test_generation_keys_in_config_json_count_without_generation_config(sampling_lm):
    (sampling_lm / "generation_config.json").unlink()
    config = json.loads((sampling_lm / "config.json").read_text())
    config.update(do_sample=True, top_p=0.9)
    (sampling_lm / "config.json").write_text(json.dumps(config))
    report = audit(sampling_lm)
    assert not report.ok
    by_code = {f.code: f for f in report.section("sampling")}
    assert by_code["do_sample"].source == "config.json:do_sample"
    assert by_code["top_p"].value == 0.9 and by_code["top_p"].severity == VARIES


def test_temperature_zero_with_sampling_is_a_failure(sampling_lm):
    gen_file = sampling_lm / "generation_config.json"
    gen = json.loads(gen_file.read_text())
    gen["temperature"] = 0.0
    gen_file.write_text(json.dumps(gen))
    report = audit(sampling_lm)
    failed = {f.code: f for f in report.failed}
    assert "temperature_not_positive" in failed
    assert "strictly positive" in failed["temperature_not_positive"].message
    assert "do_sample=False" in failed["temperature_not_positive"].remedy


def test_cached_snapshot_names_model_and_revision_and_is_verified(greedy_lm):
    model = "test-org/tiny-lm"
    snapshot = _cache_snapshot(greedy_lm, model)
    manifest_path = _write_user_manifest(snapshot, model, COMMIT)

    for target in (model, str(snapshot)):
        proc = run_cli("audit", target, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        doc = json.loads(proc.stdout)
        assert (doc["model"], doc["revision"]) == (model, COMMIT)
        assert doc["manifest"] == str(manifest_path)
        assert doc["integrity"]["ok"] is True
        verified = doc["sections"]["integrity"][0]
        assert verified["code"] == "verified" and "match the manifest" in verified["message"]

    # Right size, wrong bytes: the audit fails on integrity even though sampling is off.
    weights = snapshot / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10:] = bytes(b ^ 0xFF for b in data[-10:])
    weights.write_bytes(bytes(data))
    proc = run_cli("audit", model)
    assert proc.returncode == 1
    assert "FAIL  model.safetensors [model]: " in proc.stdout
    assert "NOT ok: 1 failure(s) (integrity)" in proc.stdout


def test_audit_no_verify_skips_integrity(greedy_lm):
    snapshot = _cache_snapshot(greedy_lm, "test-org/tiny-lm")
    _write_user_manifest(snapshot, "test-org/tiny-lm", COMMIT)
    (snapshot / "model.safetensors").write_bytes(b"broken")
    assert not audit(snapshot).ok
    report = audit(snapshot, verify_files=False)
    assert report.ok and report.integrity is None
    assert report.section("integrity")[0].code == "not_checked"


def test_bge_m3_missing_colbert_head_makes_outputs_vary(tiny_bge_m3):
    assert audit(tiny_bge_m3, verify_files=False).section("load") == ()
    (tiny_bge_m3 / "colbert_linear.pt").unlink()
    report = audit(tiny_bge_m3, verify_files=False)
    (finding,) = report.section("load")
    assert (finding.code, finding.severity) == ("bge_m3_head_missing", VARIES)
    assert "colbert_linear.pt missing" in finding.message
    assert "BOTH the sparse and the colbert head with random weights" in finding.message
    proc = run_cli("audit", str(tiny_bge_m3))
    assert proc.returncode == 1
    assert "colbert_linear.pt missing" in proc.stdout
    assert "to get deterministic output" not in proc.stdout  # sampling advice does not fix a missing file


def test_real_sentence_transformers_model_is_ok(minilm_dir):
    report = audit(minilm_dir)
    assert report.ok, report.findings
    (note,) = report.section("sentence-transformers")
    assert "no sampling" in note.message
    assert "pooling mean" in note.message and "normalized" in note.message
    assert "max_seq_length 256" in note.message
    assert "1_Pooling/config.json" in report.files_read


def test_missing_sentence_transformers_module_folder_fails(minilm_dir, tmp_path):
    directory = tmp_path / "st"
    shutil.copytree(minilm_dir, directory, ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    report = audit(directory)
    (failure,) = report.failed
    assert failure.code == "module_missing"
    assert "folder 1_Pooling/ is missing" in failure.message


def test_unparsable_config_is_reported_not_raised(sampling_lm):
    (sampling_lm / "generation_config.json").write_text("{not json")
    proc = run_cli("audit", str(sampling_lm))
    assert proc.returncode == 1
    assert "generation_config.json cannot be parsed" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("make_target, text", [
    (lambda tmp: str(tmp / "nowhere"), "does not exist"),
    (lambda tmp: "test-org/not-cached", "is not in the Hugging Face cache"),
])
def test_bad_targets_exit_2_with_a_clear_message(tmp_path, make_target, text):
    proc = run_cli("audit", make_target(tmp_path))
    assert proc.returncode == 2
    assert text in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_file_is_not_a_model_directory(sampling_lm):
    with pytest.raises(UsageError) as info:
        audit(sampling_lm / "config.json")
    assert "is not a directory" in str(info.value)
    assert "the folder that holds config.json" in str(info.value)


def test_registered_checks_add_sections(greedy_lm):
    @register_check("security")
    def flag_everything(ctx):
        yield Finding("security", "unsafe_pickle", FAILED, f"checked {ctx.directory.name}")

    try:
        report = audit(greedy_lm)
        assert not report.ok
        assert report.sections[-1] == "security"
        assert report.to_dict()["sections"]["security"][0]["message"] == "checked greedy-lm"
    finally:
        auditing.CHECKS.remove(("security", flag_everything))
    assert audit(greedy_lm).ok
