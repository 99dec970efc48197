"""Generate ``apiextensions.k8s.io/v1`` CRDs from the pydantic models.

pydantic's JSON schema is the starting point; this module turns it into a *structural* OpenAPI v3
schema the API server accepts: ``$ref`` inlined, ``Optional`` as ``nullable``, ``const`` as
``enum``, draft-2020 exclusive bounds as OpenAPI 3.0 booleans, free-form maps marked
``x-kubernetes-preserve-unknown-fields``, defaults for nested objects so the server's defaulting
matches pydantic's, and every model's :class:`~llmfab.api.common.CelRule` as an
``x-kubernetes-validations`` entry. The committed CRDs must equal this output (a test checks).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from llmfab.api.common import API_GROUP, API_VERSION, DNS1123_LABEL, Resource

JSON = dict[str, Any]

_DROP_KEYS = {"title", "discriminator"}


def _exclusive_bounds(node: JSON) -> None:
    for key, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[plain] = value
            node[key] = True


def _structural(node: JSON, defs: JSON) -> JSON:
    """Rewrite one pydantic JSON-schema node (recursively) into structural OpenAPI v3."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = _structural(target, defs)
        for key, value in node.items():
            if key not in _DROP_KEYS:
                merged[key] = copy.deepcopy(value)
        node = merged
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {options} structurally")
        inner = _structural(options[0], defs)
        inner.update({k: v for k, v in node.items() if k not in _DROP_KEYS})
        inner["nullable"] = True
        node = inner
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    for key in _DROP_KEYS:
        node.pop(key, None)
    if node.get("default", 0) is None:
        node.pop("default")
    _exclusive_bounds(node)
    if "properties" in node:
        node["properties"] = {k: _structural(v, defs) for k, v in node["properties"].items()}
        node.setdefault("type", "object")
    if "items" in node:
        node["items"] = _structural(node["items"], defs)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        node["additionalProperties"] = _structural(extra, defs)
        if "description" in node["additionalProperties"]:  # a model's docstring, one line as fields have
            node["additionalProperties"]["description"] = " ".join(node["additionalProperties"]["description"].split())
    elif node.get("type") == "object" and "properties" not in node:
        node.pop("additionalProperties", None)
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("additionalProperties") is False:
        node.pop("additionalProperties")  # structural schemas prune unknown fields instead
    return node


def openapi_schema(cls: type[Resource]) -> JSON:
    """The ``openAPIV3Schema`` of one kind."""
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    spec_schema = _structural(raw["properties"]["spec"], defs)
    status_schema = _structural(raw["properties"]["status"], defs)
    status_schema.pop("nullable", None)
    status_schema.pop("default", None)
    return {
        "type": "object",
        "description": " ".join((cls.__doc__ or cls.KIND).split()),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"self.metadata.name.size() <= 63 && self.metadata.name.matches('{DNS1123_LABEL}')",
                "message": "metadata.name must be a DNS-1123 label (lowercase letters, digits, '-'; ≤ 63)",
            }
        ],
    }


# Every kind's compute so far (status.usage): GPU hours over all attempts, and cost where priced.
USAGE_COLUMNS: tuple[JSON, ...] = (
    {"name": "GPU-h", "type": "number", "jsonPath": ".status.usage.gpuHours"},
    {"name": "Cost", "type": "number", "jsonPath": ".status.usage.cost"},
)


def printer_columns(cls: type[Resource]) -> list[JSON]:
    columns: list[JSON] = [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]
    columns.extend(dict(c) for c in cls.PRINTER_COLUMNS)
    columns.extend(dict(c) for c in USAGE_COLUMNS)
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return columns


def build_crd(cls: type[Resource]) -> JSON:
    """One CustomResourceDefinition manifest (a plain dict)."""
    singular = cls.KIND.lower()
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{cls.PLURAL}.{API_GROUP}",
            "labels": {"app.kubernetes.io/name": "llmfab", "app.kubernetes.io/part-of": "llmfab"},
        },
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": cls.KIND,
                "listKind": f"{cls.KIND}List",
                "plural": cls.PLURAL,
                "singular": singular,
                "shortNames": list(cls.SHORT_NAMES),
                "categories": ["llmfab"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}, **({"scale": dict(cls.SCALE_SUBRESOURCE)}
                                                      if cls.SCALE_SUBRESOURCE else {})},
                    "additionalPrinterColumns": printer_columns(cls),
                    "schema": {"openAPIV3Schema": openapi_schema(cls)},
                }
            ],
        },
    }


def render_crd(cls: type[Resource]) -> str:
    header = "# Generated by `llmfab crds` from llmfab/api; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(cls), sort_keys=False, allow_unicode=True, width=120)


def crd_filename(cls: type[Resource]) -> str:
    return f"{API_GROUP}_{cls.PLURAL}.yaml"


def write_crds(out: Path) -> list[Path]:
    """Write one file per kind into ``out`` (created); return the paths."""
    from llmfab.api.loading import KINDS

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in KINDS.values():
        path = out / crd_filename(cls)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(render_crd(cls))
        tmp.replace(path)
        written.append(path)
    return written
