"""Pieces every llmfab kind shares: the Kubernetes envelope, status, conditions, pod scheduling.

Every model here is the single source of truth for three readers (the workload, the operator and
the local runner) and for the generated CRD schema, so each field carries a description and the
constraints the API server should enforce. YAML is camelCase; Python attributes are snake_case.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "llmfab.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``X``, ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _schema_extra(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """JSON-schema hook: CEL rules and ``default_factory`` defaults, so the generated CRD validates
    and defaults exactly as pydantic does (see ``llmfab/api/crds.py``)."""
    rules: tuple[CelRule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]
    props = schema.get("properties", {})
    for name, field in cls.model_fields.items():
        alias = field.alias or name
        if alias in props and "description" not in props[alias]:
            nested = _model_in(field.annotation)
            if nested is not None and nested.__doc__:
                props[alias]["description"] = " ".join(nested.__doc__.split())
        if field.default_factory is None or alias not in props:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            # The API server applies the nested fields' own defaults to {}; spell out only
            # what this factory sets differently from them.
            default: Any = value.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        else:
            default = TypeAdapter(field.annotation).dump_python(  # type: ignore[arg-type]
                value, mode="json", by_alias=True, exclude_none=True
            )
        props[alias]["default"] = default


class Spec(BaseModel):
    """Base of every spec/status model: camelCase aliases, unknown fields rejected.

    Rejecting unknown fields is what ``kubectl apply --validate=strict`` does; silently dropping a
    misspelt field (``vocabsize``) would train the wrong model without a word.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_enum_values=True,
        json_schema_extra=_schema_extra,
    )

    # Cross-field rules of this model, enforced here and emitted into the CRD as CEL.
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Spec:
        for rule in type(self).cel_rules:
            if rule.cluster_only:
                continue
            problem = rule.check(self)
            if problem:
                raise ValueError(problem)
        return self


@dataclass(frozen=True)
class CelRule:
    """One cross-field rule, written twice on purpose: as CEL for the API server and as Python here.

    ``cel`` is evaluated by the API server on the object at this model's place in the schema
    (``self`` is this object, camelCase). ``check`` returns an error message naming the fields and
    the fix, or ``None`` when the object is valid. A test evaluates ``cel`` with a real CEL library
    on valid and invalid objects and requires it to agree with ``check``.
    """

    cel: str
    message: str
    check: Callable[[Any], str | None]
    field_path: str | None = None
    # True: a rule of the cluster only (the API server's CEL, then the operator), never of
    # `llmfab up` or the workload; e.g. an unauthenticated feedback app is refused where any pod
    # can reach it, not on a laptop's loopback. See ``cluster_only_problems``.
    cluster_only: bool = False


def cluster_only_problems(model: BaseModel) -> list[str]:
    """The messages of every cluster-only :class:`CelRule` that ``model`` (and each model inside
    it) breaks. The CRD carries the same rules as CEL; the operator checks them again for a
    resource stored before a CRD upgrade added them."""
    problems: list[str] = []
    for rule in getattr(type(model), "cel_rules", ()):
        if rule.cluster_only and (problem := rule.check(model)):
            problems.append(problem)
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                problems += cluster_only_problems(item)
    return problems


class Phase(StrEnum):
    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"  # spec.suspend: pods deleted, checkpoints kept (cluster only)
    QUEUED = "Queued"  # spec.scheduling.queueName: waiting for Kueue to admit its Jobs (cluster only)
    PREEMPTED = "Preempted"  # suspended by Kueue after running: checkpoint kept, waits to be admitted again


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


