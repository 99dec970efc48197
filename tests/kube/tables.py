"""Server-side printing: the ``meta.k8s.io/v1`` Table kubectl asks for with
``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``.

For a custom resource the columns are ``Name`` then the CRD's ``additionalPrinterColumns``, each
cell converted by its column type as apiextensions-apiserver's ``tableconvertor`` does (``date``
becomes a human-readable age, as ``ConvertToHumanReadableDateType`` does on the server, so kubectl
only prints it). Built-in kinds get ``Name`` and ``Age``.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any

JSON = dict[str, Any]

NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in accept and "g=meta.k8s.io" in accept


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def json_path(obj: Any, path: str) -> Any:
    """The simple JSONPath of printer columns: ``.status.phase``, ``.spec.items[0].name``."""
    value = obj
    for key, index in re.findall(r"\.([^.\[\]]+)|\[(\d+)\]", path):
        if key:
            value = value.get(key) if isinstance(value, Mapping) else None
        else:
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
        if value is None:
            return None
    return value


def _cell(column_type: str, value: Any, now: datetime.datetime) -> Any:
    """apiextensions-apiserver tableconvertor's cellForJSONValue."""
    if value is None:
        return None
    match column_type:
        case "integer" if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
        case "number" if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        case "boolean" if isinstance(value, bool):
            return value
        case "string" if isinstance(value, str):
            return value
        case "date" if isinstance(value, str):
            try:
                when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                return "<invalid>"
            return human_duration((now - when).total_seconds())
        case "string":
            return str(value)
    return None


def columns_for(printer_columns: Iterable[Mapping[str, Any]] | None) -> list[JSON]:
    """``Name`` then the CRD's printer columns, or ``Name``, ``Age`` for a built-in kind."""
    columns = [dict(NAME_COLUMN)]
    for col in printer_columns if printer_columns is not None else [AGE_COLUMN]:
        columns.append(
            {
                "name": col["name"],
                "type": col["type"],
                "format": col.get("format", ""),
                "description": col.get("description")
                or f"Custom resource definition column (in JSONPath format): {col['jsonPath']}",
                "priority": col.get("priority", 0),
                "jsonPath": col["jsonPath"],
            }
        )
    return columns


def _row_object(obj: JSON, include: str) -> JSON | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(
    objects: Iterable[JSON],
    printer_columns: Iterable[Mapping[str, Any]] | None,
    *,
    resource_version: str,
    include_object: str = "Metadata",
    with_columns: bool = True,
    continue_token: str | None = None,
) -> JSON:
    """A Table of ``objects`` (``includeObject``: None, Metadata or Object, as the query asks)."""
    now = datetime.datetime.now(datetime.UTC)
    columns = columns_for(printer_columns)
    rows = []
    for obj in objects:
        cells = [obj.get("metadata", {}).get("name")]
        cells += [_cell(c["type"], json_path(obj, c["jsonPath"]), now) for c in columns[1:]]
        row: JSON = {"cells": cells}
        if (shown := _row_object(obj, include_object)) is not None:
            row["object"] = shown
        rows.append(row)
    metadata: JSON = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [{k: v for k, v in c.items() if k != "jsonPath"} for c in columns]
        if with_columns
        else [],
        "rows": rows,
    }
