"""Signing test helpers: key pairs made with openssl, the model_signing command line, a tiny
model folder to sign (the `keys` fixture in conftest.py uses these)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from helpers.requires import need

FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 16}\n',
    "model.safetensors": bytes(range(256)) * 64,
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "WordLevel"}}\n',
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}\n',
}


def openssl(*args: str) -> None:
    assert shutil.which("openssl"), "the signing tests make their keys with the openssl command"
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_key_pair(folder: Path, name: str, curve: str = "prime256v1") -> tuple[Path, Path]:
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    openssl("ecparam", "-name", curve, "-genkey", "-noout", "-out", str(private))
    openssl("ec", "-in", str(private), "-pubout", "-out", str(public))
    return private, public


def key_hint(public: Path) -> str:
    """sha256 of the key's PEM SubjectPublicKeyInfo, as model_signing records it in a bundle."""
    serialization = need("cryptography.hazmat.primitives.serialization")
    key = serialization.load_pem_public_key(public.read_bytes())
    raw = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(raw).hexdigest()


def model_signing_cli(*args: str) -> subprocess.CompletedProcess:
    """The model_signing command line of the installed library, in its own process."""
    return subprocess.run([sys.executable, "-m", "model_signing", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


def write_model(directory: Path) -> Path:
    for rel, data in FILES.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    (directory / ".git").mkdir()
    (directory / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (directory / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    return directory
