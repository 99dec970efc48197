"""How a panel's query is run outside Grafana (llmfab/monitoring/preview.py), and the PNG drawn from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmfab.monitoring.dashboards import TTFT_SLO_DEFAULT, inference_latency, training
from llmfab.monitoring.preview import (
    Series,
    default_values,
    expand,
    format_value,
    legend,
    rate_interval,
    render,
)


def test_rate_interval_is_grafanas_max_of_step_plus_scrape_and_four_scrapes() -> None:
    assert rate_interval(1, 1) == 4
    assert rate_interval(60, 15) == 75


def test_variables_expand_to_all_or_their_default_and_an_unknown_one_is_refused() -> None:
    values = default_values(inference_latency().to_json())
    assert values == {"job": ".*", "model_name": ".*", "instance": ".*", "ttft_slo": TTFT_SLO_DEFAULT}
    expr = 'sum(rate(x_bucket{job=~"$job", le="${ttft_slo}"}[$__rate_interval]))'
    assert expand(expr, values, 4) == f'sum(rate(x_bucket{{job=~".*", le="{TTFT_SLO_DEFAULT}"}}[4000ms]))'
    with pytest.raises(KeyError, match=r"\$run"):
        expand('x{run=~"$run"}', values, 4)


def test_legends_fill_label_placeholders() -> None:
    assert legend("{{model_name}} p99", {"model_name": "tiny"}) == "tiny p99"
    assert legend("__auto", {"b": "2", "a": "1"}) == "a=1, b=2"
    assert format_value(0.25, "s") == "250.0 ms" and format_value(40570, "short") == "40.6k"


def test_a_dashboard_renders_with_a_panel_that_has_no_data(tmp_path: Path) -> None:
    dashboard = training().to_json()
    data = {p["id"]: [Series("dash-run", [0.0, 1.0, 2.0], [3.0, 2.5, 2.25])] for p in dashboard["panels"][:-1]}
    png = render(dashboard, data, 0.0, 2.0, tmp_path / "training.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
