"""Stage Jobs: every stage but ``serve`` runs to completion in a ``batch/v1`` Job.

One shape for all: an Indexed Job (``completions = parallelism = pods``) so that a TrainingRun's
pods get stable hostnames and ranks, and so that ``backoffLimitPerIndex`` bounds the retries of
each pod (a retried pod resumes from the last checkpoint). An invalid spec (exit 2) fails the Job
at once through ``podFailurePolicy``; a pod disrupted by preemption, eviction or a drained node
(``DisruptionTarget``) does not count as a failure, nor does one the workload ended on SIGTERM
(exit 143): a pod deleted for ``suspend`` (a Kueue preemption) ends Failed without
``DisruptionTarget``, and the Job controller would count it against ``spec.pod.retries``. With
``spec.scheduling.queueName`` the Job is created suspended and labelled for Kueue
(builders/kueue.py). Job names carry the resource's output revision
(a hash of the spec fields that change the artifact), so such a change starts a new Job instead of
mutating a running one.
"""

from __future__ import annotations

import signal
from typing import Any

from llmfab.api.common import Resource
from llmfab.api.reward_model import RewardModel
from llmfab.api.training_run import TrainingRun
from llmfab.operator.builders.common import (
    CONTAINER,
    STAGE_LABEL,
    Manifest,
    child_name,
    gpus_per_pod,
    labels,
    metadata,
    pod_spec,
    queue_name,
    revision,
    selector_labels,
)
from llmfab.operator.builders.kueue import with_kueue_labels
from llmfab.operator.settings import OperatorSettings
from llmfab.signals import exit_code
from llmfab.stages import STAGES

# Exit codes of `llmfab <stage> run` (llmfab/workload.py): 2 = invalid spec, never retried.
EXIT_INVALID_SPEC = 2
EXIT_SIGTERM = exit_code(signal.SIGTERM)  # 143: stopped by a pod deletion (suspend, preemption, drain)
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def job_name(res: Resource, stage: str) -> str:
    return child_name(res, stage, revision(res))


def headless_service_name(res: Resource) -> str:
    return child_name(res, "workers")


def _trains(res: Resource, stage: str) -> bool:
    return stage in ("train", "reward") and isinstance(res, TrainingRun | RewardModel)


def pods_and_processes(res: Resource, stage: str) -> tuple[int, int]:
    """(pods, processes per pod): a TrainingRun's parallelism for its training stage, else (1, 1)."""
    if _trains(res, stage):
        p = res.spec.parallelism  # type: ignore[attr-defined]
        nodes = p.nodes if isinstance(res, TrainingRun) else 1  # a RewardModel trains on one node
        return nodes, p.processes_per_node
    return 1, 1


def _metrics_port(res: Resource, stage: str) -> int | None:
    """Rank 0 of a training stage serves Prometheus metrics on ``spec.monitoring.prometheusPort``."""
    if not _trains(res, stage):
        return None
    port: int | None = res.spec.monitoring.prometheus_port  # type: ignore[attr-defined]
    return port


def scrape_annotations(port: int) -> dict[str, str]:
    """For Prometheus configured to scrape annotated pods (no Prometheus operator)."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def rank_env(res: Resource, settings: OperatorSettings, stage: str) -> list[dict[str, Any]]:
    """Kubeflow Trainer v2's wiring: node rank = the pod's completion index, rendezvous at pod 0's
    stable DNS name through the headless Service, one fixed port."""
    nodes, _ = pods_and_processes(res, stage)
    if nodes == 1:
        return []
    master = f"{job_name(res, stage)}-0.{headless_service_name(res)}.{res.metadata.namespace}.svc"
    index = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}
    return [
        {"name": "LLMFAB_NODE_RANK", "valueFrom": index},
        {"name": "LLMFAB_RDZV_ENDPOINT", "value": f"{master}:{settings.rendezvous_port}"},
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": str(settings.rendezvous_port)},
    ]


def build_stage_job(res: Resource, stage: str, settings: OperatorSettings) -> Manifest:
    """The Job of one stage of one generation of ``res``."""
    if res.KIND not in STAGES[stage].kinds:
        raise ValueError(f"stage {stage} does not run {res.KIND}")
    pods, processes = pods_and_processes(res, stage)
    gpus = gpus_per_pod(res, processes if _trains(res, stage) else 0)
    port = _metrics_port(res, stage)
    extra = {"ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]} if port else None
    template_spec = pod_spec(res, settings, stage, settings.trainer_image, gpus, rank_env(res, settings, stage),
                             container_extra=extra)
    template_spec["restartPolicy"] = "Never"  # podFailurePolicy needs it; the Job retries pods
    if pods > 1:
        template_spec["subdomain"] = headless_service_name(res)  # <job>-<index>.<service> DNS names
    pod = res.spec.pod  # type: ignore[attr-defined]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": pods,
        "parallelism": pods,
        "backoffLimitPerIndex": pod.retries,
        "maxFailedIndexes": 0,  # one pod out of retries fails the Job (a rank cannot be skipped)
        "podFailurePolicy": {
            "rules": [
                {"action": "FailJob",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID_SPEC]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "Ignore",
                 "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_SIGTERM]}},
            ]
        },
        # Queued: created suspended, and Kueue unsuspends it on admission (builders/kueue.py).
        "suspend": bool(getattr(res.spec, "suspend", False)) or queue_name(res) is not None,
        "template": {
            "metadata": {"labels": {**labels(res, stage), STAGE_LABEL: stage},
                         **({"annotations": scrape_annotations(port)} if port else {})},
            "spec": template_spec,
        },
    }
    if pod.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = pod.active_deadline_seconds
    meta = metadata(res, job_name(res, stage), stage)
    meta["labels"] = with_kueue_labels({**meta["labels"], STAGE_LABEL: stage}, res)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def build_headless_service(res: Resource, settings: OperatorSettings, stage: str = "train") -> Manifest:
    """DNS names for the training pods (``<job>-<index>.<service>``), published before they are
    ready: torchrun's rendezvous happens before any readiness."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(res, headless_service_name(res), stage, with_revision=False),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {**selector_labels(res, stage)},
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port, "targetPort": settings.rendezvous_port}],
        },
    }
