"""InferenceService: a trained model, optionally 4-bit quantized, served by vLLM's OpenAI server."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from llmfab.api.common import (
    DELETION_POLICY_DESCRIPTION,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    CelRule,
    DeletionPolicy,
    Resource,
    Scheduling,
    Spec,
    StatusBase,
)
from llmfab.api.evaluation import EvalResults, EvalSpec
from llmfab.api.pod import RESERVED_ENV, PodSettings, Storage
from llmfab.api.release import RELEASE_DESCRIPTION, Release, license_required


def _one_model_source(m: Any) -> str | None:
    if (m.training_run is None) == (m.path is None):
        return "spec.model: give exactly one of trainingRun (a TrainingRun's export) or path (a HF model dir)"
    return None


class ModelSource(Spec):
    """Which model to serve."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="has(self.trainingRun) != has(self.path)",
            message="give exactly one of trainingRun or path",
            check=_one_model_source,
        ),
    )

    training_run: str | None = Field(
        default=None, pattern=DNS1123_LABEL, description="Serve this TrainingRun's Hugging Face export."
    )
    path: str | None = Field(default=None, description="Or a Hugging Face model directory.")


class Quantization(Spec):
    """4-bit weight-only quantization (W4A16) written in the compressed-tensors format."""

    method: Literal["none", "w4a16"] = Field(default="w4a16", description="none serves the bf16 model.")
    algorithm: Literal["gptq", "rtn"] = Field(
        default="gptq", description="gptq: calibrated (Frantar et al. 2022); rtn: round-to-nearest."
    )
    group_size: int = Field(default=128, ge=2, description="Weights per scale; the largest the shapes allow.")
    symmetric: bool = Field(default=True, description="Symmetric (no zero point) or asymmetric.")
    calibration_samples: int = Field(default=128, ge=1, description="Sequences from the val split.")
    calibration_dataset: str | None = Field(
        default=None, pattern=DNS1123_LABEL, description="Dataset to calibrate on; default: the run's."
    )
    dampening: float = Field(default=0.01, gt=0, lt=1, description="GPTQ Hessian dampening fraction.")


class ServerSpec(Spec):
    """vLLM OpenAI server options (``python -m vllm.entrypoints.openai.api_server``)."""

    served_model_name: str | None = Field(
        default=None, description="Model name in the API; default: resource name."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Activation/weight dtype."
    )
    max_model_len: int = Field(description="Longest prompt + completion in tokens.", default=512, ge=16)
    gpu_memory_utilization: float = Field(
        description="Share of GPU memory vLLM may use (GPU only).", default=0.9, gt=0, le=1
    )
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per replica.")
    max_num_seqs: int = Field(default=64, ge=1, description="Concurrent sequences.")
    enforce_eager: bool = Field(default=True, description="Skip CUDA graphs / torch.compile: faster start.")
    cpu_kv_cache_gib: float = Field(default=1.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE on CPU hosts.")
    port: int = Field(default=8000, ge=1024, le=65535, description="HTTP port of the OpenAI API.")
    host: str = Field(default="127.0.0.1", description="Bind address (0.0.0.0 in pods).")
    extra_args: list[str] = Field(default_factory=list, description="Passed to vLLM verbatim.")


class SecretKeySelector(Spec):
    """One key of a Secret in the resource's namespace (a pod's ``secretKeyRef``)."""

    name: str = Field(
        max_length=253, pattern=DNS1123_SUBDOMAIN, description="metadata.name of the Secret (same namespace)."
    )
    key: str = Field(
        default="token", max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="The key in its data."
    )


class FeedbackSpec(Spec):
    """The human-feedback web app (pairs into SQLite).

    Its token: on a cluster, ``tokenSecret`` names a Secret the kubelet puts into the server
    container as ``$tokenEnv`` (``secretKeyRef``; the operator never reads it), so the token is
    never written into the resource, the Deployment or the spec ConfigMap. Locally (``llmfab up``)
    the app reads ``$tokenEnv`` from the shell and may run open: it binds ``server.host``
    (127.0.0.1 by default), so only this machine reaches it.
    """

    enabled: bool = Field(default=False, description="Serve the human-feedback app beside vLLM.")
    port: int = Field(description="HTTP port of the feedback app.", default=8080, ge=1024, le=65535)
    token_env: str = Field(
        default="LLMFAB_FEEDBACK_TOKEN",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the access token; unset or empty: no auth (a warning). "
        "On a cluster the operator sets it from tokenSecret.",
    )
    token_secret: SecretKeySelector | None = Field(
        default=None,
        description="Cluster: the Secret key holding the access token, given to the app as $tokenEnv "
        "(secretKeyRef). Required with enabled unless allowAnonymous. Ignored by llmfab up.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Cluster: serve the app without a token, so any pod that reaches its Service reads "
        "the prompts, votes and /stats and writes training text. Locally an open app on loopback needs no flag.",
    )
    prompts: str | None = Field(
        default=None,
        description="JSONL ({prompt: ...}) or text (one per line) file of prompts; default: a built-in list.",
    )
    max_tokens: int = Field(default=64, ge=1, le=2048, description="Tokens per completion shown.")
    votes_per_pair: int = Field(
        default=3, ge=1, le=100, description="Voters asked about the same pair (for the agreement view)."
    )


class MonitoringSpec(Spec):
    """Prometheus scraping and Grafana dashboards."""

    service_monitor: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="ServiceMonitor when the Prometheus operator is present, else annotations.",
    )
    dashboards: bool = Field(default=True, description="Grafana latency dashboard ConfigMap.")


