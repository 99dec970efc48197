"""``/openapi/v3``: what kubectl reads before ``apply`` and for ``explain``.

kubectl's ``--validate=strict`` (the default) first asks the group-version's OpenAPI v3 document
whether the kind's PATCH operation takes the ``fieldValidation`` query parameter; when it does,
kubectl leaves validation to the server (``?fieldValidation=Strict``). Its apply patcher uses a
strategic merge patch only where the PATCH operation lists that media type, so it is offered for no
kind here: kubectl then builds a strategic merge patch from its compiled-in types for built-in kinds
and a JSON merge patch for custom resources, as against a real server. Custom resources carry their
CRD schema (with ``metadata`` referring to ObjectMeta), so ``kubectl explain`` shows it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from .patches import CUSTOM_RESOURCE_PATCHES
from .resources import ResourceType

JSON = dict[str, Any]

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_META_SCHEMA: JSON = {
    "description": "ObjectMeta is metadata that all persisted resources must have.",
    "type": "object",
    "properties": {
        name: {"type": kind, "description": f"{name} of the object."}
        for name, kind in (
            ("name", "string"),
            ("namespace", "string"),
            ("generateName", "string"),
            ("uid", "string"),
            ("resourceVersion", "string"),
            ("generation", "integer"),
            ("creationTimestamp", "string"),
            ("deletionTimestamp", "string"),
            ("labels", "object"),
            ("annotations", "object"),
            ("finalizers", "array"),
            ("ownerReferences", "array"),
        )
    },
}
_META_SCHEMA["properties"]["finalizers"]["items"] = {"type": "string"}
_META_SCHEMA["properties"]["ownerReferences"]["items"] = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
}
_META_SCHEMA["properties"]["labels"]["additionalProperties"] = {"type": "string"}
_META_SCHEMA["properties"]["annotations"]["additionalProperties"] = {"type": "string"}


def gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(rt: ResourceType) -> str:
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{rt.version}.{rt.kind}"


def _gvk(rt: ResourceType) -> list[JSON]:
    return [{"group": rt.group, "version": rt.version, "kind": rt.kind}]


def _operation(rt: ResourceType, action: str, verb: str, body: bool = False) -> JSON:
    params = [
        {"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for p in ("dryRun", "fieldManager")
    ]
    if verb in ("post", "put", "patch"):
        params.append(
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        )
    op: JSON = {
        "operationId": f"{action}{rt.kind}",
        "parameters": params,
        "responses": {
            "200": {
                "description": "OK",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{_schema_name(rt)}"}}
                },
            }
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    }
    if body:
        types = CUSTOM_RESOURCE_PATCHES if verb == "patch" else ("application/json",)
        op["requestBody"] = {"content": {t: {"schema": {"type": "object"}} for t in types}}
    return op


def _paths(rt: ResourceType) -> JSON:
    prefix = "/" + gv_path(rt.group, rt.version) + ("/namespaces/{namespace}" if rt.namespaced else "")
    collection = f"{prefix}/{rt.plural}"
    item = f"{collection}/{{name}}"
    paths = {
        collection: {"get": _operation(rt, "list", "get"), "post": _operation(rt, "post", "post", body=True)},
        item: {
            "get": _operation(rt, "get", "get"),
            "put": _operation(rt, "put", "put", body=True),
            "patch": _operation(rt, "patch", "patch", body=True),
            "delete": _operation(rt, "delete", "delete"),
        },
    }
    if rt.has_status:
        paths[f"{item}/status"] = {
            "get": _operation(rt, "get", "get"),
            "patch": _operation(rt, "patch", "patch", body=True),
        }
    return paths


def _kind_schema(rt: ResourceType) -> JSON:
    if rt.schema is None:
        return {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": _gvk(rt),
        }
    schema = json.loads(json.dumps(rt.schema))
    schema.setdefault("properties", {})["metadata"] = {
        "allOf": [{"$ref": f"#/components/schemas/{OBJECT_META}"}],
        "default": {},
    }
    schema["x-kubernetes-group-version-kind"] = _gvk(rt)
    return schema


def group_version_doc(types: Iterable[ResourceType]) -> JSON:
    paths: JSON = {}
    schemas: JSON = {OBJECT_META: _META_SCHEMA}
    for rt in types:
        paths.update(_paths(rt))
        schemas[_schema_name(rt)] = _kind_schema(rt)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def root_doc(docs: dict[str, JSON]) -> JSON:
    """``/openapi/v3``: each group-version's document by a content-hashed URL."""
    paths = {}
    for path, doc in docs.items():
        digest = hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:128].upper()
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}
