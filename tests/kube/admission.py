"""Defaulting and validation a real API server applies before storing an object.

Common to every kind (k8s.io/apimachinery validation): ``metadata.name`` is an RFC 1123 subdomain
(a label for namespaces), label keys and values are valid and at most 63 characters, at most one
owner reference is the controller. For the built-in kinds an operator creates, the parts of
their registry strategies that catch operator bugs (pkg/registry/*/strategy.go and
pkg/apis/*/validation): a Job gets its generated selector and ``job-name``/``controller-uid``
labels, a ``restartPolicy`` of Never or OnFailure, ``completions`` when Indexed, and an immutable
pod template; a Deployment's selector must match its template; a Pod's spec is immutable but for
images; a Service gets a ClusterIP. Custom resources go through their CRD schema
(crd_schema.py).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .crd_schema import Cause

JSON = dict[str, Any]

_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
_NAME_PART = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"

SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    f"start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{_SUBDOMAIN}')"
)
LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and "
    f"end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{_LABEL}')"
)
LABEL_VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
    f"validation is '{_LABEL_VALUE}')"
)
NAME_PART_MESSAGE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    f"alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '{_NAME_PART}')"
)


def _invalid(field: str, value: Any, message: str) -> Cause:
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    return Cause(field, "FieldValueInvalid", f"Invalid value: {shown}: {message}")


def _required(field: str, message: str = "") -> Cause:
    return Cause(field, "FieldValueRequired", "Required value" + (f": {message}" if message else ""))


def _forbidden(field: str, message: str) -> Cause:
    return Cause(field, "FieldValueForbidden", f"Forbidden: {message}")


def label_causes(labels: Any, field: str) -> list[Cause]:
    causes: list[Cause] = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not re.fullmatch(_SUBDOMAIN, prefix)):
            causes.append(_invalid(field, key, "prefix part " + SUBDOMAIN_MESSAGE))
        if len(name) > 63:
            causes.append(_invalid(field, key, "name part must be no more than 63 characters"))
        elif not re.fullmatch(_NAME_PART, name):
            causes.append(_invalid(field, key, NAME_PART_MESSAGE))
        if not isinstance(value, str):
            causes.append(_invalid(field, value, "a label value must be a string"))
        elif len(value) > 63:
            causes.append(_invalid(field, value, "must be no more than 63 characters"))
        elif not re.fullmatch(_LABEL_VALUE, value):
            causes.append(_invalid(field, value, LABEL_VALUE_MESSAGE))
    return causes


def metadata_causes(meta: JSON, *, label_name: bool) -> list[Cause]:
    """ObjectMeta validation (``label_name``: the name must be an RFC 1123 label, as for namespaces)."""
    causes: list[Cause] = []
    name = meta.get("name", "")
    if label_name and (len(name) > 63 or not re.fullmatch(_LABEL, name)):
        causes.append(_invalid("metadata.name", name, LABEL_MESSAGE))
    elif not label_name and (len(name) > 253 or not re.fullmatch(_SUBDOMAIN, name)):
        causes.append(_invalid("metadata.name", name, SUBDOMAIN_MESSAGE))
    causes += label_causes(meta.get("labels"), "metadata.labels")
    refs = meta.get("ownerReferences") or []
    for i, ref in enumerate(refs):
        for key in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(key):
                causes.append(
                    _invalid(f"metadata.ownerReferences[{i}].{key}", "", f"{key} must not be empty")
                )
    if sum(1 for ref in refs if ref.get("controller")) > 1:
        causes.append(
            _invalid(
                "metadata.ownerReferences", "[...]", "Only one reference can have Controller set to true"
            )
        )
    return causes


def _job(obj: JSON, old: JSON | None) -> list[Cause]:
    spec = obj.setdefault("spec", {})
    causes: list[Cause] = []
    if old is None:
        uid = obj["metadata"]["uid"]
        name = obj["metadata"]["name"]
        if spec.get("completions") is None and spec.get("parallelism") is None:
            spec["completions"] = 1
        spec.setdefault("parallelism", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
            template_meta.setdefault("labels", {}).update(
                {
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": uid,
                    "job-name": name,
                }
            )
            if not obj["metadata"].get("labels"):
                obj["metadata"]["labels"] = dict(template_meta["labels"])
    template = spec.get("template") or {}
    causes += label_causes((template.get("metadata") or {}).get("labels"), "spec.template.labels")
    if (template.get("spec") or {}).get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(_required("spec.template.spec.restartPolicy", 'valid values: "OnFailure", "Never"'))
    causes += _containers_causes(template.get("spec") or {}, "spec.template.spec")
    if spec.get("completionMode") == "Indexed" and spec.get("completions") is None:
        causes.append(_required("spec.completions", "when completion mode is Indexed"))
    if old is not None:
        for field in ("template", "selector", "completionMode"):
            if spec.get(field) != old.get("spec", {}).get(field):
                causes.append(_invalid(f"spec.{field}", "...", "field is immutable"))
    return causes


def _containers_causes(pod_spec: JSON, field: str) -> list[Cause]:
    containers = pod_spec.get("containers") or []
    if not containers:
        return [_required(f"{field}.containers")]
    causes: list[Cause] = []
    for i, container in enumerate(containers):
        if not container.get("name"):
            causes.append(_required(f"{field}.containers[{i}].name"))
        if not container.get("image"):
            causes.append(_required(f"{field}.containers[{i}].image"))
        elif container["image"] != container["image"].strip():
            causes.append(_invalid(f"{field}.containers[{i}].image", container["image"],
                                   "must not have leading or trailing whitespace"))
        causes += _resources_causes(container.get("resources") or {}, f"{field}.containers[{i}].resources")
        for j, mount in enumerate(container.get("volumeMounts") or []):
            sub = mount.get("subPath") or ""
            if sub.startswith("/") or ".." in sub.split("/"):
                causes.append(_invalid(f"{field}.containers[{i}].volumeMounts[{j}].subPath", sub,
                                       "must be a relative path without '..'"))
    return causes + _pod_spec_causes(pod_spec, field)


# k8s.io/apimachinery/pkg/api/resource: <signedNumber><suffix>, suffix binary SI, decimal SI or exponent.
_QUANTITY = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?")
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage"}


def parse_quantity(text: Any) -> Decimal | None:
    """A resource.Quantity's value, or None where the API server answers 'quantities must match
    the regular expression'."""
    m = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return None
    sign, number, suffix = m.group(1), m.group(2), m.group(3) or ""
    value = Decimal(number) * (-1 if sign == "-" else 1)
    if suffix.endswith("i"):
        return value * 1024 ** ("KMGTPE".index(suffix[0]) + 1)
    if suffix[:1] in ("e", "E"):
        return value * Decimal(10) ** int(suffix[1:])
    return value * Decimal(10) ** _DECIMAL[suffix]


