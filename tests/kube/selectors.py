"""``labelSelector`` and ``fieldSelector`` query parameters, as kubernetes.io documents them.

Labels ("Labels and Selectors"): equality (``a=b``, ``a==b``, ``a!=b``), set-based
(``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``), comma meaning AND. Fields ("Field Selectors"):
``=``, ``==``, ``!=`` on the fields a resource supports; every resource supports
``metadata.name`` and ``metadata.namespace``, others answer 400 ``field label not supported``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]

# Beyond metadata.name/namespace, the fields the built-in registries index (pkg/registry/*/strategy.go).
FIELDS_BY_RESOURCE: dict[tuple[str, str], set[str]] = {
    ("", "pods"): {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    ("", "events"): {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    ("", "secrets"): {"type"},
    ("", "namespaces"): {"status.phase"},
    ("", "nodes"): {"spec.unschedulable"},
    ("batch", "jobs"): {"status.successful"},
}


class SelectorError(ValueError):
    pass


_REQUIREMENT = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<absent>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*(?:,|$)"
)


def label_selector(text: str | None) -> Predicate:
    """A predicate over an object's ``metadata.labels``."""
    if not text:
        return lambda obj: True
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    pos = 0
    while pos < len(text):
        m = _REQUIREMENT.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"unable to parse requirement: {text[pos:]!r} in labelSelector {text!r}")
        pos = m.end()
        if m["absent"]:
            checks.append(lambda labels, k=m["absent"]: k not in labels)
        elif m["op"]:
            key, value = m["key"], m["value"]
            if m["op"] == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            if m["setop"] == "in":
                checks.append(lambda labels, k=m["key"], vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=m["key"], vs=values: labels.get(k) not in vs)
        else:
            checks.append(lambda labels, k=m["key"]: k in labels)

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return matches


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """A field's value the way field selectors compare it: a string, ``""`` when unset."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping) and path == "source":
        value = value.get("component")
    return "" if value is None else str(value)


def field_selector(text: str | None, group: str, plural: str) -> Predicate:
    """A predicate over the fields ``(group, plural)`` supports; SelectorError for any other field."""
    if not text:
        return lambda obj: True
    allowed = {"metadata.name", "metadata.namespace"} | FIELDS_BY_RESOURCE.get((group, plural), set())
    checks: list[Predicate] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"([\w.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise SelectorError(f"invalid selector: {term!r}; can't understand {term!r}")
        path, op, value = m.groups()
        if path not in allowed:
            raise SelectorError(f"field label not supported: {path}")
        if op == "!=":
            checks.append(lambda obj, p=path, v=value: field_value(obj, p) != v)
        else:
            checks.append(lambda obj, p=path, v=value: field_value(obj, p) == v)
    return lambda obj: all(check(obj) for check in checks)
