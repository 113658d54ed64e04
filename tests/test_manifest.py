"""Manifest schema 1: strict validation with messages that name the manifest, the entry,
the field and what was expected; path-safety refusals; safe YAML; stable dump/load."""

from __future__ import annotations

import copy
import hashlib

import pytest
import yaml

from helpers.cli import run_cli
from modelguard.errors import ManifestError, ModelGuardError, UnsafePathError
from modelguard.manifest import (
    Component,
    FileEntry,
    Manifest,
    TensorSpec,
    dump_manifest,
    load_manifest,
    parse_manifest_text,
    save_manifest,
    validate_manifest,
)

SHA = hashlib.sha256(b"abc").hexdigest()
MD5 = hashlib.md5(b"abc").hexdigest()


def good() -> dict:
    return {
        "modelguard": 1,
        "model": "org/tiny",
        "revision": "0123456789abcdef0123456789abcdef01234567",
        "components": {
            "model": {"required": True, "description": "weights"},
            "onnx": {"required": False},
        },
        "files": [
            {"path": "model.safetensors", "size": 3, "sha256": SHA, "component": "model"},
            {"path": "onnx/model.onnx", "size": 3, "md5": MD5, "component": "onnx"},
        ],
    }


def load(tmp_path, data, name="m.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return load_manifest(path), path


def refused(tmp_path, data, error=ManifestError):
    with pytest.raises(error) as info:
        load(tmp_path, data)
    exc = info.value
    # every refusal names the manifest file it comes from
    assert str(tmp_path / "m.yaml") in exc.message
    assert exc.path == str(tmp_path / "m.yaml")
    assert exc.exit_code == 2
    return exc


def test_good_manifest_loads(tmp_path):
    manifest, path = load(tmp_path, good())
    assert manifest.model == "org/tiny"
    assert manifest.source == str(path)
    assert manifest.required_components == ("model",)
    assert [f.path for f in manifest.files] == ["model.safetensors", "onnx/model.onnx"]
    assert manifest.file("model.safetensors").digests == {"sha256": SHA}
    assert manifest.file("onnx/model.onnx").strongest_digest == ("md5", MD5)
    assert manifest.files_of("onnx")[0].path == "onnx/model.onnx"


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "where, mutate, key, hint",
    [
        ("top level", lambda d: d.__setitem__("modle", "x"), "modle", "model"),
        ("top level", lambda d: d.__setitem__("revison", "x"), "revison", "revision"),
        ("components.model", lambda d: d["components"]["model"].__setitem__("requred", True), "requred", "required"),
        ("files[0] (model.safetensors)", lambda d: d["files"][0].__setitem__("sha265", SHA), "sha265", "sha256"),
        ("files[0] (model.safetensors)", lambda d: d["files"][0].__setitem__("sise", 3), "sise", "size"),
    ],
)
def test_unknown_key_is_refused_with_a_typo_hint(tmp_path, where, mutate, key, hint):
    data = good()
    mutate(data)
    exc = refused(tmp_path, data)
    assert f"{where}: unknown key '{key}'" in exc.message
    assert exc.remedy == f"did you mean '{hint}'?"
    assert hint in exc.expected


def test_unknown_key_without_close_match_says_why_it_is_refused(tmp_path):
    data = good()
    data["files"][1]["colour"] = "blue"
    exc = refused(tmp_path, data)
    assert "files[1] (onnx/model.onnx): unknown key 'colour'" in exc.message
    assert "typo cannot weaken a check" in exc.remedy


# --------------------------------------------------------------------------- wrong types and values


