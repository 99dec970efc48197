"""What every child of an llmfab resource has: names, labels, owner reference, the spec file, and
a pod spec running ``llmfab <stage> run --spec FILE`` against the artifact volume. Pure functions of
(resource, settings) returning plain dicts, as a manifest reads."""

from __future__ import annotations

import hashlib
from typing import Any

from llmfab.api.common import Resource
from llmfab.api.inference_service import InferenceService
from llmfab.operator.settings import OperatorSettings
from llmfab.stages import render_spec, stage_command
from llmfab.store import spec_hash
from llmfab.workload import SOURCE_DIR_ANNOTATION

Manifest = dict[str, Any]

ARTIFACTS = "/artifacts"
SPEC_DIR = "/etc/llmfab"
SPEC_FILE = f"{SPEC_DIR}/spec.yaml"
CONTAINER = "workload"
PART_OF = "llmfab"
MANAGED_BY = "llmfab-operator"
KIND_LABEL = "llmfab.dev/kind"
REVISION_LABEL = "llmfab.dev/revision"
STAGE_LABEL = "llmfab.dev/stage"
SPEC_HASH_ANNOTATION = "llmfab.dev/spec-hash"
GPU = "nvidia.com/gpu"


def child_name(res: Resource, *parts: str | int) -> str:
    """``<name>-<parts>``, at most 63 characters (a Job's name becomes a pod label); a long name is
    cut and suffixed with a hash so two resources never share a child."""
    suffix = "-".join(str(p) for p in parts)
    full = f"{res.name}-{suffix}" if suffix else res.name
    if len(full) <= 52:  # Indexed Job pods append -<index>-<5 chars>; keep hostnames under 63
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:6]
    return f"{full[: 52 - 7].rstrip('-')}-{digest}"


def generation(res: Resource) -> int:
    return res.metadata.generation or 1


def revision(res: Resource) -> str:
    """The output revision: a short hash of the spec fields that change the artifact. Children are
    named and labelled by it, so a change of what to build starts new Jobs, while a change that
    builds the same thing (``suspend``, pod placement, ``deletionPolicy``) keeps the Jobs it has:
    a suspended Job resumes as itself, as Kueue and Kubeflow Trainer expect."""
    return spec_hash(res)[:8]


def selector_labels(res: Resource, component: str) -> dict[str, str]:
    """The labels a Service or Deployment selects on: stable across generations."""
    return {
        "app.kubernetes.io/name": PART_OF,
        "app.kubernetes.io/instance": res.name,
        "app.kubernetes.io/component": component,
        KIND_LABEL: res.KIND.lower(),
    }