def utc_now() -> str:
    """RFC 3339 timestamp with second precision, as Kubernetes writes them."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Condition(Spec):
    """A Kubernetes-style condition (``Ready``, ``Progressing``, ``Failed``)."""

    type: str = Field(description="Condition type: Ready, Progressing, Complete, Failed or Suspended.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(
        default=None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, description="metadata.generation this condition was computed from."
    )


class Scheduling(Spec):
    """Where the resource's pods wait for the cluster's shared GPUs: a Kueue queue and priority.

    With ``queueName`` the operator creates the resource's Jobs suspended and labelled for Kueue
    (``kueue.x-k8s.io/queue-name``, ``kueue.x-k8s.io/priority-class``); Kueue admits them (a
    multi-pod TrainingRun as one workload) and may suspend them again to preempt them for a more
    important workload. Ignored by ``llmfab up``.
    """

    queue_name: str | None = Field(
        default=None, max_length=63, pattern=DNS1123_LABEL,
        description="A Kueue LocalQueue in the resource's namespace; unset: the Jobs run at once (no Kueue).",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS1123_SUBDOMAIN,
        description="A Kueue WorkloadPriorityClass: what is admitted first and what may be preempted for what.",
    )


class CostInputs(Spec):
    """What an estimate of energy and cost used, so a reader can check it (the prices configured
    when the figures were last written: the chart's ``cost`` values, or ``llmfab up``'s)."""

    energy: Literal["measured", "estimated", "mixed"] | None = Field(
        default=None,
        description="GPU energy: measured (NVML's counter, every run), estimated (wattsPerGpu x GPU time) "
        "or mixed (measured where a counter was read, estimated for the rest).",
    )
    watts_per_gpu: float | None = Field(default=None, ge=0, description="Configured draw of one GPU, where no counter exists.")
    watts_per_cpu: float | None = Field(
        default=None, ge=0, description="Configured draw of one busy CPU core: the CPU part of the energy estimate."
    )
    price_per_kwh: float | None = Field(default=None, ge=0, description="Configured price of a kWh.")
    price_per_gpu_hour: float | None = Field(default=None, ge=0, description="Configured price of a GPU hour.")


class UsageTotals(Spec):
    """Figures that add up over runs: what a resource's workloads used."""

    wall_seconds: float = Field(
        default=0.0, ge=0,
        description="Time its workloads ran, summed over attempts (one pod per run counts: rank 0's, or each server replica).",
    )
    cpu_seconds: float | None = Field(
        default=None, ge=0,
        description="CPU time: used (locally: the processes' rusage) or reserved (cluster: pods' CPU requests x "
        "time); see cpu. Absent on the cluster where no pod requested CPU.",
    )
    gpu_seconds: float = Field(default=0.0, ge=0, description="GPUs x time, over all pods and attempts.")
    gpu_energy_joules: float | None = Field(
        default=None, ge=0, description="GPU energy from NVML's total-energy counter; absent where none was read."
    )
    measured_gpu_seconds: float = Field(
        default=0.0, ge=0, description="The part of gpuSeconds whose energy NVML measured (the rest is estimated)."
    )
    attempts: int = Field(
        default=0, ge=0,
        description="Runs of its workloads: each stage's process or pod group (a retried, preempted and "
        "re-admitted or re-run one counts again), each server replica.",
    )


class PodUsage(Spec):
    """Cluster: one pod of the resource as the operator last saw it. Its figures are in the totals;
    once the pod is gone (Job pods are deleted on suspension and preemption, failed pods replaced)
    they move into ``gonePods`` and the entry goes, so nothing is counted twice or lost."""

    stage: str | None = Field(default=None, description="The stage the pod ran.")
    start_time: str | None = Field(default=None, description="The pod's status.startTime (RFC 3339).")
    seconds: float = Field(
        default=0.0, ge=0, description="Its runtime: start to its containers' termination, else to the last look."
    )
    gpus: int = Field(default=0, ge=0, description="nvidia.com/gpu the pod requested.")
    cpus: float | None = Field(default=None, ge=0, description="CPU cores the pod requested (reserved, not used).")
    attempt: bool = Field(
        default=False, description="It starts a run: index 0 of a stage Job, or a server replica."
    )
    ended: bool = Field(default=False, description="Its containers terminated (or it is gone): seconds is final.")
    gone: bool = Field(
        default=False, description="Not listed at the last look: folded into gonePods at the next."
    )
    gpu_energy_joules: float | None = Field(
        default=None, ge=0,
        description="Written by the workload in the pod: its GPUs' energy from NVML's counter, start to end.",
    )


class Usage(UsageTotals):
    """What a resource used, over all its pods (or local processes) and all attempts, preempted ones
    included; energy where measured or estimable, cost only where a price was given, with the
    inputs named."""

    cpu: Literal["used", "reserved"] | None = Field(
        default=None, description="What cpuSeconds is: used (llmfab up) or reserved (pods' requests)."
    )
    gpu_hours: float = Field(default=0.0, ge=0, description="gpuSeconds / 3600, rounded to 3 decimals.")
    energy_kwh: float | None = Field(
        default=None, ge=0,
        description="Energy in kWh: the GPUs' (measured, else wattsPerGpu x GPU time), plus wattsPerCpu x CPU "
        "time where configured; absent where GPU time is neither measured nor estimable.",
    )
    cost: float | None = Field(
        default=None, ge=0,
        description="pricePerGpuHour x GPU hours + pricePerKwh x energyKwh (4 decimals); only where a price is configured.",
    )
    currency: str | None = Field(default=None, description="Currency of cost, as configured.")
    cost_inputs: CostInputs | None = Field(default=None, description="What the energy and cost figures used.")
    pods: dict[str, PodUsage] = Field(
        default_factory=dict, description="Cluster: the pods listed at the operator's last look, by name."
    )
    gone_pods: UsageTotals | None = Field(
        default=None, description="Cluster: what pods no longer listed used (folded in from pods)."
    )


