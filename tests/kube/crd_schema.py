"""What the API server does with a custom resource and its CRD's structural ``openAPIV3Schema``.

Kubernetes documents the order ("Specifying a structural schema", "Defaulting", "Validation rules"
in kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/):
unknown fields are pruned (or refused under ``fieldValidation=Strict``), ``null`` in a field that
is not ``nullable`` is pruned, defaults are applied, then the object is validated against the
schema (OpenAPI v3.0, checked here as JSON Schema Draft 4 with ``nullable`` turned into a
``"null"`` type) and against the ``x-kubernetes-validations`` CEL rules, where a number field is a
CEL ``double``. Errors are shaped like the server's ``field.Error``: a field path and a message
such as ``Invalid value: "object": hidden must be divisible by heads``.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from typing import Any

import cel
import jsonschema

JSON = dict[str, Any]


@dataclass(frozen=True)
class Cause:
    """One ``details.causes`` entry of an ``Invalid`` Status (``field`` is ``<nil>`` for the root)."""

    field: str
    reason: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class CelResult:
    path: str
    rule: str
    message: str
    ok: bool


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def apply_defaults(schema: JSON, obj: Any) -> Any:
    """Structural defaulting: a missing field with a ``default`` gets it, recursively."""
    if isinstance(obj, dict) and schema.get("properties"):
        for name, child in schema["properties"].items():
            if name not in obj and "default" in child:
                obj[name] = copy.deepcopy(child["default"])
            if name in obj:
                obj[name] = apply_defaults(child, obj[name])
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key in obj:
            obj[key] = apply_defaults(schema["additionalProperties"], obj[key])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], x) for x in obj]
    return obj


def prune(schema: JSON, obj: Any, path: str = "", *, root: bool = True) -> list[str]:
    """Drop fields the schema does not declare and nulls it does not allow; return the unknown paths.

    ``apiVersion``, ``kind`` and ``metadata`` at the root are the server's own (ObjectMeta is not
    pruned by the CRD schema).
    """
    unknown: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for key in list(obj):
            if root and key in ("apiVersion", "kind", "metadata"):
                continue
            child = (
                (props or {}).get(key) if props is not None else (extra if isinstance(extra, dict) else None)
            )
            if child is None:
                if not keep_unknown:
                    del obj[key]
                    unknown.append(_join(path, key))
                continue
            if obj[key] is None and not child.get("nullable"):
                del obj[key]
                continue
            unknown.extend(prune(child, obj[key], _join(path, key), root=False))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            unknown.extend(prune(schema["items"], item, _join(path, i), root=False))
    return unknown


def _draft4(node: Any) -> Any:
    """OpenAPI v3.0 -> JSON Schema Draft 4: ``nullable: true`` becomes a ``"null"`` type."""
    if isinstance(node, list):
        return [_draft4(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft4(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out.pop("type", None)
    return out


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_draft4(json.loads(schema_json)))


def _shown(value: Any) -> str:
    """How Go's field errors print a bad value: strings quoted, objects and lists by type name."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number", dict: "object", list: "array"}


