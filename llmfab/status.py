"""StatusReporter: how a workload tells the world what it is doing, wherever it runs.

One interface, two backends (ARCHITECTURE.md §1): locally a status file beside the artifacts
(what ``llmfab get``/``describe`` read); in a pod a merge patch of the resource's ``/status``
subresource, with a ServiceAccount allowed only that. Workloads never know which one they have.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from llmfab import __version__
from llmfab.api.common import Condition, ConditionStatus, Phase, Resource, utc_now
from llmfab.store import artifact_root, write_json_atomic


def status_path(kind_dir: str, name: str, root: Path | None = None) -> Path:
    return (root or artifact_root()) / kind_dir / f"{name}.status.json"


def read_status(kind_dir: str, name: str, root: Path | None = None) -> dict[str, Any]:
    """A resource's status as the workload last wrote it locally; ``{}`` before the first write.

    The status file is replaced atomically, so a reader sees a whole file or none.
    """
    try:
        data = json.loads(status_path(kind_dir, name, root).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def accepts_requests(status: dict[str, Any]) -> bool:
    """Whether an InferenceService answers requests: a ready replica, or scaled to zero with its
    wake proxy holding the port (``status.scale`` and ``status.url``: the next request starts vLLM)."""
    ready = status.get("readyReplicas")
    return (isinstance(ready, int) and ready >= 1) or (isinstance(status.get("scale"), dict) and bool(status.get("url")))


def asleep(status: dict[str, Any]) -> bool:
    """Whether a service scaled to zero has no ready server now (Idle or Waking)."""
    scale = status.get("scale")
    return isinstance(scale, dict) and scale.get("state") in ("Idle", "Waking")


def status_names(kind_dir: str, root: Path | None = None) -> list[str]:
    """The names of a kind's resources that have a status file, sorted."""
    folder = (root or artifact_root()) / kind_dir
    return sorted(p.name[: -len(".status.json")] for p in folder.glob("*.status.json")) if folder.is_dir() else []


def events_path(kind_dir: str, name: str, root: Path | None = None) -> Path:
    return (root or artifact_root()) / kind_dir / f"{name}.events.jsonl"


def log_path(kind_dir: str, name: str, root: Path | None = None) -> Path:
    return (root or artifact_root()) / kind_dir / f"{name}.log"


CONDITION_TYPES = ("Ready", "Progressing", "Complete", "Failed", "Suspended")


def conditions_for(
    phase: Phase, reason: str, message: str, generation: int | None, ready: bool | None = None
) -> list[dict[str, Any]]:
    """The conditions that follow from a phase, as Kubeflow Trainer and KServe users read them.

    ``Ready``: the output can be used (a finished artifact; for an InferenceService, a serving
    replica: pass ``ready``). ``Progressing``: pending, queued (Kueue) or running. ``Complete``/
    ``Failed``: the workload ended. ``Suspended``: its pods are stopped and it waits, held by
    ``spec.suspend`` (reason ``Suspended``) or preempted by Kueue (reason ``Preempted``), as the
    Job's own ``Suspended`` condition is. Each carries the reason and message.
    """
    on = {
        "Ready": phase == Phase.SUCCEEDED if ready is None else ready,
        "Progressing": phase in (Phase.PENDING, Phase.QUEUED, Phase.RUNNING),
        "Complete": phase == Phase.SUCCEEDED,
        "Failed": phase == Phase.FAILED,
        "Suspended": phase in (Phase.SUSPENDED, Phase.PREEMPTED),
    }
    now = utc_now()
    return [
        Condition(
            type=ctype,
            status=ConditionStatus.TRUE if on[ctype] else ConditionStatus.FALSE,
            reason=reason,
            message=message,
            last_transition_time=now,
            observed_generation=generation,
        ).model_dump(mode="json", by_alias=True, exclude_none=True)
        for ctype in CONDITION_TYPES
    ]