def _two_ports(s: Any) -> str | None:
    if s.feedback.enabled and s.feedback.port == s.server.port:
        return (
            f"spec.feedback.port: {s.feedback.port} is spec.server.port too; the feedback app and vLLM "
            "each need their own port: choose another spec.feedback.port (default 8080)"
        )
    return None


def _feedback_token_on_cluster(s: Any) -> str | None:
    f = s.feedback
    if f.enabled and f.token_secret is None and not f.allow_anonymous:
        return (
            "spec.feedback.tokenSecret: a feedback app without a token serves its prompts, votes and "
            "/stats to every pod in the cluster and takes their edits as training text; create a Secret "
            "(kubectl create secret generic NAME --from-literal=token=...) and set "
            "spec.feedback.tokenSecret: {name: NAME, key: token}, or set "
            "spec.feedback.allowAnonymous: true to serve it open"
        )
    return None


def _no_plain_text_token(s: Any) -> str | None:
    f = s.feedback
    if f.enabled and any(e.name == f.token_env for e in s.pod.env):
        return (
            f"spec.pod.env: {f.token_env} (spec.feedback.tokenEnv) would put the feedback token in plain "
            "text into the resource, the Deployment and the spec ConfigMap; remove it and name a Secret "
            "in spec.feedback.tokenSecret"
        )
    return None


def _token_env_not_reserved(s: Any) -> str | None:
    f = s.feedback
    if f.enabled and f.token_env in RESERVED_ENV:
        return (
            f"spec.feedback.tokenEnv: {f.token_env} is set by the operator (rank wiring, artifact store, "
            "status); the token's secretKeyRef would replace it: keep the default LLMFAB_FEEDBACK_TOKEN "
            "or name another variable"
        )
    return None


def _one_feedback_writer(s: Any) -> str | None:
    if s.feedback.enabled and s.autoscaling is not None and s.autoscaling.max_replicas > 1:
        return (
            f"spec.autoscaling.maxReplicas: {s.autoscaling.max_replicas} replicas with spec.feedback.enabled would "
            "each write the one feedback store (SQLite, one writer); use maxReplicas: 1 for a service that "
            "collects feedback"
        )
    if s.feedback.enabled and s.replicas is not None and s.replicas > 1:
        return (
            f"spec.replicas: {s.replicas} replicas with spec.feedback.enabled would each write the one "
            "feedback store (SQLite, one writer); use replicas: 1 for a service that collects feedback"
        )
    return None


def _replicas_or_autoscaling(s: Any) -> str | None:
    if s.autoscaling is not None and s.replicas is not None:
        return (
            f"spec.replicas: {s.replicas} with spec.autoscaling: the autoscaler sets the number of replicas "
            "(minReplicas to maxReplicas); remove spec.replicas, or remove spec.autoscaling for a fixed count"
        )
    return None