def labels(res: Resource, component: str, with_revision: bool = True) -> dict[str, str]:
    out = {
        **selector_labels(res, component),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    if with_revision:
        out[REVISION_LABEL] = revision(res)
    return out


def owner_reference(res: Resource) -> dict[str, Any]:
    """The resource owns its children: deleting it garbage-collects them."""
    if not res.metadata.uid:
        raise ValueError(f"{res.key}: metadata.uid is empty; children need the owner's uid")
    return {
        "apiVersion": res.api_version,
        "kind": res.KIND,
        "name": res.name,
        "uid": res.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(res: Resource, name: str, component: str, with_revision: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": res.metadata.namespace,
        "labels": labels(res, component, with_revision),
        "ownerReferences": [owner_reference(res)],
    }


def pod_resource(res: Resource) -> Resource:
    """The resource as its pods read it: relative paths resolve in the artifact volume, and a
    server binds all interfaces so that its Service reaches it."""
    copy = res.model_copy(deep=True)
    copy.metadata.annotations.setdefault(SOURCE_DIR_ANNOTATION, ARTIFACTS)
    copy.metadata.managed_fields = []
    if isinstance(copy, InferenceService):
        copy.spec.server.host = "0.0.0.0"
    return copy


def spec_config_map_name(res: Resource) -> str:
    return child_name(res, "spec", revision(res))


def build_spec_config_map(res: Resource) -> Manifest:
    """The one-resource YAML the workload reads, per revision: a retried pod of an older
    revision keeps reading its own spec."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(res, spec_config_map_name(res), "spec"),
        "data": {"spec.yaml": render_spec(pod_resource(res))},
    }


def queue_name(res: Resource) -> str | None:
    """``spec.scheduling.queueName``: the Kueue LocalQueue of the resource's pods (builders/kueue.py)."""
    scheduling = getattr(res.spec, "scheduling", None)  # type: ignore[attr-defined]
    return scheduling.queue_name if scheduling is not None else None


def gpus_per_pod(res: Resource, default: int) -> int:
    """``spec.pod.resources`` decides when it names ``nvidia.com/gpu`` (``"0"``: a CPU pod); else
    ``default`` (processes per node, or tensor-parallel size)."""
    r = res.spec.pod.resources  # type: ignore[attr-defined]
    return r.gpus() if GPU in r.limits or GPU in r.requests else default


def container_resources(res: Resource, gpus: int, default_requests: dict[str, str] | None = None) -> dict[str, Any]:
    """``spec.pod.resources`` with the GPUs of the stage. ``default_requests`` (for a queued
    resource: Kueue admits by requests, and reads a limit as the request) fills each resource the
    spec neither requests nor limits."""
    r = res.spec.pod.resources  # type: ignore[attr-defined]
    requests = {k: v for k, v in r.requests.items() if k != GPU}
    limits = {k: v for k, v in r.limits.items() if k != GPU}
    requests |= {k: v for k, v in (default_requests or {}).items() if k not in requests and k not in limits}
    if gpus:  # an extended resource: requests must equal limits
        requests[GPU] = limits[GPU] = str(gpus)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def workload_env(res: Resource, status: str = "kubernetes") -> list[dict[str, Any]]:
    """The operator's variables first, then the user's (validation forbids overlapping names)."""
    env: list[dict[str, Any]] = [
        {"name": "LLMFAB_HOME", "value": ARTIFACTS},
        {"name": "LLMFAB_STATUS", "value": status},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    env += [{"name": e.name, "value": e.value} for e in res.spec.pod.env]  # type: ignore[attr-defined]
    return env


def pod_spec(
    res: Resource,
    settings: OperatorSettings,
    stage: str,
    image: str,
    gpus: int,
    extra_env: list[dict[str, Any]] | None = None,
    status: str = "kubernetes",
    container_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A pod running ``python -m llmfab <stage> run --spec /etc/llmfab/spec.yaml``."""
    pod = res.spec.pod  # type: ignore[attr-defined]
    storage = res.spec.storage  # type: ignore[attr-defined]
    mount: dict[str, Any] = {"name": "artifacts", "mountPath": ARTIFACTS}
    if storage.sub_path:
        mount["subPath"] = storage.sub_path
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pod.image or image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": stage_command(stage, SPEC_FILE),
        "env": [*workload_env(res, status), *(extra_env or [])],
        "resources": container_resources(res, gpus, settings.kueue_default_requests if queue_name(res) else None),
        "volumeMounts": [
            mount,
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
        },
        **(container_extra or {}),
    }
    spec: dict[str, Any] = {
        "serviceAccountName": settings.workload_service_account,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "artifacts", "persistentVolumeClaim": {"claimName": storage.claim_name or settings.artifacts_claim}},
            {"name": "spec", "configMap": {"name": spec_config_map_name(res)}},
            # NCCL and data loaders share memory through /dev/shm; the container default is 64 MiB.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
        ],
    }
    runtime_class = pod.runtime_class_name or (settings.runtime_class_name if gpus else None)
    optional = {
        "nodeSelector": dict(pod.node_selector) or None,
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in pod.tolerations] or None,
        "priorityClassName": pod.priority_class_name,
        "runtimeClassName": runtime_class,
    }
    spec.update({k: v for k, v in optional.items() if v})
    return spec
