"""What a workload's pods may be given: resources, tolerations, node selector, environment, classes,
and the artifact volume (``spec.pod`` and ``spec.storage`` of every kind that runs pods).

Each field accepts only what the API server accepts in a pod (pkg/apis/core/validation), so a
resource is refused at ``kubectl apply`` naming its own field, never later as a 422 on a child the
operator cannot create. docs/cluster.md's "What a resource's author may set on a pod" lists these
fields; the chart's ``podPolicy`` narrows some of them per cluster (``operator/builders/refusals.py``).
"""

from __future__ import annotations

import re
from decimal import MAX_EMAX, MIN_EMIN, Decimal, Overflow, localcontext
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from llmfab.api.common import DNS1123_SUBDOMAIN, CelRule, Spec

# A non-negative Kubernetes quantity (500m, 2, 4Gi, 1.5G, 1e3): k8s.io/apimachinery's grammar.
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][-+]?[0-9]+)?$"
# A label key or taint key (prefix/name; the prefix's 253-character limit is left to the server),
# and a label or taint value, as pkg/apis/core/validation checks them.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # [.]: no escapes in CEL
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"

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
        # The grammar allows any exponent; the default context's (999999) would raise decimal.Overflow,
        # an ArithmeticError that validation does not turn into an error naming the field.
        with localcontext() as ctx:
            ctx.Emax, ctx.Emin = MAX_EMAX, MIN_EMIN
            try:
                return number * Decimal(10) ** int(suffix[1:])
            except Overflow:
                raise ValueError(f"{text!r}: the exponent is too large for a quantity") from None
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
