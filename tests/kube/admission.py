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

import ipaddress
import itertools
import re
from collections.abc import Callable
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
    return []


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
