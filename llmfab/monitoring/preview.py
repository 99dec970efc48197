"""Draw a Grafana dashboard from a live Prometheus into a PNG, without Grafana.

No registry reachable here ships a runnable Grafana, so the monitoring tests draw every panel of a
dashboard from Prometheus's HTTP API with matplotlib, and a person without Grafana can do the same:

    python -m llmfab.monitoring.preview --prometheus http://127.0.0.1:9090 \\
        --dashboard charts/llmfab/dashboards/training.json --out training.png --minutes 15

A panel that Grafana would leave empty says "No data" in red. Queries are those of the JSON after
:func:`expand`; which values the variables take is the caller's choice (:func:`default_values`
gives what Grafana shows on opening the dashboard).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def default_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Each variable as Grafana expands it on opening: a query variable's "All" is its
    ``allValue``; a custom variable takes its current value. The data source is not in a query."""
    values = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            values[variable["name"]] = variable["allValue"]
        elif variable["type"] == "custom":
            values[variable["name"]] = variable["current"]["value"]
    return values


def rate_interval(step_seconds: float, scrape_seconds: float) -> float:
    """Grafana's ``$__rate_interval``: max($__interval + scrape interval, 4 × scrape interval)."""
    return max(step_seconds + scrape_seconds, 4 * scrape_seconds)


def expand(expr: str, values: dict[str, str], rate_interval_seconds: float) -> str:
    """``expr`` with ``$__rate_interval`` and every ``$name``/``${name}`` replaced; an undefined
    variable is an error, as it would be a query Grafana sends literally."""
    builtins = {"__rate_interval": f"{round(rate_interval_seconds * 1000)}ms"}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in builtins:
            return builtins[name]
        if name not in values:
            raise KeyError(f"query uses ${name}, which the dashboard does not define: {expr}")
        return values[name]

    return _VARIABLE.sub(value, expr)


@dataclass
class Series:
    legend: str
    times: list[float]
    values: list[float]

    def finite(self) -> list[float]:
        return [v for v in self.values if math.isfinite(v)]


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt in ("", "__auto"):
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def panel_series(panel: dict[str, Any], prometheus: str, values: dict[str, str], start: float, end: float,
                 step: float, scrape_seconds: float) -> list[Series]:
    """Every series of every target of one panel over [start, end]."""
    interval = rate_interval(step, scrape_seconds)
    out = []
    for target in panel["targets"]:
        for row in query_range(prometheus, expand(target["expr"], values, interval), start, end, step):
            out.append(Series(legend(target.get("legendFormat", ""), row["metric"]),
                              [float(t) for t, _ in row["values"]], [float(v) for _, v in row["values"]]))
    return out


def format_value(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "s":
        return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
    if unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if unit == "reqps":
        return f"{value:.3g} req/s"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.4g}"


def _scale(unit: str) -> tuple[float, str]:
    return {"percentunit": (100.0, "%"), "bytes": (1 / 2**20, "MiB"), "s": (1.0, "s"),
            "reqps": (1.0, "req/s")}.get(unit, (1.0, ""))


def _stat_colour(panel: dict[str, Any], value: float) -> str:
    colour = "black"
    for step in panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", []):
        if step["value"] is None or value >= step["value"]:
            colour = step["color"]
    return colour


def _draw(ax: Any, panel: dict[str, Any], series: list[Series], start: float) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    drawn = [s for s in series if s.finite()]
    if not drawn:
        ax.set_axis_off()
        ax.text(0.5, 0.45, "No data", color="red", fontsize=14, ha="center", va="center", transform=ax.transAxes)
        return
    if panel["type"] == "stat":
        ax.set_axis_off()
        lines = [(s.legend, s.finite()[-1]) for s in drawn[:3]]
        for i, (name, value) in enumerate(lines):
            y = 0.55 - i * 0.3 if len(lines) > 1 else 0.4
            label = f"{format_value(value, unit)}" + (f"  {name}" if len(lines) > 1 else "")
            ax.text(0.5, y, label, fontsize=16 if len(lines) == 1 else 10, ha="center", va="center",
                    color=_stat_colour(panel, value), transform=ax.transAxes, weight="bold")
        return
    factor, label = _scale(unit)
    ax.tick_params(labelsize=6)
    if panel["type"] == "bargauge":
        names = [s.legend for s in drawn]
        ax.barh(range(len(drawn)), [s.finite()[-1] * factor for s in drawn], color="tab:blue")
        ax.set_yticks(range(len(drawn)), names, fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(label, fontsize=6)
        return
    for s in drawn:
        ax.plot([t - start for t in s.times], [v * factor for v in s.values], lw=1, label=s.legend)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 5))
    ax.yaxis.get_offset_text().set_fontsize(6)
    ax.set_ylabel(label, fontsize=6)
    ax.set_xlabel("seconds", fontsize=6)
    ax.legend(fontsize=5, loc="upper left", ncol=2 if len(drawn) > 4 else 1)
    ax.grid(alpha=0.3)


def render(dashboard: dict[str, Any], series: dict[int, list[Series]], start: float, end: float,
           out: Path, subtitle: str = "") -> Path:
    """One PNG with every panel where its ``gridPos`` puts it (24 columns)."""
    from matplotlib.figure import Figure

    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    width, row_height = 20.0, 0.3  # inches: a grid column is ~2.8 rows wide, as in Grafana
    header = 0.6
    fig = Figure(figsize=(width, rows * row_height + header), dpi=80)
    total = rows * row_height + header
    fig.text(0.01, 1 - 0.25 / total, dashboard["title"], fontsize=14, weight="bold", va="center")
    fig.text(0.01, 1 - 0.5 / total, f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start))} + "
             f"{end - start:.0f} s  {subtitle}", fontsize=8, va="center", color="dimgrey")
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        left, w = g["x"] / 24, g["w"] / 24
        top = (header + g["y"] * row_height) / total
        h = g["h"] * row_height / total
        pad_x, pad_top, pad_bottom = 0.025, 0.25 / total, 0.35 / total
        pad_left = w * 0.3 if panel["type"] == "bargauge" else pad_x  # room for the bar names
        ax = fig.add_axes((left + pad_left, 1 - top - h + pad_bottom, w - pad_left - 0.4 * pad_x,
                           h - pad_top - pad_bottom))
        fig.text(left + pad_x, 1 - top - 0.12 / total, panel["title"], fontsize=9, va="center")
        _draw(ax, panel, series.get(panel["id"], []), start)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmfab.monitoring.preview", description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, required=True, help="a dashboard JSON file")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--minutes", type=float, default=15, help="time range ending now")
    parser.add_argument("--scrape-interval", type=float, default=15, help="seconds, as the data source sets it")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a variable's value")
    args = parser.parse_args(argv)
    dashboard = json.loads(args.dashboard.read_text())
    values = default_values(dashboard) | dict(item.split("=", 1) for item in args.set)
    end = time.time()
    start = end - args.minutes * 60
    step = max(args.scrape_interval, (end - start) / 400)
    data = {p["id"]: panel_series(p, args.prometheus, values, start, end, step, args.scrape_interval)
            for p in dashboard["panels"]}
    print(render(dashboard, data, start, end, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
