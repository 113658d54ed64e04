"""What ``audit`` reports: one :class:`Finding` per thing found, grouped by section, in a
frozen :class:`AuditReport`, and the text the CLI prints for it.

A finding's ``severity`` is ``varies`` (outputs change between calls or loads), ``failed``
(a file or a setting is broken) or ``note`` (worth knowing, does not make outputs vary).
``AuditReport.ok`` is true when no finding is ``varies`` or ``failed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .version import __version__

VARIES = "varies"
FAILED = "failed"
NOTE = "note"
SEVERITIES = (VARIES, FAILED, NOTE)

HOW_TO_BE_DETERMINISTIC = (
    "transformers: model.generate(..., do_sample=False) or model.generation_config = "
    "GenerationConfig(do_sample=False) (greedy); num_beams=4 with do_sample=False is beam search, also repeatable",
    "keep sampling but repeat it: with modelguard.deterministic(seed=0): model.generate(...)",
    "vllm: SamplingParams(temperature=0) for greedy, or SamplingParams(seed=0, ...) to repeat a sampled answer",
    "check that the weights are the right ones first: modelguard probe DIR shows outputs that change with the seed",
)


@dataclass(frozen=True)
class Finding:
    """One thing the audit found. ``source`` is ``file`` or ``file:key``."""

    section: str
    code: str
    severity: str
    message: str
    source: str | None = None
    value: Any = None
    remedy: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"section": self.section, "code": self.code, "severity": self.severity, "message": self.message,
                "source": self.source, "value": self.value, "remedy": self.remedy}



@dataclass(frozen=True)
class AuditReport:
    """Everything the audit found, by section, plus the integrity report when a manifest applied."""

    target: str
    directory: str
    model: str | None
    revision: str | None
    findings: tuple[Finding, ...]
    files_read: tuple[str, ...]
    manifest_source: str | None = None
    integrity: Any = None  # a VerifyReport, or None when no manifest applied
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(f.severity in (VARIES, FAILED) for f in self.findings)

    @property
    def varies(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == VARIES)

    @property
    def failed(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == FAILED)

    @property
    def sampling_varies(self) -> bool:
        """True when a sampling setting (not a broken file) makes outputs vary."""
        return any(f.severity == VARIES and f.section == "sampling" for f in self.findings)

    def section(self, name: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.section == name)

    @property
    def sections(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.section for f in self.findings))

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def summary(self) -> str:
        if self.ok:
            checked = "integrity verified" if self.integrity is not None else "no manifest applied"
            return f"ok: nothing in the configuration makes outputs vary ({checked})"
        parts = []
        if self.varies:
            parts.append(f"{len(self.varies)} finding(s) make outputs vary ("
                         + ", ".join(dict.fromkeys(f.code for f in self.varies)) + ")")
        if self.failed:
            parts.append(f"{len(self.failed)} failure(s) ("
                         + ", ".join(dict.fromkeys(f.section for f in self.failed)) + ")")
        return "NOT ok: " + "; ".join(parts)

    def format(self) -> str:
        """The human-readable report (what ``modelguard audit`` prints)."""
        return format_audit(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modelguard": __version__,
            "ok": self.ok,
            "target": self.target,
            "directory": self.directory,
            "model": self.model,
            "revision": self.revision,
            "summary": self.summary(),
            "files_read": list(self.files_read),
            "sections": {s: [f.to_dict() for f in self.section(s)] for s in self.sections},
            "manifest": self.manifest_source,
            "integrity": None if self.integrity is None else self.integrity.to_dict(),
            "how_to_make_deterministic": list(HOW_TO_BE_DETERMINISTIC) if self.sampling_varies else [],
            "elapsed_s": round(self.elapsed_s, 4),
        }


def format_audit(report: AuditReport) -> str:
    """Human-readable audit: one block per section, then how to make it deterministic."""
    rev = f" @ {report.revision[:12]}" if report.revision else ""
    lines = [f"audit {report.model + rev + '  in ' if report.model else ''}{report.directory}"]
    if report.files_read:
        lines.append(f"  read: {', '.join(report.files_read)}")
    tags = {VARIES: "VARY", FAILED: "FAIL", NOTE: "note"}
    for section in report.sections:
        lines.append(f"{section}:")
        for f in report.section(section):
            src = f"{f.source}: " if f.source and not f.message.startswith(f.source) else ""
            lines.append(f"  {tags.get(f.severity, f.severity)}  {src}{f.message}")
            if f.remedy:
                lines.append(f"        fix: {f.remedy}")
    if report.sampling_varies:
        lines.append("to get deterministic output:")
        lines.extend(f"  - {h}" for h in HOW_TO_BE_DETERMINISTIC)
    lines.append(report.summary())
    return "\n".join(lines)

