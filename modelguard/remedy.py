"""The command lines that error messages and reports suggest, built in one place."""

from __future__ import annotations

import os
from shlex import quote
from typing import Any


def fetch_command(model: Any, revision: str | None = None, *, local_dir: Any = None, cache_dir: Any = None) -> str:
    """``modelguard fetch MODEL [--revision REV] [--local-dir DIR | --cache-dir DIR]``, each
    value quoted for a POSIX shell (``shlex.quote``)."""
    cmd = f"modelguard fetch {quote(os.fspath(model))}"
    if revision:
        cmd += f" --revision {quote(revision)}"
    if local_dir is not None:
        cmd += f" --local-dir {quote(str(os.fspath(local_dir)))}"
    elif cache_dir is not None:
        cmd += f" --cache-dir {quote(str(os.fspath(cache_dir)))}"
    return cmd
