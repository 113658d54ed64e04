"""Makers of hostile model files and directories for the security tests.

Every maker writes real files (real pickles, real torch checkpoints, real
safetensors, real FIFOs and links) into a folder the test owns. Malicious
pickles are only ever written, never loaded: their payload would create a
marker file, so a test can prove it never ran.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

LFS_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"


class RunsShellCommand:
    """Unpickling this calls ``os.system(command)`` (pickle's __reduce__ protocol)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def payload_command(marker: Path) -> str:
    return f"touch {marker}"


def write_malicious_pickle(path: Path, marker: Path, protocol: int = 2) -> Path:
    """A plain pickle whose loading would run ``os.system('touch MARKER')``."""
    path.write_bytes(pickle.dumps({"weight": [0.0, 1.0], "hook": RunsShellCommand(payload_command(marker))},
                                  protocol=protocol))
    return path


def write_malicious_torch_checkpoint(path: Path, marker: Path) -> Path:
    """A zip-format torch checkpoint (archive/data.pkl inside) with real tensors and an os.system call."""
    import torch

    torch.save({"weight": torch.ones(2, 2), "bias": torch.zeros(2),
                "hook": RunsShellCommand(payload_command(marker))}, path)
    return path


def write_torch_state_dict(path: Path, legacy: bool = False) -> Path:
    import torch

    torch.manual_seed(0)
    state = {"weight": torch.randn(1, 8, dtype=torch.float16), "bias": torch.randn(1, dtype=torch.float16)}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_safetensors(path: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64)}, str(path))
    return path


def write_raw_safetensors(path: Path, header: object, data: bytes, header_length: int | None = None) -> Path:
    """A safetensors-shaped file with any header (a dict, or raw bytes) and data section."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_length is None else header_length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def write_lfs_stub(path: Path, real: bytes) -> Path:
    """The Git LFS pointer a clone without git-lfs leaves in place of ``real``."""
    import hashlib

    path.write_text(LFS_TEMPLATE.format(oid=hashlib.sha256(real).hexdigest(), size=len(real)))
    return path


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def link_to(path: Path, target: str | os.PathLike[str]) -> Path:
    os.symlink(target, path)
    return path


def make_small_model_dir(root: Path) -> Path:
    """A small model folder: config, a safetensors file, a torch head, a tokenizer file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    write_safetensors(root / "model.safetensors")
    write_torch_state_dict(root / "sparse_linear.pt")
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n")
    return root


class WriterDuringHashing:
    """A progress hook for ``verify(progress=...)`` that, once the first chunk of the file
    has been read, runs ``action(path)`` in a real writer thread and waits for it.

    ``verify`` calls its progress hook from the reading thread after each chunk, so the
    write lands deterministically between two reads of the same open file. With
    ``next_tick``, the writer first waits until the file system clock has moved past the
    file's timestamps (Linux stamps files from a coarse clock: a write in the same tick
    leaves mtime/ctime unchanged, which the digest cache guards with its racy window).
    """

    def __init__(self, path: Path, action, *, next_tick: bool = True) -> None:
        self.path = Path(path)
        self.action = action
        self.next_tick = next_tick
        self.fired = 0

    def __call__(self, nbytes: int) -> None:
        if self.fired:
            return
        self.fired += 1

        def write():
            if self.next_tick:
                import time

                st = os.stat(self.path)
                newest = max(st.st_mtime_ns, st.st_ctime_ns)
                clock = getattr(time, "CLOCK_REALTIME_COARSE", time.CLOCK_REALTIME)
                while time.clock_gettime_ns(clock) <= newest:
                    time.sleep(0.001)
            self.action(self.path)

        import threading

        t = threading.Thread(target=write, name="hostile-writer")
        t.start()
        t.join()


def append_bytes(data: bytes):
    def action(path: Path) -> None:
        with open(path, "ab") as fh:
            fh.write(data)
    return action


def overwrite_at(offset: int, data: bytes):
    def action(path: Path) -> None:
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(data)
    return action


def replace_with(data: bytes):
    def action(path: Path) -> None:
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return action


