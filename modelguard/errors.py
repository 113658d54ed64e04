"""One error hierarchy: every error knows what, where, expected, actual and the fix."""

from __future__ import annotations

# Kept off the import path: this module loads at program start with modelguard.auto, and the
# annotations (postponed) are never evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ModelGuardError(Exception):
    """Base of every error modelguard raises on purpose.

    ``message`` says what is wrong; ``path`` where; ``expected``/``actual`` the
    two values that disagree; ``remedy`` the command or change that fixes it.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: Any = None,
        expected: Any = None,
        actual: Any = None,
        remedy: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)
        self.expected = expected
        self.actual = actual
        self.remedy = remedy

    def __str__(self) -> str:
        lines = [self.message]
        if self.path is not None and self.path not in self.message:
            lines.append(f"  where:    {self.path}")
        if self.expected is not None:
            lines.append(f"  expected: {self.expected}")
        if self.actual is not None:
            lines.append(f"  actual:   {self.actual}")
        if self.remedy:
            lines.append(f"  fix:      {self.remedy}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "path": self.path,
            "expected": self.expected,
            "actual": self.actual,
            "remedy": self.remedy,
        }


class UsageError(ModelGuardError):
    """The command line or an API call was used wrongly (exit 2)."""


class ManifestError(ModelGuardError):
    """A manifest file cannot be read or breaks the schema (exit 2)."""


class ManifestNotFoundError(ManifestError):
    """No manifest is known for a model id (exit 2)."""


class UnsafePathError(ManifestError):
    """A manifest path could reach outside the model directory."""


class VerificationError(ModelGuardError):
    """Files did not verify against their manifest (exit 1).

    ``report`` is the :class:`modelguard.report.VerifyReport` behind the error.
    """

    exit_code = 1

    def __init__(self, message: str, *, report: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.report = report


class MissingHeadError(VerificationError):
    """A required model component (e.g. bge-m3's sparse or colbert head) is
    missing or broken, so loading would initialize it with random weights."""

    def __init__(self, message: str, *, component: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.component = component


class RandomInitError(ModelGuardError):
    """A model was built with weights that were not loaded from any file."""

    exit_code = 1

    def __init__(self, message: str, *, keys: Any = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.keys = tuple(keys)


class UnsafeFileError(VerificationError):
    """A file is unsafe to load (dangerous pickle, malformed safetensors header,
    a symlink out of the model directory, a device or FIFO)."""


class DownloadError(ModelGuardError):
    """A download failed or kept delivering bytes that do not verify (exit 1).

    ``result`` is the :class:`modelguard.hub.FetchResult` of the fetch that failed, when
    there was one (what was kept, downloaded or repaired before the failure).
    """

    exit_code = 1

    def __init__(self, message: str, *, result: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.result = result


class OfflineError(DownloadError):
    """A download was needed but the Hub is switched off (HF_HUB_OFFLINE=1)."""


class SignatureError(VerificationError):
    """A model signature does not verify: altered, made by another key, an untrusted
    certificate, or required and absent (exit 1)."""


class SignatureFormatError(ManifestError):
    """A signature file cannot be read as a model signature (exit 2)."""


class SigstoreUnavailableError(ModelGuardError):
    """Sigstore cannot be used from here: its trust root (fetched from its TUF repository) or,
    for signing, its certificate authority, log or identity provider cannot be reached (exit 2)."""
