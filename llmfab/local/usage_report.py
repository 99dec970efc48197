"""``llmfab usage`` and the usage block of ``llmfab describe``: what the local resources used.

A post-training chain costs what all of its resources cost: an RL TrainingRun needs its RewardModel,
which needs the SFT run it starts from and its preference data, which need the pretraining run and
its Dataset. ``llmfab usage KIND NAME`` sums a resource and every resource it references, however
deep (each once, where two paths meet), from their status files; without a resource it lists the
whole store. Cost is summed only where every resource has one in one currency: a total that left
some out would read as the whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from llmfab.api import KINDS, ValidationFailed, parse_resource, resource_class
from llmfab.api.common import Resource
from llmfab.api.loading import read_yaml_documents
from llmfab.stages import spec_file_path
from llmfab.status import read_status, status_names
from llmfab.usage import add, totals_of


def usage_lines(usage: dict[str, Any]) -> list[str]:
    """The ``Usage:`` block of ``llmfab describe``, one figure a line, with what each estimate used."""
    out = [f"  Attempts:     {usage.get('attempts', 0)}",
           f"  Wall time:    {_duration(usage.get('wallSeconds'))}"]
    if usage.get("cpuSeconds") is not None:
        out.append(f"  CPU time:     {_duration(usage['cpuSeconds'])} ({usage.get('cpu') or 'used'})")
    out.append(f"  GPU time:     {usage.get('gpuHours', 0):g} GPU-hours ({usage.get('gpuSeconds', 0):.0f} GPU-seconds)")
    inputs = usage.get("costInputs") or {}
    if usage.get("energyKwh") is not None:
        how = [f"GPU {inputs['energy']}"] if inputs.get("energy") else []
        how += [f"{inputs['wattsPerGpu']:g} W per GPU"] if inputs.get("wattsPerGpu") is not None else []
        how += [f"{inputs['wattsPerCpu']:g} W per CPU core"] if inputs.get("wattsPerCpu") is not None else []
        how += [] if inputs.get("wattsPerCpu") is not None else ["CPU not counted: no wattsPerCpu"]
        out.append(f"  Energy:       {usage['energyKwh']:g} kWh ({', '.join(how)})")
    if usage.get("cost") is not None:
        currency = usage.get("currency") or ""
        prices = [f"{inputs['pricePerGpuHour']:g} {currency}/GPU-hour"] if inputs.get("pricePerGpuHour") is not None else []
        prices += [f"{inputs['pricePerKwh']:g} {currency}/kWh"] if inputs.get("pricePerKwh") is not None else []
        out.append(f"  Cost:         {usage['cost']:g} {currency} ({', '.join(prices)})")
    else:
        out.append("  Cost:         - (no price configured: $LLMFAB_HOME/cost.yaml or LLMFAB_COST_*)")
    return out


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return (f"{hours}h {minutes}m {secs:.0f}s" if hours else f"{minutes}m {secs:.1f}s" if minutes
            else f"{secs:.1f}s")


def _resource(cls: type[Resource], name: str, root: Path) -> Resource | None:
    """The resource as ``llmfab up`` last ran it (its spec file), for its references."""
    path = spec_file_path(cls.ARTIFACT_DIR, name, root)
    if not path.exists():
        return None
    docs = [d for d in read_yaml_documents(path) if d is not None]
    try:
        return parse_resource(docs[0], str(path)) if docs else None
    except ValidationFailed:
        return None


def chain(kind: str, name: str, root: Path) -> list[tuple[str, str]]:
    """(kind, name) of the resource and of everything it references, directly or not, each once,
    in the order met (the resource first)."""
    seen: list[tuple[str, str]] = []
    todo = [(resource_class(kind).KIND, name)]
    while todo:
        key = todo.pop(0)
        if key in seen:
            continue
        seen.append(key)
        res = _resource(KINDS[key[0]], key[1], root)
        todo += res.references() if res is not None else []
    return seen


def usage_table(kind: str | None, name: str | None, root: Path) -> Table | str:
    """One row per resource (``kind``+``name``: it and what it references) and a total."""
    if kind and name:
        rows = chain(kind, name, root)
    else:
        classes = [resource_class(kind)] if kind else list(KINDS.values())
        rows = [(cls.KIND, n) for cls in classes for n in status_names(cls.ARTIFACT_DIR, root)]
    if not rows:
        return f"No resources found in {root}"
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False, show_footer=True)
    headers = ("RESOURCE", "ATTEMPTS", "WALL", "CPU", "GPU-H", "KWH", "COST")
    usages = [read_status(KINDS[k].ARTIFACT_DIR, n, root).get("usage") or {} for k, n in rows]
    total = add(*(totals_of(u) for u in usages))
    kwh = [u.get("energyKwh") for u in usages]
    costs = [(u.get("cost"), u.get("currency")) for u in usages]
    one_currency = {c for _, c in costs} if all(c is not None for c, _ in costs) else set()
    footer = ("total" if not (kind and name) else f"total ({len(rows)} resources)", str(total.attempts),
              _duration(total.wall_seconds), _duration(total.cpu_seconds), f"{total.gpu_seconds / 3600:.3f}",
              f"{sum(k for k in kwh if k is not None):.4g}" if all(k is not None for k in kwh) else "-",
              f"{sum(c for c, _ in costs if c is not None):.4g} {one_currency.pop()}" if len(one_currency) == 1 else "-")
    for header, foot in zip(headers, footer, strict=True):
        table.add_column(header, footer=foot, justify="left" if header == "RESOURCE" else "right")
    for (k, n), u in zip(rows, usages, strict=True):
        table.add_row(
            f"{k}/{n}", str(u.get("attempts", 0)), _duration(u.get("wallSeconds")), _duration(u.get("cpuSeconds")),
            f"{(u.get('gpuSeconds') or 0) / 3600:.3f}",
            f"{u['energyKwh']:.4g}" if u.get("energyKwh") is not None else "-",
            f"{u['cost']:.4g} {u.get('currency', '')}" if u.get("cost") is not None else "-",
        )
    return table
