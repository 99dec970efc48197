"""The one validation path: YAML documents → typed resources, or errors that name the field and the fix.

``llmfab validate``, ``llmfab up`` and every workload entrypoint call :func:`load_resources` /
:func:`parse_resource`, so a bad resource reads the same everywhere:
``TrainingRun/tiny: spec.model.hidden: 500 is not divisible by spec.model.heads (8); choose …``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmfab.api.common import GROUP_VERSION, Resource, reject_snake_case_keys
from llmfab.api.dataset import Dataset
from llmfab.api.inference_service import InferenceService
from llmfab.api.reward_model import RewardModel
from llmfab.api.training_run import TrainingRun

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls for cls in (Dataset, TrainingRun, RewardModel, InferenceService)
}


class ValidationFailed(Exception):
    """One or more resources are invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def resource_class(kind: str) -> type[Resource]:
    """The model class of ``kind``; accepts the kind, its plural or a short name, any case."""
    wanted = kind.lower()
    for cls in KINDS.values():
        if wanted in (cls.KIND.lower(), cls.PLURAL, *cls.SHORT_NAMES):
            return cls
    raise ValidationFailed([f"unknown kind '{kind}'; llmfab kinds are {', '.join(KINDS)}"])


def _location(loc: tuple[int | str, ...], model_cls: type[Any]) -> str:
    """Turn pydantic's loc (python names, list indexes) into the YAML path (camelCase, [i])."""
    from pydantic.alias_generators import to_camel

    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item.startswith(("function-", "tagged-union")) or item in ("is-instance",):
            continue
        else:
            parts.append(("." if parts else "") + to_camel(item))
    return "".join(parts)


def _format_error(err: Any, model_cls: type[Any]) -> str:
    path = _location(tuple(err["loc"]), model_cls)
    msg: str = err["msg"]
    kind = err["type"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        # Cross-field rules already name their fields.
        if msg.startswith(("spec.", "metadata.")) or not path:
            return msg
        return f"{path}: {msg}" if not msg.startswith(path) else msg
    if kind == "extra_forbidden":
        return f"{path}: unknown field; remove it or check its spelling (see `llmfab explain`)"
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "string_pattern_mismatch" and path.endswith("name"):
        return (
            f"{path}: {err.get('input')!r} is not a valid name; use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label)"
        )
    given = err.get("input")
    shown = f" (got {given!r})" if given is not None and not isinstance(given, dict | list) else ""
    return f"{path}: {msg}{shown}"


def parse_resource(doc: dict[str, Any], origin: str = "") -> Resource:
    """Validate one YAML document into its kind's model; raise :class:`ValidationFailed`."""
    where = f"{origin}: " if origin else ""
    if not isinstance(doc, dict):
        raise ValidationFailed([f"{where}expected a mapping with apiVersion/kind/metadata/spec"])
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    if doc.get("apiVersion") != GROUP_VERSION:
        raise ValidationFailed(
            [f"{where}{kind or '?'}/{name}: apiVersion: {doc.get('apiVersion')!r}; write '{GROUP_VERSION}'"]
        )
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValidationFailed(
            [f"{where}kind: {kind!r} is not an llmfab kind; use one of {', '.join(KINDS)}"]
        )
    cls = KINDS[kind]
    try:
        reject_snake_case_keys(doc.get("spec"), "spec.")
    except ValueError as e:
        raise ValidationFailed([f"{where}{kind}/{name}: {e}"]) from None
    try:
        return cls.model_validate(doc)
    except ValidationError as e:
        errors = [f"{where}{kind}/{name}: {_format_error(err, cls)}" for err in e.errors()]
        raise ValidationFailed(errors) from None


def _yaml_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml")))
        elif p.exists():
            files.append(p)
        else:
            raise ValidationFailed([f"{p}: no such file or directory"])
    return files


def load_resources(paths: Iterable[str | Path]) -> list[Resource]:
    """Read every resource in the given files/directories; collect all errors before raising.

    Relative source paths in a Dataset are resolved against the directory of the file that names
    them, so a pipeline file works from any working directory.
    """
    resources: list[Resource] = []
    errors: list[str] = []
    for path in _yaml_files(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as e:
            errors.append(f"{path}: not valid YAML: {e}")
            continue
        for doc in docs:
            if doc is None:
                continue
            try:
                res = parse_resource(doc, str(path))
            except ValidationFailed as e:
                errors.extend(e.errors)
                continue
            res.metadata.annotations.setdefault("llmfab.dev/source-dir", str(path.parent.resolve()))
            resources.append(res)
    seen: dict[tuple[str, str], int] = {}
    for res in resources:
        key = (res.KIND, res.name)
        seen[key] = seen.get(key, 0) + 1
    errors.extend(
        f"{k}/{n}: defined {c} times; names are unique per kind" for (k, n), c in seen.items() if c > 1
    )
    if errors:
        raise ValidationFailed(errors)
    return resources


def dump_resource(res: Resource) -> dict[str, Any]:
    """The resource as camelCase YAML-ready data: defaults included, status left out.

    Explicit nulls in the spec are kept (``prometheusPort: null`` means "off", and dropping it
    would bring back the default on the next load); unset server fields of metadata are dropped.
    """
    data: dict[str, Any] = res.model_dump(mode="json", by_alias=True, exclude={"status"})
    data["metadata"] = {k: v for k, v in data["metadata"].items() if v not in (None, [], {})}
    return data