def _schema_cause(err: jsonschema.ValidationError) -> Cause:
    path = ""
    for key in err.absolute_path:
        path = _join(path, key)
    where = path or "<nil>"
    v, arg = err.instance, err.validator_value
    match err.validator:
        case "required":
            missing = err.message.split("'")[1]
            return Cause(_join(path, missing), "FieldValueRequired", "Required value")
        case "type":
            actual = "null" if v is None else _JSON_TYPES.get(type(v), "object")
            expected = arg[0] if isinstance(arg, list) else arg
            message = f'Invalid value: "{actual}": {where} in body must be of type {expected}: "{actual}"'
            return Cause(where, "FieldValueTypeInvalid", message)
        case "enum":
            allowed = ", ".join(json.dumps(a) for a in arg if a is not None)
            return Cause(
                where,
                "FieldValueNotSupported",
                f"Unsupported value: {_shown(v)}: supported values: {allowed}",
            )
        case "minimum" | "maximum":
            exclusive = err.schema.get(
                "exclusiveMinimum" if err.validator == "minimum" else "exclusiveMaximum"
            )
            word = "greater" if err.validator == "minimum" else "less"
            bound = f"{word} than" if exclusive else f"{word} than or equal to"
            return Cause(
                where,
                "FieldValueInvalid",
                f"Invalid value: {_shown(v)}: {where} in body should be {bound} {arg}",
            )
        case "pattern":
            return Cause(
                where,
                "FieldValueInvalid",
                f"Invalid value: {_shown(v)}: {where} in body should match '{arg}'",
            )
        case "maxLength":
            return Cause(where, "FieldValueTooLong", f"Too long: may not be more than {arg} bytes")
        case "minLength":
            message = f"Invalid value: {_shown(v)}: {where} in body should be at least {arg} chars long"
            return Cause(where, "FieldValueInvalid", message)
        case "minItems":
            message = f"Invalid value: {len(v)}: {where} in body should have at least {arg} items"
            return Cause(where, "FieldValueInvalid", message)
        case "maxItems":
            return Cause(where, "FieldValueTooMany", f"Too many: {len(v)}: must have at most {arg} items")
    return Cause(where, "FieldValueInvalid", f"Invalid value: {_shown(v)}: {err.message}")


def schema_causes(schema: JSON, obj: Any) -> list[Cause]:
    """Types, enums, bounds, patterns and required fields, as the server reports them."""
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [_schema_cause(e) for e in errors]


def _cel_values(schema: JSON, obj: Any) -> Any:
    """The object as CEL sees it: a field of OpenAPI type ``number`` is a double."""
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {
            k: _cel_values(props.get(k) or (extra if isinstance(extra, dict) else {}), v)
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [_cel_values(items, x) for x in obj]
    if schema.get("type") == "number" and isinstance(obj, int) and not isinstance(obj, bool):
        return float(obj)
    return obj


_NO_OLD = object()


def _cel_walk(schema: JSON, obj: Any, path: str, old: Any = _NO_OLD) -> list[CelResult]:
    """Rules at each object; a transition rule (one naming ``oldSelf``) only where the object has
    an old value at the same place: on update, and through properties (list items are not
    correlated here, which the server does only for map-typed lists)."""
    results = []
    if isinstance(obj, dict):
        for rule in schema.get("x-kubernetes-validations", []):
            transition = "oldSelf" in rule["rule"]
            if transition and old is _NO_OLD:
                continue
            try:
                ok = bool(cel.evaluate(rule["rule"], {"self": obj, **({"oldSelf": old} if transition else {})}))
            except Exception as exc:  # the server reports an evaluation error as a failed rule
                results.append(
                    CelResult(path, rule["rule"], f"{rule['rule']}: evaluation error: {exc}", False)
                )
                continue
            results.append(
                CelResult(path, rule["rule"], rule.get("message") or f"failed rule: {rule['rule']}", ok)
            )
        for name, child in (schema.get("properties") or {}).items():
            if name in obj and obj[name] is not None:
                before = old.get(name, _NO_OLD) if isinstance(old, dict) else _NO_OLD
                results.extend(_cel_walk(child, obj[name], _join(path, name), _NO_OLD if before is None else before))
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            results.extend(_cel_walk(schema["items"], item, _join(path, i)))
    return results


def cel_results(schema: JSON, obj: Any, old: Any = None) -> list[CelResult]:
    """Evaluate every ``x-kubernetes-validations`` rule at its place in the object; transition
    rules (``oldSelf``) only given the ``old`` object of an update."""
    before = _NO_OLD if old is None else _cel_values(schema, old)
    return _cel_walk(schema, _cel_values(schema, obj), "", before)


def admission_causes(schema: JSON, obj: Any, old: Any = None) -> list[Cause]:
    """Everything the server refuses a (pruned, defaulted) custom resource for; empty if valid.

    CEL rules run only on an object that passed the schema, as their types assume it.
    """
    causes = schema_causes(schema, obj)
    if causes:
        return causes
    return [
        Cause(r.path or "<nil>", "FieldValueInvalid", f'Invalid value: "object": {r.message}')
        for r in cel_results(schema, obj, old)
        if not r.ok
    ]
