"""Command line: ``modelguard verify | build | fetch | scan | audit | probe | sign | lock | sync | run``.

Exit codes: 0 verified, 1 verification failed, 2 bad invocation or bad manifest.
A user mistake never ends in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import ModelGuardError, UsageError
from .output import emit_json, report_error
from .version import __version__

__all__ = ["COMMANDS", "build_parser", "emit_json", "entry_point", "main", "report_error"]

# Each command lives in modelguard/_commands/<name>.py with add_parser(subparsers) and run(args) -> int.
COMMANDS = ("verify", "build", "fetch", "scan", "audit", "probe", "sign", "lock", "sync", "run")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit code is 2 too; keep its usage line
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"modelguard: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of ``command`` alone: a command runs having imported only
    its own module (``modelguard run`` execs the program at once, and ``verify`` needs no Hub or
    signing code)."""
    parser = _Parser(
        prog="modelguard",
        description="Make model loading safe and repeatable: verify model files against pinned manifests.",
    )
    parser.add_argument("--version", action="version", version=f"modelguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in (command,) if command in COMMANDS else COMMANDS:
        module = importlib.import_module(f"modelguard._commands.{name}")
        module.add_parser(sub)
    return parser


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """Exit 2 naming the first unknown option, with the closest option of its command (argparse
    in Python < 3.14 suggests none); other leftover arguments get argparse's own message."""
    import difflib

    sub = None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, "command", None):
            sub = action.choices.get(args.command)
    target = sub or parser
    unknown = [e.split("=", 1)[0] for e in extras if e.startswith("-") and e != "-" and not e[1:2].isdigit()]
    if not unknown:
        target.error(f"unrecognized arguments: {' '.join(extras)}")
    word = unknown[0]
    options = sorted({o for a in target._actions for o in a.option_strings})  # options go after their command
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.75)
    hint = f"did you mean '{match[0]}'?" if match else \
        f"{target.prog} takes: " + ", ".join(o for o in options if o.startswith("--"))
    target.error(f"unknown option '{word}'; {hint}")


def tolerate_any_output_encoding() -> None:
    """Print what the terminal cannot encode as backslash escapes instead of failing.

    A path with characters the output encoding lacks (``PYTHONIOENCODING=ascii``, a C
    locale) or with bytes that are not UTF-8 (kept by Python as lone surrogates) would
    otherwise end a run in a UnicodeEncodeError after the work was done.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:
            continue
        try:
            reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass


def main(argv: Sequence[str] | None = None) -> int:
    tolerate_any_output_encoding()
    given = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(given[0] if given else None)
    args, extras = parser.parse_known_args(given)
    if extras:
        _refuse_unknown(parser, args, extras)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.run(args))
    except ModelGuardError as exc:
        return report_error(exc, as_json)
    except KeyboardInterrupt:
        sys.stderr.write("modelguard: interrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:
        # A path the user gave cannot be read or written: say which and why, no traceback.
        where = exc.filename if exc.filename is not None else None
        problem = exc.strerror or str(exc)
        return report_error(
            UsageError(f"{where}: {problem}" if where else problem, path=where,
                       remedy="check the path and its permissions"),
            as_json,
        )


def entry_point() -> None:
    sys.exit(main())
