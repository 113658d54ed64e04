"""A Hugging Face cache repository laid out as huggingface_hub makes it, for the tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def snapshot_of_links(hub: Path, repo: str, files: dict[str, bytes], rev: str = "a" * 40) -> tuple[Path, Path]:
    """``(snapshot, blobs folder)`` of ``hub/models--ORG--NAME``: each file a blob named by its
    sha256, and the snapshot ``rev`` a link to it for every file (``../../blobs/<sha256>``,
    ``../../../blobs/<sha256>`` from a subfolder)."""
    folder = hub / ("models--" + repo.replace("/", "--"))
    snap, blobs = folder / "snapshots" / rev, folder / "blobs"
    blobs.mkdir(parents=True)
    for name, data in files.items():
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, (snap / name).parent), snap / name)
    return snap, blobs
