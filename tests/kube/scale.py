"""The ``/scale`` subresource of a custom resource whose CRD declares one.

What the API reference says of ``CustomResourceSubresourceScale`` (apiextensions.k8s.io/v1):
``specReplicasPath`` is the JSON path that corresponds to Scale ``spec.replicas``; "If there is no
value under the given path in the custom resource, the /scale subresource will return an error on
GET"; ``statusReplicasPath`` maps ``status.replicas``, which "will default to 0" when missing;
``labelSelectorPath`` maps ``status.selector``, which "will default to the empty string". The
payload is an ``autoscaling/v1`` Scale. A PUT or PATCH of ``/scale`` writes the new
``spec.replicas`` into the custom resource, which is then admitted like any update of it (its
schema and CEL rules decide), and answers with the Scale of the stored object.

The error shapes are apiextensions-apiserver's ScaleREST: a GET without the field is an internal
error naming the path; a patch that leaves the replicas unset (the field was missing and the patch
did not give it) is a bad request.
"""

from __future__ import annotations

import copy
from typing import Any

from . import statuses
from .patches import apply_patch

JSON = dict[str, Any]
UNSET = -(2**31)  # the smallest int32: "the field was not there", as ScaleREST marks it


def _path(json_path: str) -> list[str]:
    return json_path.removeprefix(".").split(".")


def _find(obj: JSON, json_path: str) -> tuple[Any, bool]:
    node: Any = obj
    for key in _path(json_path):
        if not isinstance(node, dict) or key not in node:
            return None, False
        node = node[key]
    return node, True


def _int(value: Any, json_path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise statuses.internal(f"{json_path} accessor error: {value!r} is of the type {type(value).__name__}, "
                                "expected int64")
    return value


def scale_of(obj: JSON, paths: JSON) -> tuple[JSON, bool]:
    """The autoscaling/v1 Scale of ``obj`` and whether its spec replicas field exists."""
    replicas, found = _find(obj, paths["specReplicasPath"])
    status_replicas, status_found = _find(obj, paths["statusReplicasPath"])
    selector = ""
    if paths.get("labelSelectorPath"):
        value, _ = _find(obj, paths["labelSelectorPath"])
        selector = value if isinstance(value, str) else ""
    meta = obj["metadata"]
    scale = {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                     if k in meta},
        "spec": {"replicas": _int(replicas, paths["specReplicasPath"]) if found else 0},
        "status": {"replicas": _int(status_replicas, paths["statusReplicasPath"]) if status_found else 0,
                   "selector": selector},
    }
    return scale, found


def read(obj: JSON, paths: JSON) -> JSON:
    """GET: the Scale, or the server's error when the spec replicas field is missing."""
    scale, found = scale_of(obj, paths)
    if not found:
        raise statuses.internal(f'the spec replicas field "{paths["specReplicasPath"]}" does not exist')
    return scale


def patched(obj: JSON, paths: JSON, content_type: str, body: bytes) -> JSON:
    """PATCH: the Scale after the patch (a missing spec replicas field reads as unset)."""
    scale, found = scale_of(obj, paths)
    if not found:
        scale["spec"]["replicas"] = UNSET
    return apply_patch(content_type, scale, body, custom=False)


def updated_object(obj: JSON, paths: JSON, scale: Any) -> JSON:
    """The custom resource with the Scale's ``spec.replicas`` written at ``specReplicasPath``."""
    if not isinstance(scale, dict) or scale.get("kind", "Scale") != "Scale":
        raise statuses.bad_request(f"wrong object passed to Scale update: {scale!r}")
    replicas = (scale.get("spec") or {}).get("replicas")
    if replicas is None or replicas == UNSET:
        raise statuses.bad_request(f'the spec replicas field "{paths["specReplicasPath"]}" cannot be empty')
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise statuses.bad_request(f"spec.replicas: {replicas!r} is not an integer")
    out = copy.deepcopy(obj)
    node = out
    *parents, last = _path(paths["specReplicasPath"])
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = replicas
    rv = (scale.get("metadata") or {}).get("resourceVersion")
    if rv:  # the client's precondition: a stale one is a conflict
        out["metadata"]["resourceVersion"] = rv
    return out
