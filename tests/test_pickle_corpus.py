"""The default-deny pickle gate against a corpus generated here (never committed as binaries):
live malicious files, each first shown to run its payload when loaded without protection in a
subprocess, all refused by ``verify --scan`` and ``audit``; benign weight files all pass."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.requires import need
from modelguard.pickle_gate import ALLOWED_GLOBALS
from modelguard.safety import scan_file

torch = need("torch")
np = need("numpy")
joblib = need("joblib")

# --------------------------------------------------------------------------- a tiny pickle assembler


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL (any protocol)


def _stack_glob(module: str, name: str) -> bytes:
    return _text(module) + _text(name) + b"\x93"  # STACK_GLOBAL (protocol 4)


def _call(function: bytes, *args: bytes) -> bytes:
    return function + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def _bytes(value: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(value)) + value  # BINBYTES


def _list(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"l"  # MARK items LIST


def _pickle(body: bytes, protocol: int = 4) -> bytes:
    return b"\x80" + bytes([protocol]) + body + b"."


class Reduces:
    """Pickles as ``function(*args)``."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


# --------------------------------------------------------------------------- the corpus


def _malicious_samples(folder: Path, helpers: Path, markers: Path) -> dict[str, str]:
    """Write every malicious sample into ``folder``; returns file name -> unprotected loader."""
    import subprocess as sp

    def cmd(name: str) -> str:
        return f"touch {markers / name}"

    def code(name: str) -> str:
        return f"import os; os.system({cmd(name)!r})"

    def evil(name: str):
        return Reduces(os.system, cmd(name))

    loaders: dict[str, str] = {}

    def put(name: str, data: bytes, loader: str = "pickle") -> None:
        (folder / name).write_bytes(data)
        loaders[name] = loader

    # plain pickles, every protocol
    for protocol in range(6):
        name = f"reduce-p{protocol}.pkl"
        put(name, pickle.dumps({"w": [1.0], "x": evil(name)}, protocol=protocol))
    put("handwritten-p0.bin", f"cos\nsystem\n(S'{cmd('handwritten-p0.bin')}'\ntR.".encode())
    # callables that run code, beyond os.system
    n = "subprocess-run.pkl"
    put(n, pickle.dumps(Reduces(sp.run, ["touch", str(markers / n)]), protocol=2))
    n = "subprocess-check-output.pkl"
    put(n, pickle.dumps(Reduces(sp.check_output, ["touch", str(markers / n)]), protocol=2))
    n = "subprocess-getoutput.pkl"
    put(n, pickle.dumps(Reduces(sp.getoutput, cmd(n)), protocol=3))
    n = "builtins-exec.pkl"
    put(n, _pickle(_call(_glob("builtins", "exec"), _text(code(n))), 2))
    n = "builtins-eval.pkl"
    put(n, _pickle(_call(_glob("builtins", "eval"), _text(f"__import__('os').system({cmd(n)!r})"))))
    n = "compile-exec.pkl"
    put(n, _pickle(_call(_stack_glob("builtins", "exec"),
                         _call(_stack_glob("builtins", "compile"), _text(code(n)), _text("x"), _text("exec")))))
    n = "tempfile-os-system.pkl"  # a dotted name: tempfile._os is os
    put(n, _pickle(_call(_stack_glob("tempfile", "_os.system"), _text(cmd(n)))))
    n = "code-runsource.pkl"
    put(n, _pickle(_call(_stack_glob("code", "InteractiveInterpreter.runsource"),
                         _call(_stack_glob("code", "InteractiveInterpreter")), _text(code(n)))))
    n = "code-console-push.pkl"
    put(n, _pickle(_call(_stack_glob("code", "InteractiveConsole.push"),
                         _call(_stack_glob("code", "InteractiveConsole")), _text(code(n)))))
    n = "cprofile-run.pkl"
    put(n, _pickle(_call(_glob("cProfile", "run"), _text(code(n))), 2))
    n = "profile-run.pkl"
    put(n, _pickle(_call(_glob("profile", "run"), _text(code(n))), 2))
    n = "marshal-function.pkl"
    compiled = __import__("marshal").dumps(compile(code(n), "x", "exec"))
    put(n, _pickle(_call(_call(_glob("types", "FunctionType"), _call(_glob("marshal", "loads"), _bytes(compiled)),
                               b"}")), 3))
    n = "importlib-getattr.pkl"
    put(n, _pickle(_call(_call(_glob("builtins", "getattr"),
                               _call(_glob("importlib", "import_module"), _text("os")), _text("system")),
                         _text(cmd(n)))))
    n = "vars-getitem.pkl"
    put(n, _pickle(_call(_call(_glob("_operator", "getitem"),
                               _call(_glob("builtins", "vars"), _call(_glob("importlib", "import_module"), _text("os"))),
                               _text("system")), _text(cmd(n)))))
    n = "dunder-import.pkl"
    put(n, _pickle(_call(_call(_glob("builtins", "getattr"), _call(_glob("builtins", "__import__"), _text("os")),
                               _text("system")), _text(cmd(n)))))
    n = "functools-partial.pkl"
    put(n, _pickle(_call(_call(_glob("functools", "partial"), _glob("os", "system"), _text(cmd(n))))))
    n = "methodcaller.pkl"
    put(n, _pickle(_call(_call(_glob("operator", "methodcaller"), _text("system"), _text(cmd(n))),
                         _call(_glob("importlib", "import_module"), _text("os")))))
    n = "nested-pickle-loads.pkl"
    put(n, _pickle(_call(_glob("pickle", "loads"), _bytes(pickle.dumps(evil(n), protocol=2)))))
    n = "spawnlp.pkl"
    put(n, _pickle(_call(_glob("os", "spawnlp"), b"K\x00", _text("touch"), _text("touch"),
                         _text(str(markers / n)))))
    n = "thread.pkl"  # the loader waits a moment for threads before it exits
    put(n, _pickle(_call(_glob("_thread", "start_new_thread"), _glob("os", "system"), b"(" + _text(cmd(n)) + b"t")))
    n = "memo-trick.pkl"  # the names STACK_GLOBAL takes come from the memo, decoys pushed last
    put(n, _pickle(_text("posix") + b"\x94" + _text("system") + b"\x94" + b"00"
                   + _text("collections") + _text("OrderedDict") + b"00"
                   + b"h\x00h\x01\x93" + b"(" + _text(cmd(n)) + b"tR"))
    module_zip = helpers / "evilmod.zip"
    with zipfile.ZipFile(module_zip, "w") as zf:
        zf.writestr("evilmod.py", code("zipimport.pkl"))
    n = "zipimport.pkl"
    put(n, _pickle(_call(_stack_glob("zipimport", "zipimporter.load_module"),
                         _call(_stack_glob("zipimport", "zipimporter"), _text(str(module_zip))), _text("evilmod"))))

    # torch: zip checkpoints
    n = "torch-zip.pt"
    torch.save({"weight": torch.ones(2), "hook": evil(n)}, folder / n)
    loaders[n] = "torch"
    n = "torch-zip-protocol4.pt"
    torch.save({"weight": torch.ones(2), "hook": evil(n)}, folder / n, pickle_protocol=4)
    loaders[n] = "torch"
    n = "torch-zip-duplicate.pt"  # two data.pkl members: torch 2.13 reads the last one
    benign = io.BytesIO()
    torch.save({"weight": torch.ones(2)}, benign)
    write_duplicate_data_pkl(folder / n, benign.getvalue(), pickle.dumps(evil(n), protocol=2), evil_first=False)
    loaders[n] = "torch"
    # torch: legacy formats
    n = "torch-legacy.bin"
    torch.save({"weight": torch.ones(2), "hook": evil(n)}, folder / n, _use_new_zipfile_serialization=False)
    loaders[n] = "torch"
    n = "torch-legacy-sysinfo.bin"
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    put(n, magic + pickle.dumps(evil(n), protocol=2) + pickle.dumps({}, protocol=2), "torch")
    for n, member in (("torch-tar-storages.pt", "storages"), ("torch-tar-pickle.pt", "pickle")):
        parts = {"sys_info": pickle.dumps({"little_endian": True}, protocol=2),
                 "storages": pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2),
                 "tensors": pickle.dumps(0, protocol=2),
                 "pickle": pickle.dumps({}, protocol=2)}
        parts[member] = pickle.dumps(evil(n), protocol=2) + parts[member]
        with tarfile.open(folder / n, "w", format=tarfile.PAX_FORMAT) as tf:
            for name, data in parts.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        loaders[n] = "torch"
    # polyglots: a pickle that is also a zip
    n = "polyglot-pickle-zip.pt"
    put(n, pickle.dumps(evil(n), protocol=2) + benign.getvalue(), "torch")
    n = "polyglot-pickle-npz.npz"
    npz = io.BytesIO()
    np.savez(npz, a=np.arange(3))
    put(n, pickle.dumps(evil(n), protocol=2) + npz.getvalue(), "numpy")
    # joblib, plain and compressed
    n = "joblib-plain.joblib"
    joblib.dump({"coef": np.arange(4.0), "x": evil(n)}, folder / n)
    loaders[n] = "joblib"
    for method in ("zlib", "gzip", "bz2", "lzma", "xz"):
        n = f"joblib-{method}.joblib"
        joblib.dump({"coef": np.arange(4.0), "x": evil(n)}, folder / n, compress=(method, 3))
        loaders[n] = "joblib"
    n = "joblib-object-array.pkl"
    joblib.dump({"coef": np.arange(1000.0), "objects": np.array([evil(n), 1], dtype=object)}, folder / n)
    loaders[n] = "joblib"
    n = "joblib-object-array-gzip.joblib"
    joblib.dump({"objects": np.array([evil(n)], dtype=object)}, folder / n, compress=("gzip", 3))
    loaders[n] = "joblib"
    # numpy object arrays
    n = "object-array.npy"
    np.save(folder / n, np.array([evil(n), 2], dtype=object), allow_pickle=True)
    loaders[n] = "numpy"
    n = "object-array.npz"
    np.savez(folder / n, ok=np.arange(3), objects=np.array([evil(n)], dtype=object))
    loaders[n] = "numpy"
    # zip members, nested zips
    n = "member.zip"
    with zipfile.ZipFile(folder / n, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.md", "weights inside")
        zf.writestr("weights/head.pkl", pickle.dumps(evil(n), protocol=4))
    loaders[n] = "zip"
    n = "member-any-name.zip"
    with zipfile.ZipFile(folder / n, "w") as zf:
        zf.writestr("weights/model.bin", pickle.dumps(evil(n), protocol=2))
    loaders[n] = "zip"
    n = "nested.zip"
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("evil.pkl", pickle.dumps(evil(n), protocol=5))
    with zipfile.ZipFile(folder / n, "w") as zf:
        zf.writestr("inner.zip", inner.getvalue())
    loaders[n] = "zip"
    return loaders


def write_duplicate_data_pkl(path: Path, checkpoint: bytes, evil_pickle: bytes, *, evil_first: bool) -> None:
    """A torch zip checkpoint with a second ``archive/data.pkl`` member, before or after the real one."""
    import warnings

    with zipfile.ZipFile(io.BytesIO(checkpoint)) as src:
        members = [(i.filename.split("/", 1)[1], src.read(i)) for i in src.infolist()]
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        if evil_first:
            zf.writestr("archive/data.pkl", evil_pickle)
        for name, data in members:
            zf.writestr(f"archive/{name}", data)
        if not evil_first:
            zf.writestr("archive/data.pkl", evil_pickle)


UNPROTECTED_LOADER = textwrap.dedent("""
    import io, json, pickle, sys, time, zipfile
    import joblib, numpy, torch

    def from_zip(data):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                member = zf.read(info)
                if member.startswith(b"PK"):
                    from_zip(member)
                elif member[:1] == b"\\x80":
                    pickle.loads(member)

    load = {
        "pickle": lambda p: pickle.load(open(p, "rb")),
        "torch": lambda p: torch.load(p, weights_only=False),
        "joblib": joblib.load,
        "numpy": lambda p: [numpy.load(p, allow_pickle=True)[k] for k in numpy.load(p, allow_pickle=True)]
                 if p.endswith(".npz") and open(p, "rb").read(2) == b"PK" else numpy.load(p, allow_pickle=True),
        "zip": lambda p: from_zip(open(p, "rb").read()),
    }
    for path, how in json.loads(sys.argv[1]).items():
        try:
            load[how](path)
        except BaseException:
            pass
    time.sleep(1)  # a payload started on a thread
""")


@pytest.fixture(scope="module")
def malicious(tmp_path_factory):
    """The malicious corpus: (folder, {file: loader}), each file proven to run its payload."""
    root = tmp_path_factory.mktemp("malicious")
    folder, helpers, markers = root / "model", root / "helpers", root / "markers"
    for d in (folder, helpers, markers):
        d.mkdir()
    loaders = _malicious_samples(folder, helpers, markers)
    proc = subprocess.run(
        [sys.executable, "-c", UNPROTECTED_LOADER, json.dumps({str(folder / n): how for n, how in loaders.items()})],
        cwd=helpers, capture_output=True, text=True, timeout=300, env=_without_modelguard_env())
    ran = sorted(p.name for p in markers.iterdir())
    assert ran == sorted(loaders), ("payloads that did not run unprotected: "
                                    f"{sorted(set(loaders) - set(ran))}\n{proc.stderr[-3000:]}")
    for m in markers.iterdir():
        m.unlink()
    yield folder, loaders, markers
    assert not list(markers.iterdir()), "a payload ran while modelguard checked the corpus"


def _without_modelguard_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the unprotected loader does not import modelguard at all
    return env


def _benign_samples(folder: Path) -> list[str]:
    from collections import OrderedDict

    from safetensors.torch import save_file

    torch.manual_seed(0)
    names = []

    def save(name: str, obj, **kwargs) -> None:
        torch.save(obj, folder / name, **kwargs)
        names.append(name)

    for dtype in ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float64", "int8", "int64",
                  "bool", "uint8", "complex64"):
        t = getattr(torch, dtype)
        value = torch.randn(4, 3).to(t) if dtype != "bool" else torch.ones(4, 3, dtype=torch.bool)
        save(f"state-{dtype}.pt", {"layer.weight": value, "layer.bias": torch.zeros(3).to(t)})
    linear = torch.nn.Linear(8, 4)
    save("ordered-dict.pt", OrderedDict(linear.state_dict()))
    save("legacy-format.bin", linear.state_dict(), _use_new_zipfile_serialization=False)
    save("legacy-fp16.bin", {k: v.half() for k, v in linear.state_dict().items()}, _use_new_zipfile_serialization=False)
    save("protocol4.pt", linear.state_dict(), pickle_protocol=4)
    optimizer = torch.optim.Adam(linear.parameters())
    linear(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    save("optimizer-adam.pt", optimizer.state_dict())
    sgd = torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9)
    sgd.step()
    save("optimizer-sgd.pt", sgd.state_dict())
    save("sparse-coo.pt", {"s": torch.randn(4, 4).to_sparse()})
    save("sparse-csr.pt", {"s": torch.randn(4, 4).to_sparse_csr()})
    base = torch.randn(16)
    save("shared-storage.pt", {"a": base, "b": base[4:8], "c": base.view(4, 4)})
    save("parameters.pt", {"p": torch.nn.Parameter(torch.randn(3))})
    save("quantized.pt", {"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)})
    save("mixed-containers.pt", {"tensors": [torch.ones(2), (torch.zeros(1), None)], "step": 10, "lr": 1e-4,
                                 "name": "head", "shape": torch.Size([2, 3]), "device": torch.device("cpu"),
                                 "flags": {1, 2}, "raw": b"\x00\x01", "buffer": bytearray(b"x"), "c": 1 + 2j})
    # FlagEmbedding (bge-m3) heads, as the library saves them
    save("colbert_linear.pt", torch.nn.Linear(16, 16).state_dict())
    save("sparse_linear.pt", torch.nn.Linear(16, 1).state_dict())
    # plain pickles of plain data, every protocol; numpy arrays through pickle
    for protocol in range(6):
        name = f"plain-p{protocol}.pkl"
        (folder / name).write_bytes(pickle.dumps({"a": [1, 2.5, "x"], "b": (None, True), "c": {3, 4}},
                                                 protocol=protocol))
        names.append(name)
    for protocol in (2, 5):
        name = f"numpy-pickle-p{protocol}.pkl"
        (folder / name).write_bytes(pickle.dumps({"w": np.arange(6.0).reshape(2, 3), "s": np.float32(2)},
                                                 protocol=protocol))
        names.append(name)
    np.save(folder / "array.npy", np.arange(10, dtype=np.float16))
    np.savez(folder / "arrays.npz", a=np.arange(3), b=np.ones((2, 2)))
    np.save(folder / "strings-object.npy", np.array(["a", "bc"], dtype=object), allow_pickle=True)
    names += ["array.npy", "arrays.npz", "strings-object.npy"]
    joblib.dump({"coef": np.arange(300_000, dtype=np.float32), "intercept": np.float64(0.5)}, folder / "arrays.joblib")
    joblib.dump({"coef": np.arange(1000.0)}, folder / "arrays-zlib.joblib", compress=("zlib", 3))
    joblib.dump({"coef": np.arange(1000.0)}, folder / "arrays-gzip.joblib", compress=("gzip", 3))
    joblib.dump([np.ones((3, 3)), {"names": np.array(["x", "y"], dtype=object)}], folder / "arrays-objects.pkl")
    names += ["arrays.joblib", "arrays-zlib.joblib", "arrays-gzip.joblib", "arrays-objects.pkl"]
    with zipfile.ZipFile(folder / "bundle.zip", "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("head.pkl", pickle.dumps({"w": [0.5]}, protocol=2))
    names.append("bundle.zip")
    # safetensors, edge cases included
    save_file({"w": torch.randn(3, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}, str(folder / "model.safetensors"))
    save_file({}, str(folder / "empty.safetensors"))
    save_file({"w": torch.zeros(0, 4)}, str(folder / "zero-size.safetensors"), metadata={"format": "pt"})
    save_file({"f8": torch.zeros(4).to(torch.float8_e4m3fn)}, str(folder / "float8.safetensors"))
    names += ["model.safetensors", "empty.safetensors", "zero-size.safetensors", "float8.safetensors"]
    return names


@pytest.fixture(scope="module")
def benign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("benign") / "model"
    folder.mkdir()
    return folder, _benign_samples(folder)


def _manifest(folder: Path, names) -> Path:
    lines = ["modelguard: 1", "model: local/corpus", "components:", "  weights: {required: true}", "files:"]
    for name in sorted(names):
        data = (folder / name).read_bytes()
        lines += [f"- path: {name}", f"  size: {len(data)}", "  component: weights",
                  f"  sha256: {hashlib.sha256(data).hexdigest()}"]
    path = folder.parent / "corpus.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- malicious


def test_corpus_sizes(malicious, benign):
    assert len(malicious[1]) >= 40
    assert len(benign[1]) >= 30


def test_every_malicious_file_is_refused_in_process(malicious):
    folder, loaders, _ = malicious
    passed = {name: f.message for name in loaders if (f := scan_file(folder / name)).safe}
    assert passed == {}, passed
    for name in loaders:
        f = scan_file(folder / name)
        assert f.diagnosis == "dangerous_pickle", (name, f)
        assert "not among the globals safe weight loading needs (default deny)" in f.message, (name, f.message)


def test_verify_scan_exits_1_and_names_every_malicious_file(malicious):
    folder, loaders, _ = malicious
    proc = run_cli("verify", str(_manifest(folder, loaders)), str(folder), "--scan", "--json")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    doc = json.loads(proc.stdout)
    findings = {f["path"]: f for f in doc["scan"]["findings"]}
    assert sorted(findings) == sorted(loaders)
    assert [p for p, f in findings.items() if f["safe"]] == []
    assert doc["scan"]["unsafe"] == len(loaders)
    assert doc["summary"]["failed"] == 0  # the bytes are the pinned ones: only the scan fails


@pytest.mark.parametrize("name", ["reduce-p0.pkl", "torch-zip-duplicate.pt", "joblib-zlib.joblib", "object-array.npy",
                                  "nested.zip", "torch-tar-storages.pt"])
def test_verify_scan_exits_1_on_each_file_alone(malicious, name):
    folder, _, _ = malicious
    proc = run_cli("verify", str(_manifest(folder, [name])), str(folder), "--scan")
    assert proc.returncode == 1, proc.stdout
    assert f"UNSAFE  {name}: pickle imports " in proc.stdout


def test_audit_exits_1_and_fails_every_malicious_file(malicious):
    folder, loaders, _ = malicious
    proc = run_cli("audit", str(folder), "--json")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    safety = json.loads(proc.stdout)["sections"]["safety"]
    failed = {f["source"] for f in safety if f["severity"] == "failed"}
    assert sorted(failed) == sorted(loaders)


def test_the_unsafe_global_is_named(malicious):
    folder, _, _ = malicious
    expected = {
        "tempfile-os-system.pkl": "tempfile._os.system",
        "code-runsource.pkl": "code.InteractiveInterpreter.runsource",
        "memo-trick.pkl": "posix.system",
        "torch-zip-duplicate.pt": "posix.system",
        "marshal-function.pkl": "marshal.loads",
        "zipimport.pkl": "zipimport.zipimporter.load_module",
        "joblib-object-array.pkl": "posix.system",
        "object-array.npz": "posix.system",
        "torch-tar-storages.pt": "posix.system",
        "nested.zip": "posix.system",
    }
    for name, global_name in expected.items():
        f = scan_file(folder / name)
        assert global_name in f.dangerous_globals, (name, f.dangerous_globals)
    f = scan_file(folder / "nested.zip")
    assert "(in inner.zip:evil.pkl)" in f.message
    f = scan_file(folder / "torch-zip-duplicate.pt")
    assert "(in archive/data.pkl)" in f.message


def test_duplicate_member_is_refused_whichever_comes_first(tmp_path):
    """Which of two same-named members a reader takes differs (zipfile: the last; miniz
    builds: the first); every member is judged."""
    checkpoint = io.BytesIO()
    torch.save({"weight": torch.ones(2)}, checkpoint)
    for evil_first in (True, False):
        path = tmp_path / f"dup-{evil_first}.pt"
        write_duplicate_data_pkl(path, checkpoint.getvalue(), _pickle(_call(_glob("os", "system"), _text("true")), 2),
                                 evil_first=evil_first)
        f = scan_file(path)
        assert f.diagnosis == "dangerous_pickle" and f.dangerous_globals == ("os.system",), f


# --------------------------------------------------------------------------- benign


def test_every_benign_file_passes_in_process(benign):
    folder, names = benign
    refused = {n: f.message for n in names if not (f := scan_file(folder / n)).safe}
    assert refused == {}, refused


def test_verify_scan_and_audit_pass_the_benign_corpus(benign):
    folder, names = benign
    proc = run_cli("verify", str(_manifest(folder, names)), str(folder), "--scan", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["scan"]["unsafe"] == 0 and doc["scan"]["files"] == len(names)
    audit = run_cli("audit", str(folder), "--json")
    safety = json.loads(audit.stdout)["sections"]["safety"]
    assert [f for f in safety if f["severity"] == "failed"] == []
    assert safety[-1]["message"] == f"{len(names)} pickle/safetensors file(s) scanned, none unsafe"


def test_benign_torch_files_also_load_with_weights_only(benign):
    """The allowlist is no wider than torch's own: what passes also loads with weights_only=True
    (protocol4.pt aside: torch's weights_only reader does not know the FRAME opcode at all)."""
    folder, names = benign
    for name in names:
        if name.endswith((".pt", ".bin")) and name != "protocol4.pt":
            torch.load(folder / name, weights_only=True)


def test_allowlist_is_torch_weights_only_plus_numpy_and_joblib_arrays():
    import torch._weights_only_unpickler as wo

    torch_names = set(wo._get_allowed_globals())
    ours = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    extra = sorted(ours - torch_names)
    assert all(e.startswith(("numpy.", "joblib.numpy_pickle.NumpyArrayWrapper", "builtins.frozenset",
                             "builtins.slice")) for e in extra), extra
    assert sorted(torch_names - ours) == []  # a new torch release that allows more: update the list


def test_guard_refuses_a_model_holding_any_malicious_file(malicious, isolated_env):
    """The guard scans the files a load is about to read and refuses, whatever the policy."""
    import shutil

    from modelguard import guard
    from modelguard.errors import UnsafeFileError

    folder, loaders, _ = malicious
    model = isolated_env / "guarded-model"
    shutil.copytree(folder, model)
    shutil.copy(_manifest(model, loaders), model / "modelguard.yaml")
    guard.install(policy="warn")
    try:
        with pytest.raises(UnsafeFileError) as info:
            with guard.verified_scope():
                guard.check_before_load(model)
    finally:
        guard.uninstall()
    message = str(info.value)
    assert message.startswith(f"{len(loaders)} unsafe file(s); not loaded:")
    for name in loaders:
        assert f"  {name}: pickle imports " in message, name


def test_a_pickle_that_starts_like_a_compressed_stream_is_still_read_as_a_pickle(tmp_path):
    """b"BZh" is bz2's magic and also BINBYTES: pickle.load runs what follows."""
    length = int.from_bytes(b"Zh9\x00", "little")  # BINBYTES takes the 4 bytes after "B" as its length
    body = b"BZh9\x00" + b"x" * length + b"0" + _call(_glob("os", "system"), _text("true")) + b"."
    path = tmp_path / "looks-compressed.pkl"
    path.write_bytes(body)
    assert pickle.loads(body.replace(b"os\nsystem", b"builtins\nlen").replace(_text("true"), _text("xy"))) == 2
    f = scan_file(path)
    assert f.diagnosis == "dangerous_pickle" and f.dangerous_globals == ("os.system",), f
