"""Build: a manifest from a model directory, components by rules, stable YAML, and the
build -> verify round trip."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from helpers.cli import run_cli
from modelguard.build import BGE_M3_RULES, GENERIC_RULES, build_manifest, list_model_files
from modelguard.errors import UsageError
from modelguard.manifest import dump_manifest, load_manifest
from modelguard.verifying import format_report, verify

BGE_M3_LAYOUT = {
    "pytorch_model.bin": "dense",
    "config.json": "dense",
    "sparse_linear.pt": "sparse",
    "colbert_linear.pt": "colbert",
    "tokenizer.json": "tokenizer",
    "tokenizer_config.json": "tokenizer",
    "special_tokens_map.json": "tokenizer",
    "sentencepiece.bpe.model": "tokenizer",
    "1_Pooling/config.json": "sentence_transformers",
    "modules.json": "sentence_transformers",
    "onnx/model.onnx": "onnx",
    "onnx/model.onnx_data": "onnx",
    "onnx/tokenizer.json": "onnx",
    "README.md": "docs",
    "imgs/bm25.jpg": "docs",
    "long.jsonl": "other",
}

GENERIC_LAYOUT = {
    "model.safetensors": "model",
    "pytorch_model.bin": "model",
    "config.json": "model",
    "tokenizer.json": "tokenizer",
    "vocab.txt": "tokenizer",
    "modules.json": "sentence_transformers",
    "1_Pooling/config.json": "sentence_transformers",
    "2_Normalize/.keep": "sentence_transformers",
    "tf_model.h5": "other_frameworks",
    "onnx/model.onnx": "onnx",
    "README.md": "docs",
    "train_script.txt": "other",
}


def make_layout(root: Path, layout) -> Path:
    for i, rel in enumerate(sorted(layout)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"{rel}\n".encode() * (i + 1))
    return root


def test_build_records_size_md5_sha256_of_every_file(tmp_path):
    root = make_layout(tmp_path / "m", GENERIC_LAYOUT)
    manifest = build_manifest(root, "org/generic", "a" * 40)
    assert manifest.model == "org/generic" and manifest.revision == "a" * 40
    assert [e.path for e in manifest.files] == sorted(GENERIC_LAYOUT)
    for entry in manifest.files:
        data = (root / entry.path).read_bytes()
        assert entry.size == len(data)
        assert dict(entry.digests) == {"md5": hashlib.md5(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}


def test_build_then_verify_passes(tmp_path):
    root = make_layout(tmp_path / "m", BGE_M3_LAYOUT)
    manifest = build_manifest(root, "org/thing")
    report = verify(manifest, root, cache=False, all_digests=True)
    assert report.ok, format_report(report)
    assert report.extra_files == ()


def test_bge_m3_rules_assign_components(tmp_path):
    root = make_layout(tmp_path / "bge-m3", BGE_M3_LAYOUT)
    manifest = build_manifest(root, "BAAI/bge-m3")
    assert {e.path: e.component for e in manifest.files} == BGE_M3_LAYOUT
    required = {name: comp.required for name, comp in manifest.components.items()}
    assert required == {"dense": True, "sparse": True, "colbert": True, "tokenizer": True,
                        "sentence_transformers": True, "onnx": False, "docs": False, "other": False}


def test_bge_m3_rules_are_chosen_by_head_files_for_any_model_id(tmp_path):
    root = make_layout(tmp_path / "m", {"pytorch_model.bin": "", "colbert_linear.pt": "", "config.json": ""})
    manifest = build_manifest(root, "someone/fine-tuned-m3")
    assert {e.path: e.component for e in manifest.files} == {
        "colbert_linear.pt": "colbert", "config.json": "dense", "pytorch_model.bin": "dense"}
    # only the components that hold files are declared
    assert set(manifest.components) == {"colbert", "dense"}


def test_generic_rules_for_other_models(tmp_path):
    root = make_layout(tmp_path / "m", GENERIC_LAYOUT)
    manifest = build_manifest(root, "sentence-transformers/all-MiniLM-L6-v2")
    assert {e.path: e.component for e in manifest.files} == GENERIC_LAYOUT
    assert manifest.components["onnx"].required is False
    assert manifest.components["model"].required is True
    assert manifest.components["other"].required is False


def test_rule_set_can_be_forced(tmp_path):
    root = make_layout(tmp_path / "m", {"sparse_linear.pt": "", "config.json": ""})
    generic = build_manifest(root, "BAAI/bge-m3", rules="generic")
    assert {e.path: e.component for e in generic.files} == {"config.json": "model", "sparse_linear.pt": "model"}
    assert build_manifest(root, "org/x", rules=BGE_M3_RULES).file("sparse_linear.pt").component == "sparse"
    assert GENERIC_RULES.component_for("onnx/model.onnx") == "onnx"
    with pytest.raises(UsageError) as info:
        build_manifest(root, "org/x", rules="fancy")
    assert info.value.message == "unknown rule set 'fancy'"
    assert info.value.expected == "one of: bge-m3, generic"


def test_tool_folders_and_partial_downloads_are_skipped(tmp_path):
    root = make_layout(tmp_path / "m", {"config.json": "", "model.safetensors": ""})
    for rel in (".git/HEAD", ".git/objects/ab/cdef", ".cache/huggingface/download/model.safetensors.metadata",
                ".cache/huggingface/.gitignore", "__pycache__/x.pyc", "model.safetensors.incomplete", "x.lock"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("tool state")
    assert list_model_files(root) == ["config.json", "model.safetensors"]
    manifest = build_manifest(root, "org/x")
    assert [e.path for e in manifest.files] == ["config.json", "model.safetensors"]
    assert verify(manifest, root, cache=False).extra_files == ()


def test_exclude_patterns(tmp_path):
    root = make_layout(tmp_path / "m", GENERIC_LAYOUT)
    manifest = build_manifest(root, "org/x", exclude=["onnx/*", "*.h5", "README*"])
    assert "onnx/model.onnx" not in {e.path for e in manifest.files}
    assert "tf_model.h5" not in {e.path for e in manifest.files}
    assert "README.md" not in {e.path for e in manifest.files}
    assert "onnx" not in manifest.components


def test_build_refuses_a_link_out_of_the_directory(tmp_path):
    root = make_layout(tmp_path / "m", {"config.json": ""})
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not part of the model")
    (root / "weights.bin").symlink_to(secret)
    with pytest.raises(UsageError) as info:
        build_manifest(root, "org/x")
    assert f"links outside the model directory (to {secret})" in info.value.message
    assert info.value.remedy.endswith("or leave it out with --exclude weights.bin")
    # a link that stays inside the folder is fine, and verifies
    (root / "weights.bin").unlink()
    (root / "sub").mkdir()
    (root / "sub" / "real.bin").write_bytes(b"weights")
    (root / "weights.bin").symlink_to("sub/real.bin")
    assert verify(build_manifest(root, "org/x"), root, cache=False).ok


def test_build_of_a_missing_or_empty_directory_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as info:
        build_manifest(tmp_path / "absent", "org/x")
    assert info.value.message == f"model directory {tmp_path / 'absent'} does not exist"
    (tmp_path / "empty" / ".git").mkdir(parents=True)
    with pytest.raises(UsageError) as info:
        build_manifest(tmp_path / "empty", "org/x")
    assert info.value.message == f"no files to put in a manifest under {tmp_path / 'empty'}"


def test_output_is_stable_sorted_and_diff_friendly(tmp_path):
    root = make_layout(tmp_path / "m", BGE_M3_LAYOUT)
    first = dump_manifest(build_manifest(root, "BAAI/bge-m3", "b" * 40))
    second = dump_manifest(build_manifest(root, "BAAI/bge-m3", "b" * 40))
    assert first == second
    data = yaml.safe_load(first)
    assert list(data) == ["modelguard", "model", "revision", "components", "files"]
    assert list(data["components"]) == sorted(data["components"])
    assert [f["path"] for f in data["files"]] == sorted(BGE_M3_LAYOUT)
    assert all(list(f) == ["path", "size", "component", "md5", "sha256"] for f in data["files"])
    # one key per line: a changed digest is a one-line diff
    assert all(len(line) < 120 for line in first.splitlines())


def test_cli_build_twice_gives_identical_bytes_and_verifies(tmp_path):
    root = make_layout(tmp_path / "m", GENERIC_LAYOUT)
    out1, out2 = tmp_path / "one.yaml", tmp_path / "two.yaml"
    p1 = run_cli("build", str(root), "--model", "org/x", "--revision", "c" * 40, "-o", str(out1))
    p2 = run_cli("build", str(root), "--model", "org/x", "--revision", "c" * 40, "-o", str(out2))
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    assert out1.read_bytes() == out2.read_bytes()
    assert p1.stderr.startswith(f"wrote {out1}: {len(GENERIC_LAYOUT)} file(s), components: ")
    stdout = run_cli("build", str(root), "--model", "org/x", "--revision", "c" * 40)
    assert stdout.returncode == 0 and stdout.stdout == out1.read_text()
    check = run_cli("verify", str(out1), str(root))
    assert check.returncode == 0, check.stdout + check.stderr
    assert load_manifest(out1).revision == "c" * 40


def test_cli_build_refuses_to_overwrite(tmp_path):
    root = make_layout(tmp_path / "m", {"config.json": ""})
    out = tmp_path / "mine.yaml"
    out.write_text("my own notes\n")
    proc = run_cli("build", str(root), "--model", "org/x", "-o", str(out))
    assert proc.returncode == 2
    assert f"modelguard: error: {out} exists; not overwritten" in proc.stderr
    assert "pass --force to replace it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert out.read_text() == "my own notes\n"
    forced = run_cli("build", str(root), "--model", "org/x", "-o", str(out), "--force")
    assert forced.returncode == 0 and load_manifest(out).model == "org/x"


def test_real_tiny_bge_m3_round_trip(tiny_bge_m3):
    manifest = build_manifest(tiny_bge_m3, "BAAI/bge-m3")
    components = {e.path: e.component for e in manifest.files}
    assert components["sparse_linear.pt"] == "sparse"
    assert components["colbert_linear.pt"] == "colbert"
    assert components["pytorch_model.bin"] == "dense"
    assert components["tokenizer.json"] == "tokenizer"
    assert verify(manifest, tiny_bge_m3, cache=False).ok
    # the sparse head replaced by another head's bytes is caught and named
    os.replace(tiny_bge_m3 / "colbert_linear.pt", tiny_bge_m3 / "sparse_linear.pt")
    report = verify(manifest, tiny_bge_m3, cache=False)
    assert report.failed_components == ("colbert", "sparse")
    assert report.result("colbert_linear.pt").diagnosis == "missing"
    assert report.result("sparse_linear.pt").diagnosis in ("oversized", "truncated", "digest_mismatch")


def test_cli_build_warns_when_the_revision_is_not_a_commit(tmp_path):
    root = make_layout(tmp_path / "m", {"config.json": ""})
    proc = run_cli("build", str(root), "--model", "org/x", "--revision", "main")
    assert proc.returncode == 0
    assert "modelguard: warning: revision 'main' is not a commit hash" in proc.stderr
    assert "revision: main" in proc.stdout
    pinned = run_cli("build", str(root), "--model", "org/x", "--revision", "d" * 40)
    assert pinned.returncode == 0 and "warning" not in pinned.stderr


# --------------------------------------------------------------------------- scale


def test_twelve_thousand_file_model_builds_and_verifies(tmp_path):
    """Past the old fixed limit of 100,000 YAML nodes (about 9,100 files): what build writes,
    verify loads."""
    import subprocess

    from helpers.cli import run_cli

    model = tmp_path / "many"
    for group in range(12):
        folder = model / f"shard-{group:02d}"
        folder.mkdir(parents=True)
        for i in range(1000):
            (folder / f"part-{i:04d}.txt").write_bytes(b"%d/%d\n" % (group, i))
    out = tmp_path / "many.yaml"
    built = run_cli("build", str(model), "--model", "org/many", "-o", str(out))
    assert built.returncode == 0, built.stderr
    assert "12000 file(s)" in built.stderr
    checked = run_cli("verify", str(out), str(model), "--quiet", "--no-cache")
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr
    assert "verified: 12000 file(s) of org/many match the manifest" in checked.stdout
    (model / "shard-07" / "part-0500.txt").write_bytes(b"changed\n")
    failed = run_cli("verify", str(out), str(model), "--quiet", "--no-cache")
    assert failed.returncode == 1
    assert "shard-07/part-0500.txt" in failed.stdout


def test_a_hundred_thousand_file_manifest_in_builds_shape_loads(tmp_path):
    """A 100,000-file manifest, written in exactly the form build writes (its entry repeated
    with other paths), loads and its files are all there (the fixed node limit refused it)."""
    import time

    from modelguard.manifest import dump_manifest, load_manifest

    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "shard-000").mkdir()
    (tmp_path / "one" / "shard-000" / "p0000.txt").write_bytes(b"0/0\n")
    text = dump_manifest(build_manifest(tmp_path / "one", "org/big"))
    head, entry = text.split("files:\n", 1)
    assert entry.startswith("- path: shard-000/p0000.txt\n")
    entries = "".join(entry.replace("shard-000/p0000.txt", f"shard-{i // 1000:03d}/p{i % 1000:04d}.txt")
                      for i in range(100_000))
    path = tmp_path / "big.yaml"
    path.write_text(head + "files:\n" + entries)
    manifest = load_manifest(path)
    assert len(manifest.files) == 100_000
    assert manifest.files[-1].path == "shard-099/p0999.txt"


@pytest.mark.timeout(1800)
def test_a_hundred_thousand_file_model_builds_and_verifies(tmp_path):
    """The whole path at 100,000 files: build writes the manifest, verify loads it and checks
    every file (several minutes on two cores; the time is the benchmark's business)."""
    from helpers.cli import run_cli

    model = tmp_path / "huge"
    for group in range(100):
        folder = model / f"shard-{group:03d}"
        folder.mkdir(parents=True)
        for i in range(1000):
            (folder / f"p{i:04d}.txt").write_bytes(b"%d/%d\n" % (group, i))
    out = tmp_path / "huge.yaml"
    built = run_cli("build", str(model), "--model", "org/huge", "-o", str(out), timeout=1800)
    assert built.returncode == 0, built.stderr[-2000:]
    assert "100000 file(s)" in built.stderr
    checked = run_cli("verify", str(out), str(model), "--quiet", "--no-cache", timeout=1800)
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "verified: 100000 file(s) of org/huge match the manifest" in checked.stdout