@pytest.mark.parametrize(
    "mutate, field, problem, expected",
    [
        (lambda d: d["files"][0].__setitem__("size", "3"), "files[0] (model.safetensors).size", "not an integer", "non-negative integer"),
        (lambda d: d["files"][0].__setitem__("size", 3.0), "files[0] (model.safetensors).size", "not an integer", "non-negative integer"),
        (lambda d: d["files"][0].__setitem__("size", True), "files[0] (model.safetensors).size", "not an integer", "non-negative integer"),
        (lambda d: d["files"][0].__setitem__("size", -1), "files[0] (model.safetensors).size", "negative size", "non-negative integer"),
        (lambda d: d["files"][0].pop("size"), "files[0] (model.safetensors)", "missing key 'size'", "size in bytes"),
        (lambda d: d["files"][0].pop("path"), "files[0]", "missing key 'path'", "relative path"),
        (lambda d: d["files"][0].pop("component"), "files[0] (model.safetensors).component", "missing or not a string", "one of: model, onnx"),
        (lambda d: d["components"]["model"].__setitem__("required", "yes please"), "components.model.required", "not a boolean", "true or false"),
        (lambda d: d["components"]["model"].__setitem__("description", 5), "components.model.description", "not a string", "a string"),
        (lambda d: d.__setitem__("model", 5), "model", "missing or not a string", "BAAI/bge-m3"),
        (lambda d: d.pop("model"), "model", "missing or not a string", "BAAI/bge-m3"),
        (lambda d: d.__setitem__("revision", 1234567), "revision", "not a revision string", "40 hex digits"),
        (lambda d: d.__setitem__("description", ["x"]), "description", "not a string", "a string"),
        (lambda d: d.__setitem__("components", {}), "components", "not a non-empty mapping", "component name"),
        (lambda d: d.__setitem__("components", ["model"]), "components", "not a non-empty mapping", "component name"),
        (lambda d: d.__setitem__("files", []), "files", "missing or not a non-empty list", "a list of"),
        (lambda d: d.__setitem__("files", {"a": 1}), "files", "missing or not a non-empty list", "a list of"),
        (lambda d: d["files"].__setitem__(0, "model.safetensors"), "files[0]", "not a mapping", "{path, size"),
        (lambda d: d["files"][0].__setitem__("tensors", {"w": {"shape": [1, -2]}}),
         "files[0] (model.safetensors).tensors.w.shape", "not a list of non-negative integers", "[1, 1024]"),
        (lambda d: d["files"][0].__setitem__("tensors", {"w": {"dtype": "float17"}}),
         "files[0] (model.safetensors).tensors.w.dtype", "unknown dtype", "float16"),
        (lambda d: d["files"][0].__setitem__("tensors", [1]),
         "files[0] (model.safetensors).tensors", "not a mapping", "tensor name"),
    ],
)
def test_wrong_type_or_value_names_entry_field_and_expectation(tmp_path, mutate, field, problem, expected):
    data = good()
    mutate(data)
    exc = refused(tmp_path, data)
    assert f": {field}: {problem}" in exc.message
    assert expected in exc.expected
    # the message shows the offending value (when there is one) and never a Python traceback
    assert "Traceback" not in str(exc)


@pytest.mark.parametrize(
    "algorithm, value",
    [
        ("sha256", SHA[:-1]),
        ("sha256", SHA + "0"),
        ("sha256", "g" * 64),
        ("md5", MD5[:30]),
        ("git_sha1", "z" * 40),
        ("git_sha1", 12345),
    ],
)
def test_malformed_hex_digest_is_refused(tmp_path, algorithm, value):
    data = good()
    data["files"][0][algorithm] = value
    exc = refused(tmp_path, data)
    length = {"sha256": 64, "md5": 32, "git_sha1": 40}[algorithm]
    assert f"files[0] (model.safetensors).{algorithm}: malformed {algorithm} digest" in exc.message
    assert exc.expected == f"{length} hexadecimal digits"
    assert exc.actual == repr(value)


def test_uppercase_hex_digest_is_accepted_and_normalized(tmp_path):
    data = good()
    data["files"][0]["sha256"] = SHA.upper()
    manifest, _ = load(tmp_path, data)
    assert manifest.files[0].digests["sha256"] == SHA


def test_file_without_any_digest_is_refused(tmp_path):
    data = good()
    del data["files"][0]["sha256"]
    exc = refused(tmp_path, data)
    assert "files[0] (model.safetensors): no digest" in exc.message
    assert exc.expected == "at least one of sha256, md5, git_sha1"
    assert "modelguard build" in exc.remedy


