"""Grafana dashboard JSON as plain dicts: the three panel kinds llmfab's dashboards use, template
variables, a row-by-row grid, and the PromQL shapes vLLM's own generated dashboards write.

PromQL follows vLLM's dashboards (``examples/observability/dashboards/grafana`` in its repository),
not older community ones: every rate is over ``$__rate_interval``; a quantile is
``histogram_quantile(q, sum by (le) (rate(<h>_bucket{…}[$__rate_interval])))``; a mean divides the
``_sum`` rate by the ``_count`` rate (``> 0``, so no traffic reads as no value rather than NaN);
an SLO tile is the share of observations in the bucket at the threshold. Lifetime averages
(``_sum / _count`` without ``rate``) are never written: they hide any change after the first hour.

Plain dicts rather than grafana-foundation-sdk: its ``from_json`` accepted a malformed dashboard, so
structural tests would be needed either way (``tests/monitoring``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24
SCHEMA_VERSION = 39  # Grafana 10.x/11.x read it; vLLM's dashboards use the same
RATE = "[$__rate_interval]"
# Grafana's unit ids that the dashboards use (Grafana: Standard options > Unit).
UNITS = frozenset({"s", "reqps", "percentunit", "short", "bytes"})

PanelKind = Literal["timeseries", "stat", "bargauge"]


def matchers(*variables: str) -> str:
    """``job=~"$job", instance=~"$instance"``: one regex matcher per template variable, so that a
    variable's "All" (``.*``) and a multi-value selection (``a|b``) both filter."""
    return ", ".join(f'{name}=~"${name}"' for name in variables)


def selector(metric: str, sel: str, *extra: str) -> str:
    return f"{metric}{{{', '.join((sel, *extra))}}}"


def rate(metric: str, sel: str, *extra: str) -> str:
    return f"rate({selector(metric, sel, *extra)}{RATE})"


def _sum(by: Sequence[str], inner: str) -> str:
    """``sum(x)`` or ``sum by (a, b) (x)``, spelled as vLLM's dashboards spell them."""
    return f"sum by ({', '.join(by)}) ({inner})" if by else f"sum({inner})"


def quantile(q: float, histogram: str, sel: str, by: Sequence[str] = ()) -> str:
    return f"histogram_quantile({q}, {_sum(('le', *by), rate(histogram + '_bucket', sel))})"


def mean(histogram: str, sel: str, by: Sequence[str] = ()) -> str:
    return f"{_sum(by, rate(histogram + '_sum', sel))} / ({_sum(by, rate(histogram + '_count', sel))} > 0)"


def share_within(histogram: str, le: str, sel: str) -> str:
    """Share of observations at most ``le``, which must be one of the histogram's bucket bounds
    written as the exporter writes them (``1.0``, not ``1``)."""
    within = rate(histogram + "_bucket", sel, f'le="{le}"')
    return f"sum({within}) / (sum({rate(histogram + '_count', sel)}) > 0)"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = "__auto"


def latency_targets(histogram: str, sel: str) -> tuple[Target, ...]:
    """p50, p90, p99 and the mean of one histogram, the four lines of every latency panel."""
    return (*(Target(quantile(q, histogram, sel), f"p{round(q * 100)}") for q in (0.5, 0.9, 0.99)),
            Target(mean(histogram, sel), "mean"))


@dataclass(frozen=True)
class Panel:
    title: str
    kind: PanelKind
    unit: str
    targets: tuple[Target, ...]
    description: str
    width: int = 12
    height: int = 8
    minimum: float | None = 0
    maximum: float | None = None
    # Stat colours: (colour, lower bound) from the bottom up; the first bound is None.
    thresholds: tuple[tuple[str, float | None], ...] = (("green", None),)

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"panel {self.title!r}: unit {self.unit!r} is not one of {sorted(UNITS)}")
        if not self.targets:
            raise ValueError(f"panel {self.title!r} has no query")

    def to_json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {"unit": self.unit}
        if self.minimum is not None:
            defaults["min"] = self.minimum
        if self.maximum is not None:
            defaults["max"] = self.maximum
        if self.kind == "stat":
            defaults["color"] = {"mode": "thresholds"}
            defaults["thresholds"] = {"mode": "absolute",
                                      "steps": [{"color": c, "value": v} for c, v in self.thresholds]}
            defaults["noValue"] = "No data"
        else:
            defaults["color"] = {"mode": "palette-classic"}
        if self.kind == "timeseries":
            defaults["custom"] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False}
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "targets": [
                {"datasource": DATASOURCE, "refId": chr(ord("A") + i), "expr": t.expr,
                 "legendFormat": t.legend, "range": True, "instant": False}
                for i, t in enumerate(self.targets)
            ],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": _OPTIONS[self.kind],
        }


_LAST = {"calcs": ["lastNotNull"], "fields": "", "values": False}
_OPTIONS: dict[str, dict[str, Any]] = {
    "timeseries": {"legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}},
    "stat": {"reduceOptions": _LAST, "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
             "orientation": "auto", "textMode": "auto"},
    "bargauge": {"reduceOptions": _LAST, "orientation": "horizontal", "displayMode": "basic",
                 "showUnfilled": True, "valueMode": "color", "namePlacement": "auto"},
}


def layout(rows: Sequence[Sequence[Panel]]) -> list[dict[str, Any]]:
    """Panels left to right, rows top to bottom; ids in reading order."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row in rows:
        width = sum(p.width for p in row)
        if width > GRID_COLUMNS:
            raise ValueError(f"row {[p.title for p in row]} is {width} columns wide; the grid has {GRID_COLUMNS}")
        x = 0
        for panel in row:
            panels.append(panel.to_json(len(panels) + 1, x, y))
            x += panel.width
        y += max(p.height for p in row)
    return panels


def datasource_variable() -> dict[str, Any]:
    return {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "regex": ""}


def query_variable(name: str, label: str, metric: str, after: Sequence[str] = ()) -> dict[str, Any]:
    """Values of label ``name`` on ``metric``, narrowed by the variables before it; "All" is ``.*``."""
    series = f"{metric}{{{matchers(*after)}}}" if after else metric
    query = f"label_values({series}, {name})"
    return {"type": "query", "name": name, "label": label, "datasource": DATASOURCE, "definition": query,
            "query": query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [], "sort": 1,
            "regex": "", "hide": 0}


def custom_variable(name: str, label: str, description: str, options: Sequence[tuple[str, str]],
                    default: str) -> dict[str, Any]:
    """A fixed choice (``text : value``), e.g. an SLO threshold among a histogram's bucket bounds."""
    text = {value: text for text, value in options}
    return {"type": "custom", "name": name, "label": label, "description": description,
            "query": ", ".join(f"{t} : {v}" for t, v in options),
            "current": {"selected": True, "text": text[default], "value": default},
            "options": [{"selected": v == default, "text": t, "value": v} for t, v in options],
            "includeAll": False, "multi": False, "hide": 0}


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    variables: tuple[dict[str, Any], ...]
    rows: tuple[tuple[Panel, ...], ...]
    tags: tuple[str, ...] = field(default=("llmfab",))

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "id": None,
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "fiscalYearStartMonth": 0,
            "weekStart": "",
            "links": [{"type": "dashboards", "title": "llmfab dashboards", "tags": ["llmfab"], "asDropdown": True,
                       "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                "type": "dashboard",
            }]},
            "templating": {"list": [datasource_variable(), *self.variables]},
            "panels": layout(self.rows),
        }
