"""Verify while the library loads: the safetensors weights of a guarded load are hashed on a
background thread while the library builds the model, and the verdict is joined before the
model is returned.

What waits and what overlaps. Before anything is built, every file is checked for what a
stat tells (present, a regular file inside the model folder, the manifest's size: a missing
file, a Git LFS pointer stub or a truncated download is refused as before), and every file
other than safetensors weights is verified in full: configs, tokenizers, remote code and
pickle-based weights (reading those can run code) are never read unverified. Safetensors
files are data a library parses without running anything from them; their digests are
computed while the library reads them.

The verdict. :func:`join` runs when the outermost guarded load ends
(:func:`modelguard.preload.verified_scope`): a file that failed makes the load raise the
verification error and the half-built model is dropped; when the library itself failed
first (on the bad bytes, say), the verification error is raised with the library's error
chained. Under the ``warn`` policy the failure is a warning. Under ``repair`` nothing
overlaps: a broken file must be replaced before the library reads it.

``MODELGUARD_VERIFY_FIRST=1`` turns the overlap off: every file is verified before the
library builds anything (a same-size corruption is then refused before construction, at the
cost of hashing before loading on a cold start).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable

from . import engine
from .fs import containing_roots, within
from .manifest import Manifest

DEFERRED_SUFFIXES = (".safetensors",)
ENV_VERIFY_FIRST = "MODELGUARD_VERIFY_FIRST"


def enabled() -> bool:
    """False when ``$MODELGUARD_VERIFY_FIRST`` asks for every file to be verified before loading."""
    return os.environ.get(ENV_VERIFY_FIRST, "").strip().lower() not in ("1", "true", "yes", "on")


@dataclasses.dataclass
class Pending:
    """One background verification: its thread, and the report (or error) it left."""

    manifest: Manifest
    directory: Path
    on_verdict: Callable[[Any], None]  # called with a failed report (raises or warns)
    on_success: Callable[[], None] | None = None  # called when every file verified
    thread: threading.Thread | None = None
    report: Any = None
    error: BaseException | None = None

    def run(self, components: list[str] | None, rehash: bool) -> None:
        try:
            self.report = engine.verify_directory(self.manifest, self.directory, components=components, rehash=rehash)
        except BaseException as exc:  # raised where the verdict is joined
            self.error = exc

    def wait(self, load_succeeded: bool = True) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.report is not None and not self.report.ok:
            report, self.report = self.report, None
            self.on_verdict(report)
        elif self.report is not None:
            self.report = None
            if self.on_success is not None and load_succeeded:
                self.on_success()


def split(manifest: Manifest, directory: Path, components: list[str] | None) -> tuple[Manifest, Manifest] | None:
    """``(verified now, hashed while loading)``, or None when nothing can overlap. A file is
    hashed while loading when it is safetensors weights whose stat is what the manifest
    says (a regular file, within the model folder, of the manifest's size); anything else
    is left to the check before loading, which diagnoses it."""
    roots = containing_roots(Path(directory))
    later = set()
    for entry in manifest.files:
        if ((components is not None and entry.component not in components) or entry.size is None
                or not entry.path.endswith(DEFERRED_SUFFIXES)):
            continue
        path = os.path.join(directory, entry.path)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == entry.size and within(Path(os.path.realpath(path)), roots):
            later.add(entry.path)
    if not later:
        return None
    return (dataclasses.replace(manifest, files=tuple(e for e in manifest.files if e.path not in later)),
            dataclasses.replace(manifest, files=tuple(e for e in manifest.files if e.path in later)))


def start(manifest: Manifest, directory: Path, components: list[str] | None, *, rehash: bool,
          on_verdict: Callable[[Any], None]) -> Pending:
    """Verify ``manifest``'s files in ``directory`` on a background thread."""
    pending = Pending(manifest, Path(directory), on_verdict)
    pending.thread = threading.Thread(target=pending.run, args=(components, rehash), name="modelguard-overlap",
                                      daemon=True)
    pending.thread.start()
    return pending


def join(pendings: list[Pending], raised: BaseException | None) -> None:
    """Wait for every background verification; the first failure is raised (chained to
    ``raised``, what the load itself raised, if anything)."""
    first: BaseException | None = None
    for pending in pendings:
        try:
            pending.wait(load_succeeded=raised is None)
        except BaseException as exc:
            first = first or exc
    pendings.clear()
    if first is not None:
        if raised is not None and first is not raised:
            raise first from raised
        raise first