def _min_not_above_max(a: Any) -> str | None:
    if a.min_replicas > a.max_replicas:
        return (
            f"spec.autoscaling.minReplicas: {a.min_replicas} is above maxReplicas {a.max_replicas}; "
            "lower minReplicas or raise maxReplicas"
        )
    return None


class Autoscaling(Spec):
    """Replicas that follow demand: down to ``minReplicas`` (0: no server and no GPU held) after
    ``idleSeconds`` without a request, woken by the next request, and up to ``maxReplicas`` while
    more than ``targetInFlight`` requests per replica are running or waiting in vLLM.

    On a cluster KEDA does it (a ScaledObject on vLLM's queue metrics; from zero, the KEDA HTTP
    add-on's interceptor holds requests while a pod starts; ``status.url`` is then the
    interceptor's). ``llmfab up`` does the same on one machine: it holds the service's port itself,
    starts vLLM on the first request and stops it when idle.
    """

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="self.minReplicas <= self.maxReplicas",
            message="spec.autoscaling.minReplicas must not be above maxReplicas",
            check=_min_not_above_max,
        ),
    )

    min_replicas: int = Field(
        default=0, ge=0, le=64,
        description="Replicas when idle; 0 scales to zero (a cluster needs KEDA and its HTTP add-on).",
    )
    max_replicas: int = Field(default=1, ge=1, le=64, description="Most replicas under load.")
    target_in_flight: int = Field(
        default=16, ge=1, le=4096,
        description="Requests per replica (running + waiting in vLLM) above which another replica starts.",
    )
    idle_seconds: int = Field(
        default=300, ge=1, le=86400,
        description="With no request for this long, scale down to minReplicas (KEDA's cooldownPeriod; "
        "locally vLLM stops and its memory is freed).",
    )
    cold_start_timeout_seconds: int = Field(
        default=600, ge=1, le=3600,
        description="How long a request waits for a sleeping server to wake: then `llmfab up` answers 503 with "
        "Retry-After, and on a cluster the KEDA interceptor 504 (its readiness timeout, set from this field).",
    )


class InferenceServiceSpec(Spec):
    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="!self.feedback.enabled || (has(self.autoscaling) ? self.autoscaling.maxReplicas <= 1 "
            ": (!has(self.replicas) || self.replicas <= 1))",
            message="spec.feedback.enabled needs one replica at most (replicas or autoscaling.maxReplicas <= 1: "
            "the feedback store has one writer)",
            check=_one_feedback_writer,
        ),
        CelRule(
            cel="!(has(self.autoscaling) && has(self.replicas))",
            message="spec.replicas and spec.autoscaling exclude each other: the autoscaler sets the replicas",
            check=_replicas_or_autoscaling,
        ),
        CelRule(
            cel="!self.feedback.enabled || self.feedback.port != self.server.port",
            message="spec.feedback.port must differ from spec.server.port",
            check=_two_ports,
        ),
        CelRule(
            cel="!self.feedback.enabled || has(self.feedback.tokenSecret) || self.feedback.allowAnonymous",
            message="spec.feedback.enabled on a cluster needs spec.feedback.tokenSecret (a Secret holding "
            "the token) or spec.feedback.allowAnonymous: true",
            check=_feedback_token_on_cluster,
            cluster_only=True,
        ),
        CelRule(
            cel="!self.feedback.enabled || self.pod.env.all(e, e.name != self.feedback.tokenEnv)",
            message="spec.pod.env may not set the feedback token (spec.feedback.tokenEnv) in plain text; "
            "use spec.feedback.tokenSecret",
            check=_no_plain_text_token,
            cluster_only=True,
        ),
        CelRule(
            cel="!self.feedback.enabled || !(self.feedback.tokenEnv in "
            + str(list(RESERVED_ENV)).replace('"', "'") + ")",
            message="spec.feedback.tokenEnv may not name a variable the operator sets (LLMFAB_HOME, RANK, ...)",
            check=_token_env_not_reserved,
        ),
        CelRule(
            cel="has(self.model.trainingRun) || (has(self.release) && has(self.release.license))",
            message="spec.release.license: a model served by path needs the licence it is released under "
            "(a Hugging Face licence id such as apache-2.0, mit or cc-by-4.0); a served TrainingRun's is inherited",
            check=lambda s: license_required(s.model.training_run is not None, s.release, "a model served by path"),
        ),
    )

    model: ModelSource
    quantization: Quantization = Field(default_factory=Quantization)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    server: ServerSpec = Field(default_factory=ServerSpec)
    replicas: int | None = Field(
        default=None, ge=0, le=64,
        description="Server pods (cluster only); default 1. What `kubectl scale` sets (the /scale subresource). "
        "Exclusive with autoscaling.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Replicas that follow demand, down to zero; exclusive with replicas."
    )
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    release: Release = Field(default_factory=Release, description=RELEASE_DESCRIPTION)
    storage: Storage = Field(default_factory=Storage)
    pod: PodSettings = Field(default_factory=PodSettings)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    deletion_policy: DeletionPolicy = Field(default="Retain", description=DELETION_POLICY_DESCRIPTION)

    def fixed_replicas(self) -> int | None:
        """The server pods to keep, or None where the autoscaler decides (``autoscaling``)."""
        if self.autoscaling is not None:
            return None
        return 1 if self.replicas is None else self.replicas


