"""The modelguard version (one place: the package, reports and the CLI read it here)."""

__version__ = "0.1.0"
