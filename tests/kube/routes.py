"""Request paths and the authorization attributes of a request (kubernetes.io "Authorization":
request verbs; "Kubernetes API Concepts": resource URIs)."""

from __future__ import annotations

from dataclasses import dataclass

import kmock


@dataclass(frozen=True)
class Route:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_route(path: str) -> Route | None:
    """``/api/v1/namespaces/ns/pods/p/status`` -> its parts; None for discovery and other paths."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    namespace_subresource = len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[0] == "namespaces" and len(rest) >= 3 and not (group == "" and namespace_subresource):
        namespace, rest = rest[1], rest[2:]
    return Route(
        group, version, rest[0], namespace, rest[1] if len(rest) > 1 else None, "/".join(rest[2:]) or None
    )


def verb_of(method: str, route: Route | None, params: dict[str, str]) -> str:
    """The authorization verb (kubernetes.io "Authorization": Request verbs)."""
    if route is None:
        return method.lower()
    if method == "GET":
        return "watch" if params.get("watch") in ("true", "1") else "get" if route.name else "list"
    return {
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if route.name else "deletecollection",
    }.get(method, method.lower())


@dataclass
class LoggedRequest:
    method: str
    path: str
    params: dict[str, str]
    verb: str
    api_group: str | None
    resource: str | None
    subresource: str | None
    namespace: str | None
    name: str | None
    code: int | None = None
    user_agent: str = ""  # who asked: kopf, the operator's client, a workload, kubectl


def kmock_action(verb: str) -> kmock.action | None:
    names = {
        "list": "LIST",
        "watch": "WATCH",
        "get": "FETCH",
        "create": "CREATE",
        "patch": "UPDATE",
        "delete": "DELETE",
    }
    return kmock.action(names[verb]) if verb in names else None