class StatusBase(Spec):
    """Status fields every kind has; kinds add their own progress and artifact fields."""

    phase: Phase = Field(
        default=Phase.PENDING,
        description="Pending, Waiting, Queued, Running, Preempted, Suspended, Succeeded or Failed.",
    )
    conditions: list[Condition] = Field(default_factory=list, description="Ready, Progressing, Failed.")
    observed_generation: int | None = Field(default=None, description="metadata.generation last acted on.")
    start_time: str | None = Field(default=None, description="When the workload started (RFC 3339).")
    completion_time: str | None = Field(default=None, description="When it succeeded or failed.")
    message: str = Field(default="", description="One line on what is happening or what went wrong.")
    artifact_path: str | None = Field(
        default=None, description="Where the output lives, relative to the artifact root."
    )
    stage: str | None = Field(
        default=None, description="Cluster: the stage whose pods run now (data, train, eval, quantize, serve)."
    )
    stages: dict[str, str] = Field(
        default_factory=dict,
        description="Cluster: stage -> Pending, Running, Suspended, Succeeded or Failed, this generation.",
    )
    usage: Usage | None = Field(default=None, description="Compute used, and its cost where a price is given.")


class ObjectMeta(BaseModel):
    """The parts of Kubernetes ObjectMeta llmfab reads; server-set fields are accepted and kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: Annotated[str, Field(max_length=63, pattern=DNS1123_LABEL)] = Field(
        description="DNS-1123 label: lowercase letters, digits and '-', at most 63 characters."
    )
    namespace: str = Field(default="default", pattern=DNS1123_LABEL, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Server-set fields, present when a resource comes back from the API server.
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    finalizers: list[str] = Field(default_factory=list)
    owner_references: list[dict[str, Any]] = Field(default_factory=list)
    managed_fields: list[dict[str, Any]] = Field(default_factory=list)
    generate_name: str | None = None


# Spec fields that say where or whether a workload runs, never what it produces.
NOT_OUTPUT_FIELDS = frozenset({"pod", "suspend", "deletion_policy", "scheduling"})

DeletionPolicy = Literal["Retain", "Delete"]
DELETION_POLICY_DESCRIPTION = (
    "Retain: the artifacts stay in the store when the resource is deleted; Delete: the operator "
    "removes them (its children always go)."
)


class ResourceRef(Spec):
    """A reference to another llmfab resource by name (same namespace)."""

    name: str = Field(pattern=DNS1123_LABEL, max_length=63, description="metadata.name of the resource.")


class Resource(BaseModel):
    """The Kubernetes envelope shared by all kinds. Subclasses pin ``kind`` and the spec type."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ()
    STAGE: ClassVar[str] = ""  # the workload entrypoint: `llmfab <STAGE> run`
    ARTIFACT_DIR: ClassVar[str] = ""  # top-level folder in the artifact store
    PRINTER_COLUMNS: ClassVar[tuple[dict[str, str], ...]] = ()
    # The CRD's /scale subresource (specReplicasPath, statusReplicasPath, labelSelectorPath), or None.
    SCALE_SUBRESOURCE: ClassVar[dict[str, str] | None] = None

    api_version: Literal["llmfab.dev/v1alpha1"] = Field(
        default="llmfab.dev/v1alpha1", description="Always llmfab.dev/v1alpha1."
    )
    kind: str
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def key(self) -> str:
        """``kind/name``, the way errors and logs name a resource."""
        return f"{self.KIND}/{self.metadata.name}"

    def references(self) -> list[tuple[str, str]]:
        """(kind, name) of every resource this one needs before it can run."""
        return []

    def spec_hash_input(self) -> dict[str, Any]:
        """The spec fields that change the output; a change rebuilds, anything else is a no-op."""
        spec = getattr(self, "spec")  # noqa: B009 - every subclass defines spec
        data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude=NOT_OUTPUT_FIELDS)
        return data


def reject_snake_case_keys(data: Any, path: str = "") -> None:
    """Catch ``vocab_size`` in YAML (the API is camelCase) with an error that names the fix."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and "_" in key and re.fullmatch(r"[a-z][a-z0-9_]*", key):
                camel = to_camel(key)
                raise ValueError(f"{path}{key}: unknown field; llmfab YAML is camelCase, write '{camel}'")
            if key not in ("labels", "annotations", "nodeSelector", "requests", "limits"):
                reject_snake_case_keys(value, f"{path}{key}.")
    elif isinstance(data, list):
        for i, item in enumerate(data):
            reject_snake_case_keys(item, f"{path[:-1]}[{i}].")