class StatusReporter(ABC):
    """Report phase, progress fields and events of one resource."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    @abstractmethod
    def patch(self, fields: dict[str, Any]) -> None:
        """Merge camelCase ``fields`` into ``.status``."""

    @abstractmethod
    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        """Record a Kubernetes-style event on the resource."""

    def current(self) -> dict[str, Any]:
        """The status as it is now (e.g. ``usage``, which the runner or operator writes), or ``{}``
        where this backend cannot read it."""
        return {}

    def status_of(self, kind: str, name: str) -> dict[str, Any]:
        """The status of another resource of the same namespace (a model card's chain), or ``{}``."""
        return {}

    def progress(self, **fields: Any) -> None:
        """Merge progress numbers (camelCase keys, e.g. ``step=10, tokensPerSecond=1e3``)."""
        self.patch(fields)

    def phase(self, phase: Phase, reason: str, message: str = "", **fields: Any) -> None:
        """Move to ``phase``; sets conditions, times and an event."""
        body: dict[str, Any] = {
            "phase": str(phase),
            "message": message,
            "observedGeneration": self.resource.metadata.generation,
            "conditions": conditions_for(phase, reason, message, self.resource.metadata.generation),
            **fields,
        }
        if phase == Phase.RUNNING:
            body["startTime"] = utc_now()
            body["completionTime"] = None
        if phase in (Phase.SUCCEEDED, Phase.FAILED):
            body["completionTime"] = utc_now()
        self.patch(body)
        self.event(reason, message or str(phase), "Warning" if phase == Phase.FAILED else "Normal")


class FileStatusReporter(StatusReporter):
    """Status in ``<root>/<kind dir>/<name>.status.json``; events appended to ``.events.jsonl``."""

    def __init__(self, resource: Resource, root: Path | None = None) -> None:
        super().__init__(resource)
        self.root = root
        self.path = status_path(resource.ARTIFACT_DIR, resource.name, root)
        self.events = events_path(resource.ARTIFACT_DIR, resource.name, root)

    def read(self) -> dict[str, Any]:
        return read_status(self.resource.ARTIFACT_DIR, self.resource.name, self.root)

    def current(self) -> dict[str, Any]:
        return self.read()

    def status_of(self, kind: str, name: str) -> dict[str, Any]:
        from llmfab.api.loading import KINDS

        cls = KINDS.get(kind)
        return read_status(cls.ARTIFACT_DIR, name, self.root) if cls is not None else {}

    def patch(self, fields: dict[str, Any]) -> None:
        status = self.read()
        for key, value in fields.items():
            if value is None and key != "completionTime":
                status.pop(key, None)
            else:
                status[key] = value
        write_json_atomic(self.path, status)

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        self.events.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": utc_now(), "type": type_, "reason": reason, "message": message})
        with self.events.open("a") as f:
            f.write(line + "\n")


class KubernetesStatusReporter(StatusReporter):
    """Merge-patch ``/status`` of the custom resource and post core/v1 Events, from inside a pod.

    Uses the in-cluster ServiceAccount; the operator grants it ``patch`` on the ``/status``
    subresource of its own kinds and ``create`` on events, nothing else.
    """

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource)
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            # $KUBECONFIG as it is now: the client library reads it only once, at its import.
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        api = client.ApiClient()
        api.user_agent = f"llmfab-workload/{__version__} ({resource.STAGE})"
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._client = client

    def patch(self, fields: dict[str, Any]) -> None:
        group, version = self.resource.api_version.split("/")
        self._custom.patch_namespaced_custom_object_status(
            group,
            version,
            self.resource.metadata.namespace,
            self.resource.PLURAL,
            self.resource.name,
            {"status": fields},
        )

    def current(self) -> dict[str, Any]:
        """``get`` on the ``/status`` subresource (the workload's role allows it); ``{}`` if refused."""
        return self.status_of(self.resource.KIND, self.resource.name)

    def status_of(self, kind: str, name: str) -> dict[str, Any]:
        from llmfab.api.loading import KINDS

        cls = KINDS.get(kind)
        if cls is None:
            return {}
        group, version = self.resource.api_version.split("/")
        try:
            obj = self._custom.get_namespaced_custom_object_status(
                group, version, self.resource.metadata.namespace, cls.PLURAL, name)
        except self._client.exceptions.ApiException:
            return {}
        status = obj.get("status") if isinstance(obj, dict) else None
        return status if isinstance(status, dict) else {}

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        meta = self.resource.metadata
        now = utc_now()
        body = self._client.CoreV1Event(
            metadata=self._client.V1ObjectMeta(generate_name=f"{meta.name}.", namespace=meta.namespace),
            involved_object=self._client.V1ObjectReference(
                api_version=self.resource.api_version,
                kind=self.resource.KIND,
                name=meta.name,
                namespace=meta.namespace,
                uid=meta.uid,
            ),
            reason=reason,
            message=message[:1024],
            type=type_,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=self._client.V1EventSource(component=f"llmfab-{self.resource.STAGE}"),
        )
        self._core.create_namespaced_event(meta.namespace, body)


class NullStatusReporter(StatusReporter):
    """For torchrun ranks other than 0: one writer per resource, so ranks never race."""

    def patch(self, fields: dict[str, Any]) -> None:
        return None

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        return None


def reporter_for(resource: Resource) -> StatusReporter:
    """``LLMFAB_STATUS=kubernetes`` (set by the operator in pods) or the file backend.

    Under torchrun only global rank 0 reports.
    """
    if os.environ.get("RANK", "0") != "0":
        return NullStatusReporter(resource)
    if os.environ.get("LLMFAB_STATUS", "file") == "kubernetes":
        return KubernetesStatusReporter(resource)
    return FileStatusReporter(resource)
