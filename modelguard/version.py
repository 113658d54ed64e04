"""The modelguard version (one place: the package, reports and the CLI read it here), and how
modelguard reads other libraries' version strings."""

from __future__ import annotations

import re

__version__ = "0.1.0"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"4.40.0.dev0"`` -> ``(4, 40, 0)``; the leading numeric release part only."""
    parts: list[int] = []
    for piece in version.split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)
