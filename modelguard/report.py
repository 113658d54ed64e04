"""The result of a verification: one frozen :class:`FileResult` per manifest file, a
:class:`VerifyReport` for the whole directory, and the text the CLI prints for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import VerificationError
from .version import __version__

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"


@dataclass(frozen=True)
class FileResult:
    """The outcome for one manifest file.

    ``status`` is ``ok``, ``failed`` or ``skipped`` (optional component absent);
    ``diagnosis`` a stable code (``ok``, ``missing``, ``empty``, ``truncated``,
    ``oversized``, ``lfs_pointer``, ``error_page``, ``zero_filled``,
    ``digest_mismatch``, ``unreadable``, ``not_a_file``, ``symlink_escape``,
    ``changed_while_reading``, ``optional_missing``).
    """

    path: str
    component: str
    required: bool
    status: str
    diagnosis: str
    message: str
    expected: Mapping[str, Any] = field(default_factory=dict)
    actual: Mapping[str, Any] = field(default_factory=dict)
    remedy: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "component": self.component,
            "required": self.required,
            "status": self.status,
            "diagnosis": self.diagnosis,
            "message": self.message,
            "expected": dict(self.expected),
            "actual": dict(self.actual),
            "remedy": self.remedy,
            "cached": self.cached,
        }



def new_file_result(path: str, component: str, required: bool, status: str, diagnosis: str, message: str,
                    expected: Mapping[str, Any], actual: Mapping[str, Any], remedy: str | None,
                    cached: bool) -> FileResult:
    """``FileResult(...)`` at a fraction of the cost: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``, and a warm verify builds one result per file."""
    result = object.__new__(FileResult)
    result.__dict__.update(path=path, component=component, required=required, status=status,
                           diagnosis=diagnosis, message=message, expected=expected, actual=actual,
                           remedy=remedy, cached=cached)
    return result


@dataclass(frozen=True)
class VerifyReport:
    """All file results of one verification, plus files the manifest does not list."""

    model: str
    revision: str | None
    directory: str
    manifest_source: str | None
    files: tuple[FileResult, ...]
    extra_files: tuple[str, ...] = ()
    strict_extra: bool = False
    elapsed_s: float = 0.0
    expectations: str = "manifest"

    @property
    def completeness_checked(self) -> bool:
        """False when the expectations could not say which files should exist (blob addresses)."""
        return self.expectations != "blob-addresses"

    @property
    def expectations_phrase(self) -> str:
        if self.expectations == "hub-listing":
            rev = f" of commit {self.revision[:12]}" if self.revision else ""
            return f"the Hub's listing{rev} saved at download"
        if self.expectations == "hub-api":
            rev = f" of commit {self.revision[:12]}" if self.revision else ""
            return f"the Hub's listing{rev} (fetched now, not saved)"
        if self.expectations == "blob-addresses":
            return "their blobs' content addresses (completeness not checked)"
        return "the manifest"

    @property
    def unlisted_phrase(self) -> str:
        if self.expectations == "blob-addresses":
            return "with no content address (plain files, not links to blobs)"
        return f"not in {self.expectations_phrase}"

    @property
    def failures(self) -> tuple[FileResult, ...]:
        return tuple(r for r in self.files if r.status == FAILED)

    @property
    def ok(self) -> bool:
        return not self.failures and not (self.strict_extra and self.extra_files)

    @property
    def failed_components(self) -> tuple[str, ...]:
        return tuple(sorted({r.component for r in self.failures}))

    @property
    def missing_optional_components(self) -> tuple[str, ...]:
        return tuple(sorted({r.component for r in self.files if r.status == SKIPPED}))

    def result(self, path: str) -> FileResult | None:
        for r in self.files:
            if r.path == path:
                return r
        return None

    def summary(self) -> str:
        n_ok = sum(r.status == OK for r in self.files)
        n_skipped = sum(r.status == SKIPPED for r in self.files)
        if self.ok:
            text = f"verified: {n_ok} file(s) of {self.model} match {self.expectations_phrase}"
            if n_skipped:
                text += f"; optional component(s) not present: {', '.join(self.missing_optional_components)}"
            return text
        parts = []
        if self.failures:
            parts.append(
                f"{len(self.failures)} of {len(self.files)} file(s) failed"
                f" (component(s): {', '.join(self.failed_components)})"
            )
        if self.strict_extra and self.extra_files:
            parts.append(f"{len(self.extra_files)} file(s) {self.unlisted_phrase}")
        return f"FAILED: {self.model}: " + "; ".join(parts)

    def raise_for_errors(self) -> None:
        """Raise :class:`VerificationError` describing every failure, if any."""
        if self.ok:
            return
        lines = [self.summary()]
        for r in self.failures:
            lines.append(f"  {r.path} [{r.component}]: {r.message}")
        for path in self.extra_files if self.strict_extra else ():
            lines.append(f"  {path}: {self.unlisted_phrase.replace('not in', 'not listed in')}")
        remedies = list(dict.fromkeys(r.remedy for r in self.failures if r.remedy))
        raise VerificationError(
            "\n".join(lines),
            report=self,
            path=self.directory,
            remedy="; ".join(remedies) if remedies else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "modelguard": __version__,
            "ok": self.ok,
            "model": self.model,
            "revision": self.revision,
            "directory": self.directory,
            "manifest": self.manifest_source,
            "summary": {
                "files": len(self.files),
                "ok": sum(r.status == OK for r in self.files),
                "failed": len(self.failures),
                "skipped": sum(r.status == SKIPPED for r in self.files),
                "extra": len(self.extra_files),
            },
            "failed_components": list(self.failed_components),
            "missing_optional_components": list(self.missing_optional_components),
            "files": [r.to_dict() for r in self.files],
            "extra_files": list(self.extra_files),
            "strict_extra": self.strict_extra,
            "elapsed_s": round(self.elapsed_s, 4),
            "expectations": {"origin": self.expectations, "source": self.manifest_source,
                             "completeness_checked": self.completeness_checked},
        }



def format_report(report: VerifyReport, *, quiet: bool = False) -> str:
    """Human-readable report: one line per file, details under failures, a summary."""
    lines: list[str] = []
    if not quiet:
        rev = f" @ {report.revision[:12]}" if report.revision else ""
        lines.append(f"{report.model}{rev}  in {report.directory}")
        if report.expectations != "manifest":
            lines.append(f"  expectations: {report.manifest_source}")
        width = max((len(r.path) for r in report.files), default=10)
        cwidth = max((len(r.component) for r in report.files), default=6)
        for r in report.files:
            tag = {"ok": "ok  ", "failed": "FAIL", "skipped": "skip"}[r.status]
            lines.append(f"  {tag}  {r.component:<{cwidth}}  {r.path:<{width}}  {r.message}")
            if r.status == FAILED:
                exp = ", ".join(f"{k} {v}" for k, v in r.expected.items())
                act = ", ".join(f"{k} {v}" for k, v in r.actual.items())
                if exp:
                    lines.append(f"        expected: {exp}")
                if act:
                    lines.append(f"        actual:   {act}")
                if r.remedy:
                    lines.append(f"        fix:      {r.remedy}")
        if report.extra_files:
            label = "FAIL" if report.strict_extra else "note"
            unchecked = "" if report.strict_extra else " (not checked)"
            lines.append(f"  {label}  {len(report.extra_files)} file(s) {report.unlisted_phrase}{unchecked}: "
                         + ", ".join(report.extra_files[:20])
                         + (" ..." if len(report.extra_files) > 20 else ""))
    elif not report.ok:
        for r in report.failures:
            lines.append(f"FAIL {r.path} [{r.component}]: {r.message}")
            if r.remedy:
                lines.append(f"     fix: {r.remedy}")
    lines.append(report.summary())
    return "\n".join(lines)
