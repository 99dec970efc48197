"""``llmfab get`` and ``llmfab describe``: kubectl-style views of the local artifact store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from llmfab.api import KINDS, resource_class
from llmfab.api.crds import printer_columns
from llmfab.local.usage_report import usage_lines
from llmfab.stages import spec_file_path
from llmfab.status import events_path, log_path, read_status, status_names, status_path
from llmfab.store import artifact_dir, artifact_root, read_manifest


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _json_path(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.strip(".").split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _format(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def get_table(kind: str | None, name: str | None, root: Path | None = None) -> Table | str:
    root = root or artifact_root()
    classes = [resource_class(kind)] if kind else list(KINDS.values())
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    for col in ("KIND", "NAME", "PHASE", "DETAILS", "AGE"):
        table.add_column(col)
    rows = 0
    for cls in classes:
        for res_name in status_names(cls.ARTIFACT_DIR, root):
            if name and res_name != name:
                continue
            status = read_status(cls.ARTIFACT_DIR, res_name, root)
            details = []
            for col in printer_columns(cls)[1:-1]:
                value = _json_path({"status": status}, col["jsonPath"])
                if value is not None:
                    details.append(f"{col['name']}={_format(value)}")
            table.add_row(
                cls.KIND,
                res_name,
                status.get("phase", "Pending"),
                " ".join(details),
                _age(status.get("startTime")),
            )
            rows += 1
    if rows == 0:
        where = f"{kind or 'any kind'}{'/' + name if name else ''}"
        return f"No resources found ({where}) in {root}"
    return table


def describe_text(kind: str, name: str, root: Path | None = None) -> str:
    """Spec, status, conditions, events and artifact paths, as plain text."""
    root = root or artifact_root()
    cls = resource_class(kind)
    status_file = status_path(cls.ARTIFACT_DIR, name, root)
    spec_file = spec_file_path(cls.ARTIFACT_DIR, name, root)
    if not status_file.exists() and not spec_file.exists():
        raise LookupError(f"{cls.KIND}/{name} not found in {root}; `llmfab get` lists what exists")
    status = read_status(cls.ARTIFACT_DIR, name, root)
    out: list[str] = [
        f"Name:         {name}",
        f"Kind:         {cls.KIND}",
        f"Phase:        {status.get('phase', 'Pending')}",
    ]
    if status.get("message"):
        out.append(f"Message:      {status['message']}")
    directory = artifact_dir(cls.ARTIFACT_DIR, name, root)
    manifest = read_manifest(directory)
    out.append(f"Artifacts:    {directory} ({'complete' if manifest else 'incomplete'})")
    out.append(f"Log:          {log_path(cls.ARTIFACT_DIR, name, root)}")
    if spec_file.exists():
        spec = yaml.safe_load(spec_file.read_text()).get("spec", {})
        out += ["Spec:", _indent(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))]
    scalar = {k: v for k, v in status.items() if k not in ("conditions", "steps", "phase", "message", "usage")}
    if scalar:
        out += ["Status:", _indent(yaml.safe_dump(scalar, sort_keys=False, allow_unicode=True))]
    if status.get("usage"):
        out += ["Usage:", *usage_lines(status["usage"])]
    steps = status.get("steps") or []
    if steps:
        out.append("Steps (documents in → out, removed by reason):")
        for step in steps:
            removed = ", ".join(f"{r}: {n}" for r, n in (step.get("removed") or {}).items())
            counted = ", ".join(f"{r}: {n}" for r, n in (step.get("counted") or {}).items())
            out.append(
                f"  {step.get('name')}: {step.get('documentsIn')} → {step.get('documentsOut')}"
                + (f"  ({removed})" if removed else "")
                + (f"  [counted: {counted}]" if counted else "")
            )
    if manifest is not None and cls.KIND == "Dataset":
        out += _removed_samples(directory)
    conditions = status.get("conditions") or []
    if conditions:
        out.append("Conditions:")
        out.append(f"  {'TYPE':<12} {'STATUS':<7} {'REASON':<22} MESSAGE")
        for c in conditions:
            out.append(
                f"  {c.get('type', ''):<12} {c.get('status', ''):<7} {c.get('reason', ''):<22} "
                f"{c.get('message', '')}"
            )
    events_file = events_path(cls.ARTIFACT_DIR, name, root)
    if events_file.exists():
        out.append("Events:")
        for line in events_file.read_text().splitlines()[-15:]:
            ev = json.loads(line)
            out.append(f"  {ev['time']}  {ev['type']:<8} {ev['reason']:<22} {ev['message']}")
    return "\n".join(out)


def _removed_samples(directory: Path) -> list[str]:
    """Where a Dataset's audit trail is and what it holds, from its ``stats.json``."""
    try:
        summary = json.loads((directory / "stats.json").read_text()).get("removedSamples")
    except (OSError, ValueError):
        return []
    if not summary:
        return ["Removed samples: none kept (spec.audit.samplesPerReason: 0)"]
    files = summary.get("files") or {}
    sampled = sum(r["sampled"] for reasons in files.values() for r in reasons.values())
    out = [f"Removed samples: {directory / summary['directory']} ({sampled} documents, up to "
           f"{summary['samplesPerReason']} per step and reason, {summary['maxCharacters']} characters each)"]
    for step, reasons in files.items():
        for reason, r in reasons.items():
            out.append(f"  {step}/{reason}: {r['sampled']} of {r['removed']} removed  {r['file']}")
    return out


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.rstrip().splitlines())