GROWER_SCRIPT = """
import sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
with open(path, "ab", buffering=0) as fh:
    fh.write(b"g" * 4096)  # the file has grown before the caller hears "started"
    print("started", flush=True)
    while time.monotonic() < end:
        fh.write(b"g" * 4096)
        time.sleep(0.0005)
"""


def make_hostile_model_dir(root: Path, marker: Path) -> dict[str, str]:
    """A model folder holding one of each hostile file, with a manifest (``modelguard.yaml``
    beside them) describing the files the folder SHOULD hold. Returns ``{path: expected
    verify diagnosis}``; the caller checks that verify says exactly that and hangs on nothing."""
    import hashlib

    import yaml

    root.mkdir(parents=True, exist_ok=True)
    real = {name: hashlib.sha256(name.encode()).digest() * 64 for name in
            ("pytorch_model.bin", "model.safetensors", "config.json", "fifo.bin", "empty.txt", "grown.bin")}
    write_malicious_pickle(root / "pytorch_model.bin", marker)                # right name, wrong bytes: code
    write_lfs_stub(root / "model.safetensors", real["model.safetensors"])     # clone without git-lfs
    link_to(root / "config.json", "/etc/passwd")                              # link out of the folder
    make_fifo(root / "fifo.bin")                                              # would block a reader
    (root / "empty.txt").write_bytes(b"")                                     # zero bytes
    (root / "grown.bin").write_bytes(real["grown.bin"] + b"appended")         # grew after the download
    files = [{"path": name, "size": len(data), "component": "model", "sha256": hashlib.sha256(data).hexdigest()}
             for name, data in sorted(real.items())]
    manifest = {"modelguard": 1, "model": "hostile/everything", "components": {"model": {"required": True}},
                "files": files}
    (root / "modelguard.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return {
        "pytorch_model.bin": _size_diagnosis(root / "pytorch_model.bin", len(real["pytorch_model.bin"])),
        "model.safetensors": "lfs_pointer",
        "config.json": "symlink_escape",
        "fifo.bin": "not_a_file",
        "empty.txt": "empty",
        "grown.bin": "oversized",
    }


def _size_diagnosis(path: Path, expected: int) -> str:
    size = path.stat().st_size
    return "digest_mismatch" if size == expected else "truncated" if size < expected else "oversized"


HOSTILE_MANIFESTS = {
    "alias-bomb.yaml": ("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                        "c: [*b, *b, *b, *b, *b, *b, *b, *b]\n", "anchors (&name) are not allowed"),
    "python-object.yaml": ("modelguard: 1\nmodel: !!python/object/apply:os.system ['touch /tmp/mg-pwned']\n",
                           "is not allowed"),
    "absolute-path.yaml": ("modelguard: 1\nmodel: x/y\ncomponents: {m: {}}\n"
                           "files: [{path: /etc/passwd, size: 1, component: m, sha256: '" + "ab" * 32 + "'}]\n",
                           "absolute paths are not allowed"),
    "dotdot.yaml": ("modelguard: 1\nmodel: x/y\ncomponents: {m: {}}\n"
                    "files: [{path: ../../etc/passwd, size: 1, component: m, sha256: '" + "ab" * 32 + "'}]\n",
                    "'..' is not allowed"),
    "deep.yaml": ("[" * 5000, "nesting deeper than"),
    "not-utf8.yaml": (b"modelguard: 1\nmodel: \xff\xfe\n", "not UTF-8 text"),
    "huge-number.yaml": ("modelguard: 1\nmodel: x/y\ncomponents: {m: {}}\n"
                         "files: [{path: a, size: 1" + "0" * 5000 + ", component: m, sha256: '" + "ab" * 32 + "'}]\n",
                         "cannot be parsed"),
    "wrong-types.yaml": ("modelguard: 1\nmodel: x/y\ncomponents: {m: {}}\nfiles: [{path: a, size: '12', component: m, "
                         "sha256: '" + "ab" * 32 + "'}]\n", "size: not an integer"),
}


def write_hostile_manifests(root: Path) -> dict[Path, str]:
    """The hostile manifest files, and a phrase each one's refusal must contain."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, (content, expected) in HOSTILE_MANIFESTS.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        out[path] = expected
    return out
