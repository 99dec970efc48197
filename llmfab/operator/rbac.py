"""Least-privilege RBAC rules, as data: what the operator and the workload pods may do.

The chart's ClusterRole/Role templates render exactly these rules (a test compares them), and the
operator tests check every API call the operator made against the emulator is allowed by them.
"""

from __future__ import annotations

from typing import Any

from llmfab.api import KINDS
from llmfab.api.common import API_GROUP

Rule = dict[str, list[str]]

READ = ["get", "list", "watch"]
OWN = [*READ, "create", "patch", "update", "delete"]
PLURALS = sorted(cls.PLURAL for cls in KINDS.values())


def operator_rules() -> list[Rule]:
    """The operator: its four kinds (and their status), the children it creates, events, and what
    kopf reads to run (namespaces for namespace patterns, CRDs to find the kinds)."""
    return [
        {"apiGroups": [API_GROUP], "resources": PLURALS, "verbs": [*READ, "patch", "update"]},
        {"apiGroups": [API_GROUP], "resources": [f"{p}/status" for p in PLURALS], "verbs": ["get", "patch", "update"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": OWN},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": OWN},
        {"apiGroups": [""], "resources": ["configmaps", "services"], "verbs": OWN},
        {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": READ},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": READ},
        {"apiGroups": ["monitoring.coreos.com"], "resources": ["servicemonitors"], "verbs": OWN},
        {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": OWN},
    ]


def workload_rules() -> list[Rule]:
    """Workload pods: report their own progress and post events; nothing else."""
    return [
        {"apiGroups": [API_GROUP], "resources": [f"{p}/status" for p in PLURALS], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]


def allows(rules: list[Rule], group: str, resource: str, verb: str) -> bool:
    """Whether RBAC ``rules`` allow ``verb`` on ``resource`` (``plural`` or ``plural/sub``) in
    ``group``, as the API server's RBAC authorizer matches them (``*`` wildcards included)."""
    for rule in rules:
        if not any(g in ("*", group) for g in rule.get("apiGroups", [])):
            continue
        if not any(r in ("*", resource) for r in rule.get("resources", [])):
            continue
        if any(v in ("*", verb) for v in rule.get("verbs", [])):
            return True
    return False


def request_verb(method: str, is_collection: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP request (Kubernetes' request-info rules)."""
    if watch:
        return "watch"
    return {
        "GET": "list" if is_collection else "get",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "deletecollection" if is_collection else "delete",
    }[method.upper()]


def request_info(method: str, path: str, query: dict[str, Any]) -> tuple[str, str, str] | None:
    """(group, resource[/subresource], verb) of a resource request; None for discovery and other
    non-resource URLs (allowed to every authenticated user by ``system:discovery``)."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[:1] == ["watch"]:
        rest, query = rest[1:], {**query, "watch": "true"}
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    if not rest:
        return None
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource = f"{resource}/{rest[2]}"
    watch = str(query.get("watch", "")).lower() in ("true", "1")
    return group, resource, request_verb(method, name is None, watch)
