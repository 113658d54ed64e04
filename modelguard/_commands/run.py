"""``modelguard run [--policy P] [--unknown U] [--offline] [--lock FILE] -- CMD ...``.

Runs any program with the guard installed in every Python interpreter it starts, with no
change to its code (as ``opentelemetry-instrument python app.py`` does): the folder of
:mod:`modelguard._bootstrap` goes first on ``PYTHONPATH``, so Python's ``site`` imports its
``sitecustomize``, which imports :mod:`modelguard.auto` and then the ``sitecustomize`` it
hides. The options become the guard's environment settings. ``run`` then replaces itself
with the command (``exec``): signals reach the command and its exit code is ``run``'s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from shlex import quote
from typing import Mapping

from .._bootstrap import DIRECTORY as BOOTSTRAP_DIRECTORY
from ..env import OFFLINE_VARIABLES
from ..errors import UsageError
from ..lockfile import ENV_LOCK
from ..policy import ENV_POLICY, ENV_UNKNOWN, POLICIES, UNKNOWN_POLICIES


def add_guard_options(p: argparse.ArgumentParser) -> None:
    """The guard settings ``run`` and ``lock record`` pass to the command through its environment."""
    p.add_argument("--policy", choices=POLICIES,
                   help=f"files that fail verification: refuse (default), repair, warn (sets ${ENV_POLICY})")
    p.add_argument("--unknown", choices=UNKNOWN_POLICIES,
                   help=f"a model no manifest, lock or cache listing describes: warn (default), refuse, allow "
                        f"(sets ${ENV_UNKNOWN})")
    p.add_argument("--offline", action="store_true", help=f"never download (sets {OFFLINE_VARIABLES[0]}=1)")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                   help="the program to run and its arguments, after --")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a program with the loader guard installed, its code unchanged",
        description="Run CMD with the loader guard installed in every Python interpreter it starts (through a "
                    "sitecustomize put first on PYTHONPATH; a sitecustomize already on the path still runs). "
                    "Every model a supported library loads is verified before it is built. The exit code is the "
                    "command's; 2 when modelguard cannot start it.",
        epilog="example: modelguard run --unknown refuse -- python serve.py --port 8000",
    )
    p.add_argument("--lock", metavar="FILE", help=f"the lock file to enforce (sets ${ENV_LOCK}; default: "
                                                  "modelguard.lock found from the working directory upward)")
    add_guard_options(p)
    p.set_defaults(run=run)


def command_of(args: argparse.Namespace, name: str = "run") -> list[str]:
    """The command after ``--`` (argparse keeps a leading ``--`` in older Pythons)."""
    command = list(args.argv or ())
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(
            f"modelguard {name}: no command to run", expected=f"modelguard {name} [OPTIONS] -- CMD [ARGS ...]",
            actual="nothing after the options", remedy=f"name the program, e.g. modelguard {name} -- python app.py",
        )
    return command


def guarded_environment(args: argparse.Namespace, base: Mapping[str, str] | None = None,
                        **extra: str) -> dict[str, str]:
    """The command's environment: ``base`` (default: this one), the bootstrap folder first on
    ``PYTHONPATH``, and the settings the options name."""
    env = dict(os.environ if base is None else base)
    entries = [e for e in env.get("PYTHONPATH", "").split(os.pathsep) if e and e != BOOTSTRAP_DIRECTORY]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIRECTORY, *entries])
    if args.policy:
        env[ENV_POLICY] = args.policy
    if args.unknown:
        env[ENV_UNKNOWN] = args.unknown
    if args.offline:
        env[OFFLINE_VARIABLES[0]] = "1"
    lock = getattr(args, "lock", None)
    if lock:
        env[ENV_LOCK] = os.path.abspath(lock)
    env.update(extra)
    return env


def find_program(command: list[str], env: Mapping[str, str], name: str = "run") -> str:
    """The file that runs ``command[0]`` (searched on the command's ``PATH``); exit 2 if there is none."""
    program = shutil.which(command[0], path=env.get("PATH", os.defpath))
    if program is None:
        exists = os.sep in command[0] and os.path.exists(command[0])
        raise UsageError(
            f"modelguard {name}: cannot run {quote(command[0])}: "
            + ("the file is not executable" if exists else "no such command" + ("" if os.sep in command[0]
                                                                              else " on PATH")),
            path=command[0] if exists else None,
            remedy=f"chmod +x {quote(command[0])}, or start it with its interpreter (python {quote(command[0])})"
            if exists else "check the spelling, install the program, or give its full path",
        )
    return program


def run(args: argparse.Namespace) -> int:
    command = command_of(args)
    if args.lock and not os.path.isfile(args.lock):
        raise UsageError(f"modelguard run: lock file {args.lock} does not exist", path=args.lock,
                         remedy="create it with `modelguard lock add ORG/NAME` or `modelguard lock record -- CMD`, "
                                "or leave out --lock")
    env = guarded_environment(args)
    program = find_program(command, env)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(program, command, env)
    except OSError as exc:
        raise UsageError(f"modelguard run: cannot run {quote(command[0])}: {exc.strerror}", path=program,
                         remedy="check that the file is a program for this machine") from None
    return 2  # not reached: execve replaced this process
