"""What the operator refuses to build on a cluster, as a pure function of (resource, settings).

Four kinds of refusal, each a ``Failed`` status with a reason and a message naming the field, the
value and the fix (``reconcile.decide`` checks them before anything else, so no child is made,
and a resource refused after its children exist has its running ones deleted):

- ``InsecureSpec``: the spec's cluster-only rules (:func:`llmfab.api.common.cluster_only_problems`),
  e.g. ``spec.feedback.enabled`` without ``spec.feedback.tokenSecret`` or ``allowAnonymous: true``.
  They are CEL in the CRD as well, so ``kubectl apply`` refuses them at once; they are not pydantic
  rules because the same spec is fine for ``llmfab up``, whose app listens on loopback. The
  operator checks them again for a resource stored before the CRD carried them.
- ``PodPolicy``: a pod setting outside the chart's ``podPolicy`` allow-lists (image, runtime class,
  priority class, claim, toleration keys). Those lists belong to one installation, so a CRD
  cannot carry them; the default (``["*"]``) allows everything, as before they existed.
- ``SharedFeedbackStore``: the feedback store is SQLite in WAL mode, whose shared-memory index
  only works for processes on one host. The serving Deployment is its one writer (``replicas <=
  1``, ``Recreate``), but on a ReadWriteMany volume a reader such as a RewardModel Job may run on
  another node; the operator refuses feedback there. It knows the access mode from the chart
  (``artifacts.accessMode``); a claim a resource names itself (``spec.storage.claimName``) is
  trusted to be the same kind of volume, and ``podPolicy.allowedClaims`` lets an admin restrict
  which claims those may be.
- ``Unqueueable``: ``spec.scheduling.queueName`` on a Dataset that runs as a RayJob on an existing
  RayCluster, which Kueue documents it cannot manage (kueue.sigs.k8s.io/docs/tasks/run/rayjobs,
  "Limitations"): the Dataset would wait in the queue forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from llmfab.api.common import Resource, cluster_only_problems
from llmfab.api.dataset import Dataset
from llmfab.api.inference_service import InferenceService
from llmfab.api.pod import PodSettings, Storage
from llmfab.operator.builders.common import queue_name
from llmfab.operator.builders.dataset import uses_ray_job
from llmfab.operator.settings import OperatorSettings


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def refusals(res: Resource, settings: OperatorSettings) -> list[Refusal]:
    spec = getattr(res, "spec")  # noqa: B009 - every kind has a spec
    out = [Refusal("InsecureSpec", p) for p in cluster_only_problems(spec)]
    out += [Refusal("PodPolicy", p) for p in pod_policy_problems(res, settings)]
    if isinstance(res, Dataset) and uses_ray_job(res) and queue_name(res):
        out.append(Refusal("Unqueueable", (
            f"spec.scheduling.queueName: Kueue cannot queue a RayJob on an existing RayCluster "
            f"(spec.engine.ray.cluster: {res.spec.engine.ray.cluster}); queue the RayCluster itself with "
            "Kueue, or remove spec.scheduling"
        )))
    if isinstance(res, InferenceService) and res.spec.feedback.enabled and _on_shared_volume(res, settings):
        out.append(Refusal("SharedFeedbackStore", (
            "spec.feedback.enabled: the feedback store is SQLite in WAL mode, which pods on two nodes must "
            "not open, and this cluster's artifact volume is ReadWriteMany (chart value artifacts.accessMode); "
            "serve feedback from a ReadWriteOnce claim (spec.storage.claimName) or set spec.feedback.enabled: false"
        )))
    return out


def _on_shared_volume(res: InferenceService, settings: OperatorSettings) -> bool:
    claim = res.spec.storage.claim_name or settings.artifacts_claim
    return claim == settings.artifacts_claim and settings.artifacts_access_mode == "ReadWriteMany"


def _allowed(value: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


def _shown(patterns: list[str]) -> str:
    return ", ".join(patterns) if patterns else "none"


def pod_policy_problems(res: Resource, settings: OperatorSettings) -> list[str]:
    """Each pod setting of ``res`` outside the chart's ``podPolicy``; the chart's own values pass."""
    pod: PodSettings | None = getattr(res.spec, "pod", None)  # type: ignore[attr-defined]
    storage: Storage | None = getattr(res.spec, "storage", None)  # type: ignore[attr-defined]
    problems: list[str] = []

    def check(field: str, value: str | None, own: set[str | None], patterns: list[str], value_name: str) -> None:
        if value is not None and value not in own and not _allowed(value, patterns):
            problems.append(f"{field}: {value!r} is not allowed on this cluster (podPolicy.{value_name}: "
                            f"{_shown(patterns)}); use an allowed value or leave it out for the chart's default")

    if pod is not None:
        check("spec.pod.image", pod.image, {settings.trainer_image, settings.serving_image},
              settings.allowed_images, "allowedImages")
        check("spec.pod.runtimeClassName", pod.runtime_class_name, {settings.runtime_class_name},
              settings.allowed_runtime_classes, "allowedRuntimeClasses")
        check("spec.pod.priorityClassName", pod.priority_class_name, set(), settings.allowed_priority_classes,
              "allowedPriorityClasses")
        for i, t in enumerate(pod.tolerations):
            key = t.key or ""
            if not _allowed(key, settings.allowed_toleration_keys):
                shown = repr(key) if key else "no key (tolerates every taint)"
                problems.append(f"spec.pod.tolerations[{i}].key: {shown} is not allowed on this cluster "
                                f"(podPolicy.allowedTolerationKeys: {_shown(settings.allowed_toleration_keys)}); "
                                "remove the toleration or ask the cluster's admin")
    if storage is not None:
        check("spec.storage.claimName", storage.claim_name, {settings.artifacts_claim}, settings.allowed_claims,
              "allowedClaims")
    return problems