def test_undeclared_component_is_refused(tmp_path):
    data = good()
    data["files"][0]["component"] = "modle"
    exc = refused(tmp_path, data)
    assert "files[0] (model.safetensors).component: undeclared component 'modle'" in exc.message
    assert exc.expected == "one of: model, onnx"
    assert "declare 'modle' under components:" in exc.remedy


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, None])
def test_schema_version_other_than_1_is_refused(tmp_path, version):
    data = good()
    if version is None:
        del data["modelguard"]
        exc = refused(tmp_path, data)
        assert "top level: missing key 'modelguard'" in exc.message
        assert exc.expected == "modelguard: 1"
    else:
        data["modelguard"] = version
        exc = refused(tmp_path, data)
        assert "modelguard: unsupported schema version" in exc.message
        assert exc.expected == "1"
        assert exc.actual == repr(version)
        assert "upgrade modelguard" in exc.remedy


@pytest.mark.parametrize("text", ["- just\n- a list\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    exc = refused(tmp_path, text)
    assert "top level: not a mapping" in exc.message


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_manifest_says_so(tmp_path, text):
    exc = refused(tmp_path, text)
    assert exc.message.endswith("top level: not a mapping: the manifest is empty")
    assert "modelguard build" in exc.remedy


# --------------------------------------------------------------------------- path safety


@pytest.mark.parametrize(
    "path, problem",
    [
        ("/etc/passwd", "absolute paths are not allowed"),
        ("C:/weights/model.bin", "absolute paths are not allowed"),
        ("../outside.bin", "'..' is not allowed"),
        ("onnx/../../outside.bin", "'..' is not allowed"),
        ("onnx\\model.onnx", "contains a backslash"),
        ("model\x00.bin", "contains a NUL byte"),
        ("./model.bin", "empty or '.' path segments are not allowed"),
        ("onnx//model.onnx", "empty or '.' path segments are not allowed"),
        ("model\n.bin", "contains control characters"),
        ("", "not a non-empty string"),
    ],
)
def test_unsafe_path_is_refused(tmp_path, path, problem):
    data = good()
    data["files"][0]["path"] = path
    exc = refused(tmp_path, data, UnsafePathError)
    assert "unsafe path" in exc.message and problem in exc.message
    assert exc.actual == repr(path)
    assert "relative POSIX path inside the model directory" in exc.expected
    assert "never reads outside the model directory" in exc.remedy
    # a control character in the path is never written raw into the message
    assert "\x00" not in exc.message and "\n" not in exc.message.split(": unsafe path")[0]


def test_a_path_with_a_lone_surrogate_is_refused_with_no_traceback(tmp_path):
    # YAML's "\ud800" escape gives a string no file system call can take.
    sha = hashlib.sha256(b"a").hexdigest()
    path = tmp_path / "m.yaml"
    path.write_text("modelguard: 1\nmodel: a/b\ncomponents:\n  w: {required: true}\nfiles:\n"
                    f'- path: "\\ud800x.bin"\n  size: 1\n  component: w\n  sha256: {sha}\n')
    (tmp_path / "d").mkdir()
    result = run_cli("verify", str(path), str(tmp_path / "d"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "unsafe path '\\ud800x.bin': contains a lone surrogate, which no file name can hold" in result.stderr


def test_duplicate_path_is_refused(tmp_path):
    data = good()
    data["files"].append(dict(data["files"][0]))
    exc = refused(tmp_path, data, UnsafePathError)
    assert "files[2] (model.safetensors).path: duplicate path 'model.safetensors' (also files[0])" in exc.message
    assert exc.remedy == "remove the duplicate entry"


def test_paths_differing_only_by_case_are_refused(tmp_path):
    data = good()
    data["files"].append(dict(data["files"][0], path="Model.safetensors"))
    exc = refused(tmp_path, data, UnsafePathError)
    assert "'Model.safetensors' differs from 'model.safetensors' only by case" in exc.message


def test_unsafe_path_error_is_a_manifest_error():
    assert issubclass(UnsafePathError, ManifestError)
    assert issubclass(ManifestError, ModelGuardError)


# --------------------------------------------------------------------------- safe YAML


def test_python_object_tag_is_refused_and_nothing_is_built(tmp_path):
    marker = tmp_path / "pwned"
    text = (
        "modelguard: 1\nmodel: org/tiny\ncomponents: {model: {}}\nfiles:\n"
        f"- path: !!python/object/apply:os.system ['touch {marker}']\n"
        f"  size: 3\n  sha256: {SHA}\n  component: model\n"
    )
    exc = refused(tmp_path, text)
    assert "YAML tag '!!python/object/apply:os.system' is not allowed" in exc.message
    assert "line 5, column 9" in exc.message
    assert "plain data" in exc.message
    assert not marker.exists()


def test_python_name_tag_at_top_level_is_refused(tmp_path):
    exc = refused(tmp_path, "!!python/name:os.system\n")
    assert "YAML tag '!!python/name:os.system' is not allowed" in exc.message


def test_duplicate_yaml_key_is_refused(tmp_path):
    text = yaml.safe_dump(good(), sort_keys=False).replace("  size: 3\n", "  size: 3\n  size: 4\n", 1)
    exc = refused(tmp_path, text)
    assert "duplicate key 'size'" in exc.message
    assert "line " in exc.message


def test_yaml_anchor_and_alias_are_refused(tmp_path):
    text = yaml.safe_dump(good(), sort_keys=False).replace("size: 3", "size: &n 3", 1)
    exc = refused(tmp_path, text)
    assert "YAML anchors (&name) are not allowed in a manifest" in exc.message


def test_invalid_yaml_names_line_and_column(tmp_path):
    exc = refused(tmp_path, "modelguard: 1\nmodel: [org/tiny\ncomponents: {}\n")
    assert "is not valid YAML at line " in exc.message
    assert "column" in exc.message
    assert exc.remedy == "fix the YAML at the line and column shown"


def test_non_utf8_manifest_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_bytes(b"modelguard: 1\nmodel: \xff\xfe\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert "is not UTF-8 text" in info.value.message
    assert info.value.remedy == "save the manifest as UTF-8"


def test_missing_manifest_file_and_directory_are_named(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "nope.yaml")
    assert f"manifest {tmp_path / 'nope.yaml'} does not exist" in info.value.message
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    assert "is not a regular file" in info.value.message


# --------------------------------------------------------------------------- dump / load


def test_dump_is_sorted_and_round_trips(tmp_path):
    data = good()
    data["files"].reverse()
    data["files"][0]["tensors"] = {"weight": {"dtype": "torch.float16", "shape": [1, 4]}}
    data["components"] = dict(reversed(list(data["components"].items())))
    manifest, _ = load(tmp_path, data)
    text = dump_manifest(manifest)
    assert text.startswith("# modelguard manifest (schema 1)")
    parsed = yaml.safe_load(text)
    assert list(parsed) == ["modelguard", "model", "revision", "components", "files"]
    assert list(parsed["components"]) == ["model", "onnx"]
    assert [f["path"] for f in parsed["files"]] == ["model.safetensors", "onnx/model.onnx"]
    assert parsed["files"][1]["tensors"] == {"weight": {"shape": [1, 4], "dtype": "float16"}}
    assert "shape: [1, 4]" in text  # shapes stay on one line
    again = parse_manifest_text(text, source="again")
    assert dump_manifest(again) == text  # stable: dump(load(dump(x))) == dump(x)
    assert again.files == tuple(sorted(manifest.files, key=lambda e: e.path))


def test_save_manifest_writes_atomically_and_loads_back(tmp_path):
    manifest = Manifest(
        model="org/tiny", revision=None,
        components={"model": Component("model", True, "weights")},
        files=(FileEntry("b.bin", 1, "model", {"sha256": SHA}),
               FileEntry("a.bin", 2, "model", {"md5": MD5, "git_sha1": "0" * 40},
                         tensors={"w": TensorSpec((2,), "int8")})),
    )
    out = save_manifest(manifest, tmp_path / "sub" / "tiny.yaml")
    assert [p.name for p in out.parent.iterdir()] == ["tiny.yaml"]  # no temp file left behind
    loaded = load_manifest(out)
    assert [f.path for f in loaded.files] == ["a.bin", "b.bin"]
    assert loaded.file("a.bin").digests == {"md5": MD5, "git_sha1": "0" * 40}
    assert loaded.file("a.bin").tensors == {"w": TensorSpec((2,), "int8")}
    assert out.read_text() == dump_manifest(manifest)


def test_validate_manifest_accepts_parsed_data_and_does_not_mutate_it():
    data = good()
    before = copy.deepcopy(data)
    manifest = validate_manifest(data, source="inline")
    assert manifest.source == "inline"
    assert data == before


# --------------------------------------------------------------------------- the smallest manifest


def smallest() -> dict:
    return {"modelguard": 1, "model": "acme/mine",
            "files": [{"path": "model.safetensors", "size": 3, "sha256": SHA},
                      {"path": "config.json", "size": 3, "md5": MD5}]}


def test_smallest_hand_written_manifest_has_one_implicit_required_component(tmp_path):
    manifest, _ = load(tmp_path, smallest())
    assert manifest.components == {"model": Component("model", True)}
    assert manifest.required_components == ("model",)
    assert [(f.path, f.component) for f in manifest.files] == [("model.safetensors", "model"), ("config.json", "model")]
    again = parse_manifest_text(dump_manifest(manifest))  # written back out, it is an ordinary manifest
    assert again.components == manifest.components
    assert sorted(again.files, key=lambda f: f.path) == sorted(manifest.files, key=lambda f: f.path)  # dump sorts


def test_smallest_manifest_verifies_a_directory_from_the_cli(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.safetensors").write_bytes(b"abc")
    (tmp_path / "d" / "config.json").write_bytes(b"abc")
    _, path = load(tmp_path, smallest())
    result = run_cli("verify", str(path), str(tmp_path / "d"))
    assert result.returncode == 0, result.stdout + result.stderr
    (tmp_path / "d" / "config.json").write_bytes(b"abd")
    result = run_cli("verify", str(path), str(tmp_path / "d"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  model  config.json        right size, wrong content: md5: expected " + MD5 in result.stdout


def test_a_single_declared_component_is_the_default_for_files_that_name_none(tmp_path):
    data = smallest()
    data["components"] = {"weights": {"required": False}}
    manifest, _ = load(tmp_path, data)
    assert {f.component for f in manifest.files} == {"weights"}
    assert manifest.required_components == ()


@pytest.mark.parametrize(
    "mutate, field, problem, expected",
    [
        (lambda d: d["files"][0].__setitem__("component", "dense"), "files[0] (model.safetensors).component",
         "undeclared component 'dense'", "one of: model"),
        (lambda d: d["files"][0].__setitem__("sha265", SHA), "files[0] (model.safetensors)", "unknown key 'sha265'",
         "sha256"),
        (lambda d: d["files"][1].pop("md5"), "files[1] (config.json)", "no digest", "at least one of"),
        (lambda d: d.__setitem__("components", None), "components", "not a non-empty mapping",
         "or no components key (one required component, 'model')"),
    ],
)
def test_the_smallest_manifest_is_still_validated_strictly(tmp_path, mutate, field, problem, expected):
    data = smallest()
    mutate(data)
    exc = refused(tmp_path, data)
    assert f": {field}: {problem}" in exc.message, exc.message
    assert expected in exc.expected, exc.expected


# --------------------------------------------------------------------------- file mode


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_saved_manifest_gets_the_mode_the_umask_gives_any_new_file(tmp_path, umask, mode):
    import os
    import stat

    manifest, _ = load(tmp_path, good())
    old = os.umask(umask)
    try:
        target = save_manifest(manifest, tmp_path / "out" / "m.yaml")
        plain = tmp_path / "out" / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == mode == stat.S_IMODE(plain.stat().st_mode)
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
    target.chmod(0o600)  # a file the user restricted keeps its mode when rewritten
    save_manifest(manifest, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_build_output_gets_the_umask_mode(tmp_path):
    import os
    import stat

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "model.safetensors").write_bytes(b"abc")
    old = os.umask(0o022)  # the CLI subprocess inherits it
    try:
        result = run_cli("build", str(tmp_path / "d"), "--model", "acme/mine", "-o", str(tmp_path / "m.yaml"))
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "m.yaml").stat().st_mode) == 0o644