def _resources_causes(resources: JSON, field: str) -> list[Cause]:
    """pkg/apis/core/validation ValidateResourceRequirements: names, non-negative quantities,
    requests <= limits, extended resources (a domain-prefixed name) whole and requests == limits."""
    causes: list[Cause] = []
    values: dict[str, dict[str, Decimal]] = {}
    for part in ("requests", "limits"):
        for name, text in (resources.get(part) or {}).items():
            where = f"{field}.{part}[{name}]"
            if name not in _STANDARD_RESOURCES and not name.startswith("hugepages-") and "/" not in name:
                causes.append(_invalid(where, name, "must be a standard resource type or fully qualified"))
            elif "/" in name and label_causes({name: ""}, where):
                causes.append(_invalid(where, name, "must be a standard resource type or fully qualified"))
            value = parse_quantity(text)
            if value is None:
                causes.append(_invalid(where, text, "quantities must match the regular expression "
                                       "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))
                continue
            if value < 0:
                causes.append(_invalid(where, text, "must be greater than or equal to 0"))
            if "/" in name and "kubernetes.io/" not in name and value != value.to_integral_value():
                causes.append(_invalid(where, text, "must be an integer"))
            values.setdefault(part, {})[name] = value
    requests, limits = values.get("requests", {}), values.get("limits", {})
    for name, request in requests.items():
        if name in limits and request > limits[name]:
            causes.append(_invalid(f"{field}.requests[{name}]", str(request), f"must be less than or equal to {name} limit"))
        if "/" in name and "kubernetes.io/" not in name and limits.get(name) != request:
            causes.append(_invalid(f"{field}.requests[{name}]", str(request), f"must be equal to {name} limit"))
    return causes


def _pod_spec_causes(spec: JSON, field: str) -> list[Cause]:
    """The PodSpec fields a resource's author sets through llmfab: node selector (labels),
    tolerations, priority and runtime class names (pkg/apis/core/validation ValidatePodSpec)."""
    causes = label_causes(spec.get("nodeSelector"), f"{field}.nodeSelector")
    for name in ("priorityClassName", "runtimeClassName"):
        value = spec.get(name)
        if value is not None and (len(value) > 253 or not re.fullmatch(_SUBDOMAIN, value)):
            causes.append(_invalid(f"{field}.{name}", value, SUBDOMAIN_MESSAGE))
    for i, t in enumerate(spec.get("tolerations") or []):
        where = f"{field}.tolerations[{i}]"
        key, operator, value = t.get("key") or "", t.get("operator") or "Equal", t.get("value") or ""
        if key:
            causes += [dataclasses.replace(c, field=f"{where}.key") for c in label_causes({key: ""}, where)]
        elif operator != "Exists":
            causes.append(_invalid(f"{where}.operator", operator,
                                   "operator must be Exists when `key` is empty, which means \"match all values and all keys\""))
        if t.get("tolerationSeconds") is not None and t.get("effect") != "NoExecute":
            causes.append(_invalid(f"{where}.effect", t.get("effect"),
                                   "effect must be 'NoExecute' when `tolerationSeconds` is set"))
        if operator == "Exists" and value:
            causes.append(_invalid(f"{where}.operator", value, "value must be empty when `operator` is 'Exists'"))
        elif operator == "Equal" and label_causes({"k": value}, where):
            causes.append(_invalid(f"{where}.value", value, LABEL_VALUE_MESSAGE))
    return causes


def _pod(obj: JSON, old: JSON | None) -> list[Cause]:
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    if old is None:
        return _containers_causes(spec, "spec")

    def without_images(pod_spec: JSON) -> JSON:
        return {**pod_spec, "containers": [{**c, "image": None} for c in pod_spec.get("containers", [])]}

    if without_images(spec) != without_images(old.get("spec", {})):
        message = "pod updates may not change fields other than `spec.containers[*].image`"
        return [_forbidden("spec", message)]
    return []


def _deployment(obj: JSON, old: JSON | None) -> list[Cause]:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    spec.setdefault(
        "strategy", {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    )
    selector = (spec.get("selector") or {}).get("matchLabels")
    if not spec.get("selector"):
        return [_required("spec.selector")]
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    causes = label_causes(labels, "spec.template.metadata.labels")
    strategy = spec["strategy"]
    if strategy.get("type") == "Recreate" and strategy.get("rollingUpdate") is not None:
        causes.append(_forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'"))
    if selector and any(labels.get(k) != v for k, v in selector.items()):
        causes.append(
            _invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`")
        )
    if old is not None and spec.get("selector") != old.get("spec", {}).get("selector"):
        causes.append(_invalid("spec.selector", spec.get("selector"), "field is immutable"))
    return causes + _containers_causes((spec.get("template") or {}).get("spec") or {}, "spec.template.spec")


_cluster_ips = (str(ip) for ip in itertools.islice(ipaddress.ip_network("10.43.0.0/16").hosts(), 10, None))


def _service(obj: JSON, old: JSON | None) -> list[Cause]:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if old is None and spec.get("clusterIP") != "None" and spec["type"] != "ExternalName":
        spec["clusterIP"] = next(_cluster_ips)
        spec["clusterIPs"] = [spec["clusterIP"]]
    elif old is not None:
        spec["clusterIP"] = old.get("spec", {}).get("clusterIP")
    if spec["type"] != "ExternalName" and spec.get("clusterIP") != "None" and not spec.get("ports"):
        return [_required("spec.ports")]
    causes: list[Cause] = []
    seen: set[tuple[Any, Any]] = set()
    for i, port in enumerate(spec.get("ports") or []):
        key = (port.get("port"), port.get("protocol", "TCP"))
        if key in seen:
            causes.append(Cause(f"spec.ports[{i}]", "FieldValueDuplicate", f"Duplicate value: {port}"))
        seen.add(key)
    return causes


def _namespace(obj: JSON, old: JSON | None) -> list[Cause]:
    if old is None:
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    return []


BUILTIN: dict[tuple[str, str], Callable[[JSON, JSON | None], list[Cause]]] = {
    ("batch", "jobs"): _job,
    ("", "pods"): _pod,
    ("apps", "deployments"): _deployment,
    ("", "services"): _service,
    ("", "namespaces"): _namespace,
}
