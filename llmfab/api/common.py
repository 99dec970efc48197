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
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.alias_generators import to_camel

API_GROUP = "llmfab.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A non-negative Kubernetes quantity (500m, 2, 4Gi, 1.5G, 1e3): k8s.io/apimachinery's grammar.
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][-+]?[0-9]+)?$"
# A label key or taint key (prefix/name; the prefix's 253-character limit is left to the server),
# and a label or taint value, as pkg/apis/core/validation checks them.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # [.]: no escapes in CEL
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"


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


class StatusBase(Spec):
    """Status fields every kind has; kinds add their own progress and artifact fields."""

    phase: Phase = Field(default=Phase.PENDING, description="Pending, Waiting, Running, Succeeded or Failed.")
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


# --- Pod scheduling and resources, shared by every kind that runs a workload ---------------------

Quantity = Annotated[str, Field(pattern=QUANTITY)]


_QUANTITY_PARTS = re.compile(QUANTITY)
_BINARY_SI = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def quantity_value(text: str) -> Decimal:
    """The value of a quantity that matched :data:`QUANTITY`."""
    m = _QUANTITY_PARTS.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number, suffix = Decimal(m.group(1)), m.group(3) or ""
    if suffix in _BINARY_SI:
        return number * Decimal(1024) ** _BINARY_SI[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** int(suffix[1:])
    return number * Decimal(10) ** _DECIMAL_SI[suffix]


def _resource_names(r: Any) -> str | None:
    for part, values in (("requests", r.requests), ("limits", r.limits)):
        bad = [k for k in values if not (k in STANDARD_RESOURCES or k.startswith("hugepages-") or "/" in k)]
        if bad:
            return (f"spec.pod.resources.{part}: {', '.join(bad)} is no resource a node has; use cpu, memory, "
                    "ephemeral-storage, hugepages-<size> or a device plugin's domain/name (nvidia.com/gpu)")
    return None


def _whole_devices(r: Any) -> str | None:
    for part, values in (("requests", r.requests), ("limits", r.limits)):
        bad = [f"{k}={v}" for k, v in values.items() if "/" in k and not re.fullmatch(r"\+?[0-9]+", v)]
        if bad:
            return f"spec.pod.resources.{part}: {', '.join(bad)}: devices come whole; write a whole number"
    return None


def _requests_within_limits(r: Any) -> str | None:
    """Not CEL: comparing quantities needs the API server's quantity library, which this
    project's CEL evaluator lacks; the operator refuses such a spec (InvalidSpec) instead."""
    for k, request in r.requests.items():
        limit = r.limits.get(k)
        if limit is None:
            continue
        if "/" in k and quantity_value(request) != quantity_value(limit):
            return (f"spec.pod.resources.requests.{k}: {request} differs from the limit {limit}; a device "
                    "cannot be overcommitted: give the same number or only the limit")
        if quantity_value(request) > quantity_value(limit):
            return f"spec.pod.resources.requests.{k}: {request} is more than the limit {limit}; raise the limit"
    return None


class ResourceRequirements(Spec):
    """CPU, memory and GPU (``nvidia.com/gpu``) requests and limits of each workload pod."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="[self.requests, self.limits].all(m, m.all(k, k in " + str(list(STANDARD_RESOURCES)).replace('"', "'")
            + " || k.startsWith('hugepages-') || k.contains('/')))",
            message="spec.pod.resources: use cpu, memory, ephemeral-storage, hugepages-<size> or domain/name",
            check=_resource_names,
        ),
        CelRule(
            cel="[self.requests, self.limits].all(m, m.all(k, !k.contains('/') || m[k].matches('^[+]?[0-9]+$')))",
            message="spec.pod.resources: a device (domain/name) comes in whole numbers",
            check=_whole_devices,
        ),
    )

    @model_validator(mode="after")
    def _check_requests_within_limits(self) -> ResourceRequirements:
        problem = _requests_within_limits(self)
        if problem:
            raise ValueError(problem)
        return self

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="e.g. {cpu: '4', memory: 16Gi, nvidia.com/gpu: '1'}."
    )
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Upper bounds, same keys.")

    def gpus(self) -> int:
        """GPUs per pod: the ``nvidia.com/gpu`` limit, else the request, else 0."""
        value = self.limits.get("nvidia.com/gpu", self.requests.get("nvidia.com/gpu", "0"))
        return int(value)


def _toleration_shape(t: Any) -> str | None:
    if not t.key and t.operator != "Exists":
        return "spec.pod.tolerations: a toleration without a key matches every taint and needs operator: Exists"
    if t.operator == "Exists" and t.value:
        return f"spec.pod.tolerations: value {t.value!r} with operator: Exists matches nothing more; remove it"
    if t.toleration_seconds is not None and t.effect != "NoExecute":
        return "spec.pod.tolerations: tolerationSeconds applies only to effect: NoExecute; set it or remove it"
    return None


class Toleration(Spec):
    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="(has(self.key) && self.key != '' || self.operator == 'Exists')"
            " && (self.operator != 'Exists' || !has(self.value) || self.value == '')"
            " && (!has(self.tolerationSeconds) || has(self.effect) && self.effect == 'NoExecute')",
            message="spec.pod.tolerations: no key needs operator Exists; Exists takes no value; "
            "tolerationSeconds needs effect NoExecute",
            check=_toleration_shape,
        ),
    )

    key: str | None = Field(
        default=None, max_length=316, pattern=r"^$|" + QUALIFIED_NAME,
        description="Taint key; empty with Exists matches all.",
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: str | None = Field(default=None, pattern=LABEL_VALUE, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Which taint effect this tolerates; empty tolerates all."
    )
    toleration_seconds: int | None = Field(
        description="With NoExecute: how long the pod stays bound after the taint appears.",
        default=None,
        ge=0,
    )


class EnvVar(Spec):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Variable name.")
    value: str = Field(default="", description="Value.")


# Set by the operator in every pod to wire ranks, storage and status; a user value would break them.
RESERVED_ENV = (
    "LLMFAB_HOME", "LLMFAB_STATUS", "LLMFAB_RDZV_ENDPOINT", "LLMFAB_NODE_RANK", "LLMFAB_NNODES",
    "JOB_COMPLETION_INDEX", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "RANK", "LOCAL_RANK",
    "WORLD_SIZE", "LOCAL_WORLD_SIZE", "PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK",
    "PET_MASTER_ADDR", "PET_MASTER_PORT",
)  # fmt: skip


def _no_reserved_env(p: Any) -> str | None:
    taken = [e.name for e in p.env if e.name in RESERVED_ENV]
    if taken:
        return (
            f"spec.pod.env: {', '.join(taken)} is set by the operator (rank wiring, artifact store, "
            "status); remove it from spec.pod.env"
        )
    return None


def _node_selector_labels(p: Any) -> str | None:
    for key, value in p.node_selector.items():
        if not re.fullmatch(QUALIFIED_NAME, key) or not re.fullmatch(LABEL_VALUE, value):
            return (f"spec.pod.nodeSelector: {key}={value!r} is no node label; keys are [prefix/]name and "
                    "values at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric")
    return None


class PodSettings(Spec):
    """Where and with what a workload's pods run. Ignored by ``llmfab up`` except ``env``."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="self.env.all(e, !(e.name in " + str(list(RESERVED_ENV)).replace('"', "'") + "))",
            message="spec.pod.env may not set a variable the operator sets (LLMFAB_HOME, MASTER_ADDR, RANK, ...)",
            check=_no_reserved_env,
        ),
        CelRule(
            cel=f"self.nodeSelector.all(k, k.matches('{QUALIFIED_NAME}') && self.nodeSelector[k].matches('{LABEL_VALUE}'))",
            message="spec.pod.nodeSelector: keys and values must be Kubernetes label keys and values",
            check=_node_selector_labels,
        ),
    )

    image: str | None = Field(
        default=None, pattern=r"^\S+$", description="Override the chart's image for this stage."
    )
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels to match (label keys and values)."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints to tolerate.")
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment variables.")
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS1123_SUBDOMAIN, description="Pod priority class."
    )
    runtime_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS1123_SUBDOMAIN,
        description="Pod runtimeClassName; default: the chart's (k3s with the NVIDIA toolkit needs 'nvidia').",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the Job after this many seconds (activeDeadlineSeconds)."
    )
    retries: int = Field(
        default=3, ge=0, le=100,
        description="Pod failures retried per pod (backoffLimitPerIndex); each retry resumes from the "
        "last checkpoint. An invalid spec (exit 2) is never retried.",
    )


def _relative_sub_path(s: Any) -> str | None:
    p = s.sub_path
    if p is not None and (p.startswith("/") or ".." in p.split("/")):
        return f"spec.storage.subPath: {p!r} must be a relative path inside the claim, without '..'"
    return None


class Storage(Spec):
    """The artifact volume: a PersistentVolumeClaim mounted at /artifacts in every pod."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="!has(self.subPath) || !(self.subPath.startsWith('/') || self.subPath == '..' || "
            "self.subPath.startsWith('../') || self.subPath.endsWith('/..') || self.subPath.contains('/../'))",
            message="spec.storage.subPath must be a relative path without '..'",
            check=_relative_sub_path,
        ),
    )

    claim_name: str | None = Field(
        default=None, max_length=253, pattern=DNS1123_SUBDOMAIN,
        description="Existing PVC holding the artifact store; default: the chart's shared claim.",
    )
    sub_path: str | None = Field(default=None, description="Sub-directory of the claim to mount.")


# Spec fields that say where or whether a workload runs, never what it produces.
NOT_OUTPUT_FIELDS = frozenset({"pod", "suspend", "deletion_policy"})

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
