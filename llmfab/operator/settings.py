"""What the operator needs to know that no resource says: images, the shared artifact claim, the
workload ServiceAccount, GPU runtime. The chart sets these as environment variables of the
operator Deployment (``LLMFAB_OPERATOR_<FIELD>``); builders receive them as one frozen object."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmfab import __version__
from llmfab.usage import Prices

ENV_PREFIX = "LLMFAB_OPERATOR_"
# Read by the operator's process itself (llmfab/operator/__main__.py), not by builders.
PROCESS_VARIABLES = frozenset({"NAMESPACES", "LOG_LEVEL", "METRICS_PORT"})
IMAGE_REPOSITORY = "ghcr.io/llmfab"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    trainer_image: str = Field(
        default=f"{IMAGE_REPOSITORY}/trainer:{__version__}",
        description="Image of Dataset, TrainingRun, RewardModel, eval and quantize pods.",
    )
    serving_image: str = Field(
        default=f"{IMAGE_REPOSITORY}/serving:{__version__}", description="Image of the vLLM server pods."
    )
    image_pull_policy: str = "IfNotPresent"
    artifacts_claim: str = Field(default="llmfab-artifacts", description="PVC mounted at /artifacts.")
    workload_service_account: str = Field(
        default="llmfab-workload", description="ServiceAccount of workload pods: may only patch status."
    )
    runtime_class_name: str | None = Field(
        default=None, description="runtimeClassName of GPU pods (k3s + NVIDIA toolkit: nvidia)."
    )
    shm_size: str = Field(default="8Gi", description="Size limit of the /dev/shm emptyDir (NCCL, loaders).")
    rendezvous_port: int = Field(default=29500, description="torchrun c10d port on pod 0.")
    resync_seconds: float = Field(default=10.0, gt=0, description="How often children are re-read.")
    service_monitors: bool = Field(
        default=False, description="The Prometheus operator's ServiceMonitor CRD exists (found at start-up)."
    )
    service_monitor_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra ServiceMonitor labels; kube-prometheus-stack selects `release: <its release>`.",
    )
    max_nodes: int = Field(
        default=256, ge=1,
        description="Largest spec.parallelism.nodes; 1 where the artifact volume is ReadWriteOnce "
        "(k3s local-path): pods on several nodes cannot all mount it.",
    )
    run_as_user: int = 1000
    artifacts_access_mode: Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"] = Field(
        default="ReadWriteOnce",
        description="The chart's artifacts.accessMode: the feedback store (SQLite, WAL) is refused on "
        "ReadWriteMany, where pods on two nodes could open it.",
    )
    # The chart's autoscaling.keda: how an InferenceService's spec.autoscaling reaches KEDA and its
    # HTTP add-on (the kedacore/keda and kedacore/keda-add-ons-http charts' default names).
    keda_enabled: bool = Field(
        default=True, description="spec.autoscaling is served by KEDA; false: the operator refuses it.",
    )
    keda_interceptor_service: str = Field(
        default="keda-add-ons-http-interceptor-proxy", description="The HTTP add-on's interceptor proxy Service.",
    )
    keda_interceptor_namespace: str = Field(default="keda", description="Namespace of the add-on's Services.")
    keda_interceptor_port: int = Field(default=8080, ge=1, le=65535, description="The interceptor proxy's port.")
    keda_scaler_address: str = Field(
        default="keda-add-ons-http-external-scaler.keda:9090",
        description="host:port of the add-on's external scaler (the external-push trigger's scalerAddress).",
    )
    keda_prometheus_address: str | None = Field(
        default=None,
        description="Prometheus that scrapes vLLM (e.g. http://prometheus-operated.monitoring.svc:9090): a "
        "prometheus trigger on vLLM's queue; none: no such trigger.",
    )
    cluster_domain: str = Field(default="cluster.local", description="The cluster's DNS domain.")
    # The chart's kueue.defaultRequests: Kueue accounts a queued workload by its pods' requests.
    kueue_default_requests: dict[str, str] = Field(
        default_factory=lambda: {"cpu": "1", "memory": "2Gi"},
        description="With spec.scheduling.queueName: the requests of a workload container that names "
        "neither a request nor a limit of cpu or memory, so Kueue's quota counts every pod.",
    )
    # The chart's podPolicy: what a resource's author may choose in spec.pod / spec.storage. Each is
    # a list of shell-style patterns (fnmatch); ["*"] (the default) restricts nothing. The chart's
    # own images, runtime class and claim are always allowed.
    allowed_images: list[str] = Field(default_factory=lambda: ["*"], description="spec.pod.image patterns.")
    allowed_runtime_classes: list[str] = Field(
        default_factory=lambda: ["*"], description="spec.pod.runtimeClassName patterns."
    )
    allowed_priority_classes: list[str] = Field(
        default_factory=lambda: ["*"], description="spec.pod.priorityClassName patterns."
    )
    allowed_claims: list[str] = Field(default_factory=lambda: ["*"], description="spec.storage.claimName patterns.")
    allowed_toleration_keys: list[str] = Field(
        default_factory=lambda: ["*"],
        description="spec.pod.tolerations[].key patterns; a toleration without a key (it tolerates every "
        "taint) counts as the key '' and only '*' allows it. []: no tolerations.",
    )

    # The chart's cost values: what status.usage prices GPU time and energy at (llmfab/usage.py).
    cost: Prices = Field(
        default_factory=Prices,
        description="currency, pricePerGpuHour, pricePerKwh, wattsPerGpu, wattsPerCpu; unset: no cost is shown.",
    )
    usage_write_seconds: float = Field(
        default=60.0, gt=0,
        description="status.usage of a running pod is rewritten after this much more runtime (at once when a "
        "pod starts, ends, goes or is being deleted).",
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> OperatorSettings:
        """Read ``LLMFAB_OPERATOR_TRAINER_IMAGE`` etc.; an unknown variable is an error, not ignored."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, value in env.items():
            if not key.startswith(ENV_PREFIX) or key[len(ENV_PREFIX):] in PROCESS_VARIABLES:
                continue
            field = key[len(ENV_PREFIX):].lower()
            if field not in cls.model_fields:
                raise ValueError(f"{key}: unknown operator setting; known: "
                                 + ", ".join(ENV_PREFIX + f.upper() for f in cls.model_fields))
            if value == "":
                values[field] = None
            elif value.lstrip().startswith(("{", "[")):
                values[field] = json.loads(value)
            else:
                values[field] = value
        values.update(overrides)
        return cls.model_validate(values)
