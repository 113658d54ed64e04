"""Run the command line as a user does: ``python -m modelguard ARGS`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def run_cli(*args: str, env: dict | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m modelguard ARGS`` in a subprocess; returns the completed process (text)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "modelguard", *args], capture_output=True, text=True,
        env=full_env, cwd=cwd, timeout=timeout,
    )
