"""Installs the guard at the start of every Python program ``modelguard run`` starts.

``modelguard run`` puts this folder first on ``PYTHONPATH``; Python's ``site`` module then
imports this file as ``sitecustomize`` before the program runs. It imports
:mod:`modelguard.auto` (the guard, with the settings ``run`` put in the environment; no
loader library is imported until the program imports it), takes its own folder off
``sys.path`` again, and runs the ``sitecustomize`` that was next on the path, if any, so a
user's or the distribution's own is not shadowed.

A Python that cannot import modelguard stops with exit code 2 and says why: a program
started under ``modelguard run`` never runs unguarded without saying so. Imported under
any other name (``modelguard._bootstrap.sitecustomize``) it does nothing.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _same_folder(entry: str) -> bool:
    try:
        return os.path.samefile(entry or os.curdir, _HERE)
    except OSError:
        return False


def _stop(exc: ImportError) -> None:
    sys.stderr.write(
        f"modelguard run: this Python ({sys.executable}) cannot import modelguard: {exc}\n"
        "  fix: install modelguard in the environment of the command, or start the command with the "
        "Python that has it (`python -m modelguard run -- python ...`)\n"
    )
    sys.stderr.flush()
    os._exit(2)  # site.py would print the error and run the program unguarded


def _chain_next_sitecustomize() -> None:
    """Run the ``sitecustomize`` this one hides (the next on ``sys.path``), as ``sitecustomize``."""
    sys.path[:] = [entry for entry in sys.path if not _same_folder(entry)]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", sys.path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


if __name__ == "sitecustomize":
    try:
        import modelguard.auto  # noqa: F401 - installs the guard from the environment
    except ImportError as _exc:
        _stop(_exc)
    _chain_next_sitecustomize()
