"""``llmfab explain KIND[.field.path]``: field documentation from the CRD schema, like kubectl explain."""

from __future__ import annotations

from llmfab.api import resource_class
from llmfab.api.crds import openapi_schema
from llmfab.api.reference import type_of


def explain_text(target: str) -> str:
    kind, *path = target.split(".")
    try:
        cls = resource_class(kind)
    except Exception as e:
        raise KeyError(str(e)) from None
    node = openapi_schema(cls)
    walked = []
    for part in path:
        props = node.get("properties") or node.get("items", {}).get("properties") or {}
        if part not in props:
            known = ", ".join(props) or "none"
            raise KeyError(f"{cls.KIND}.{'.'.join([*walked, part])}: no such field; fields here: {known}")
        node = props[part]
        walked.append(part)
    lines = [f"KIND:     {cls.KIND}", "VERSION:  llmfab.dev/v1alpha1", ""]
    if walked:
        lines += [f"FIELD:    {'.'.join(walked)} <{type_of(node)}>", ""]
    if node.get("description"):
        lines += ["DESCRIPTION:", f"    {node['description']}", ""]
    props = node.get("properties") or node.get("items", {}).get("properties") or {}
    required = set(node.get("required", []))
    if props:
        lines.append("FIELDS:")
        for name, child in props.items():
            flags = " -required-" if name in required else ""
            default = (
                f" (default {child['default']})" if "default" in child and child["default"] != {} else ""
            )
            enum = f" one of {child['enum']}" if "enum" in child else ""
            lines.append(f"  {name:<28}<{type_of(child)}>{flags}{enum}{default}")
            if child.get("description"):
                lines.append(f"    {child['description']}")
    return "\n".join(lines)