class ScaleStatus(Spec):
    """Where an autoscaled service stands (``spec.autoscaling``)."""

    state: Literal["Idle", "Waking", "Ready"] = Field(
        description="Idle: scaled to zero, the next request wakes it; Waking: a server is starting and requests "
        "are held; Ready: serving."
    )
    since: str | None = Field(default=None, description="When it entered this state (RFC 3339).")
    last_cold_start_time: str | None = Field(default=None, description="When the last wake from zero began.")
    last_cold_start_seconds: float | None = Field(
        default=None, description="How long the last wake took, request to ready."
    )
    cold_starts: int = Field(default=0, ge=0, description="Wakes from zero so far.")


class InferenceServiceStatus(StatusBase):
    url: str | None = Field(default=None, description="OpenAI API base URL.")
    feedback_url: str | None = Field(default=None, description="Human-feedback app URL (spec.feedback).")
    replicas: int | None = Field(default=None, description="Server pods now (the /scale subresource's status).")
    ready_replicas: int | None = None
    selector: str | None = Field(default=None, description="Label selector of the server pods (for /scale).")
    scale: ScaleStatus | None = Field(default=None, description="Idle, Waking or Ready (spec.autoscaling).")
    model_size_bytes: int | None = Field(default=None, description="Served weights on disk.")
    quantized_path: str | None = None
    eval: EvalResults | None = Field(default=None, description="Quantized model's evaluation.")
    bf16_val_perplexity: float | None = Field(default=None, description="Unquantized, for comparison.")


class InferenceService(Resource):
    """InferenceService: a trained model, optionally 4-bit quantized, served by vLLM with the OpenAI API and Prometheus metrics."""

    KIND: ClassVar[str] = "InferenceService"
    PLURAL: ClassVar[str] = "inferenceservices"
    # KServe owns "isvc"; llmfab's short names all start with "l".
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("lis",)
    STAGE: ClassVar[str] = "serve"
    ARTIFACT_DIR: ClassVar[str] = "services"
    PRINTER_COLUMNS: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "State", "type": "string", "jsonPath": ".status.scale.state"},
    )
    SCALE_SUBRESOURCE: ClassVar[dict[str, str] | None] = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }

    kind: Literal["InferenceService"] = "InferenceService"
    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None

    def references(self) -> list[tuple[str, str]]:
        refs = []
        if self.spec.model.training_run:
            refs.append(("TrainingRun", self.spec.model.training_run))
        if self.spec.quantization.calibration_dataset:
            refs.append(("Dataset", self.spec.quantization.calibration_dataset))
        return refs

    def spec_hash_input(self) -> dict[str, Any]:
        data: dict[str, Any] = self.spec.model_dump(
            mode="json", by_alias=True, include={"model", "quantization", "eval"}
        )
        return data
