"""The errors a workload raises for the user to fix. Imports nothing of llmfab, so any module may
raise them without pulling in the entrypoint (``llmfab.workload``) or the API models."""

from __future__ import annotations


class WorkloadError(Exception):
    """A failure the user can fix; the message names the field and the fix."""

    reason = "Failed"


class DependencyNotReady(WorkloadError):
    """A referenced resource has no complete artifact yet."""

    reason = "WaitingForDependency"


class StageNotSupported(WorkloadError):
    """The spec asks for something this llmfab cannot do yet; refused rather than ignored."""

    reason = "NotSupported"
