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
    print("started", flush=True)
    while time.monotonic() < end:
        fh.write(b"g" * 4096)
        time.sleep(0.0005)
"""
