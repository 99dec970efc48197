"""The Grafana dashboards in charts/llmfab/dashboards: generated, structurally sound, runnable PromQL.

No Grafana runs here (none in any registry reachable), so the JSON is checked for what Grafana
needs: uid, title, a Prometheus data-source variable used by every panel and query variable, a
unit and a query in every panel, a grid without overlaps, and PromQL written as vLLM's own
dashboards write it. ``tests/serving/test_dashboards_live.py`` runs every query against a real
Prometheus scraping real exporters.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.registry import CollectorRegistry

from llmfab.monitoring import dashboards
from llmfab.monitoring.grafana import DATASOURCE, GRID_COLUMNS, UNITS
from llmfab.monitoring.preview import default_values, expand
from llmfab.operator import metrics as operator_metrics
from llmfab.serving.scale_metrics import ScaleMetrics
from llmfab.training.components.metrics import CUDA_GAUGES, GAUGES

REPO = Path(__file__).resolve().parents[2]
DIR = REPO / "charts" / "llmfab" / "dashboards"
BUILT = {name: build().to_json() for name, build in dashboards.DASHBOARDS.items()}
# Variables each dashboard's selectors must filter by.
FILTERS = {"inference-latency": ("job", "model_name", "instance"), "training": ("job", "instance", "run"),
           "pipeline": ("job", "instance"), "autoscaling": ("job", "instance", "resource_namespace", "resource")}
SELECTOR = re.compile(r"\b((?:vllm:|llmfab_|interceptor_)[a-z0-9_:]+)\{([^}]*)\}")
# The KEDA interceptor's series are its own target's (no job/instance of the operator): they are
# filtered by the route, which the operator names after the InferenceService.
ROUTE_FILTERS = ('route_namespace=~"$resource_namespace"', 'route_name=~"$resource"')
# Names vLLM's V0 engine or older releases exported, which V1 (vllm 0.32) no longer serves.
GONE_FROM_VLLM = {"vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc", "vllm:time_per_output_token_seconds",
                  "vllm:avg_prompt_throughput_toks_per_s", "vllm:avg_generation_throughput_toks_per_s",
                  "vllm:num_requests_swapped", "vllm:gpu_prefix_cache_hit_rate"}
# Asked of the operator for the Pipeline dashboard (issue 11); the live test exports them itself.
AWAITED_FROM_OPERATOR = {dashboards.DATASET_DOCUMENTS, dashboards.DATASET_REMOVED}


def panels(name: str) -> list[dict[str, Any]]:
    return list(BUILT[name]["panels"])


def exprs(name: str) -> list[str]:
    return [t["expr"] for p in panels(name) for t in p["targets"]]


def metric_names(name: str) -> set[str]:
    return {m.group(1) for e in exprs(name) for m in SELECTOR.finditer(e)}


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    rendered = dashboards.render()
    assert sorted(p.name for p in DIR.glob("*.json")) == sorted(rendered)
    for file, text in rendered.items():
        assert (DIR / file).read_text() == text, (
            f"{file} drifted: python -m llmfab.monitoring.dashboards --out charts/llmfab/dashboards")


def test_check_mode_names_a_drifted_file_and_passes_an_unchanged_one(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dashboards"
    shutil.copytree(DIR, out)
    assert dashboards.main(["--out", str(out), "--check"]) == 0
    (out / "training.json").write_text((out / "training.json").read_text().replace("Step time", "Step"))
    assert dashboards.main(["--out", str(out), "--check"]) == 1
    assert "training.json" in capsys.readouterr().err


def test_each_dashboard_has_a_unique_uid_a_title_and_a_prometheus_datasource_variable() -> None:
    uids = [d["uid"] for d in BUILT.values()]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)  # Grafana's uid limit
    for name, d in BUILT.items():
        assert d["title"].startswith("llmfab / ") and d["description"]
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for filter_ in FILTERS[name]:
            v = variables[filter_]
            assert v["type"] == "query" and v["datasource"] == DATASOURCE
            assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"


def test_query_variables_narrow_by_the_variables_before_them() -> None:
    for name, d in BUILT.items():
        seen: list[str] = []
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                used = re.findall(r"\$(\w+)", v["query"])
                assert set(used) <= set(seen), f"{name}: {v['name']} uses {used} before they are defined"
                assert v["query"].startswith("label_values(") and v["query"].endswith(f", {v['name']})")
            seen.append(v["name"])


@pytest.mark.parametrize("name", sorted(BUILT))
def test_every_panel_has_a_unit_a_query_and_the_templated_datasource(name: str) -> None:
    for p in panels(name):
        assert p["type"] in {"timeseries", "stat", "bargauge"} and p["title"] and p["description"]
        assert p["datasource"] == DATASOURCE
        assert p["fieldConfig"]["defaults"]["unit"] in UNITS
        assert p["targets"], f"{p['title']} has no query"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip() and t["legendFormat"]


@pytest.mark.parametrize("name", sorted(BUILT))
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    cells: set[tuple[int, int]] = set()
    ids = [p["id"] for p in panels(name)]
    assert len(set(ids)) == len(ids)
    for p in panels(name):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= GRID_COLUMNS and g["h"] > 0
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


@pytest.mark.parametrize("name", sorted(BUILT))
def test_every_selector_filters_by_the_dashboard_variables(name: str) -> None:
    for expr in exprs(name):
        selectors = SELECTOR.findall(expr)
        assert selectors, f"no metric selector in {expr}"
        for metric, matchers in selectors:
            wanted = ROUTE_FILTERS if metric.startswith("interceptor_") else tuple(
                f'{variable}=~"${variable}"' for variable in FILTERS[name])
            for matcher in wanted:
                assert matcher in matchers, f"{metric} in {expr} ignores {matcher}"


SUM = r"sum(?: by \([\w, ]+\) )?\("  # sum( or sum by (a, b) (
QUANTILE = re.compile(r"histogram_quantile\(0\.\d+, sum by \(le(?:, \w+)*\) \(rate\([^(){}]+_bucket\{[^}]*\}"
                      r"\[\$__rate_interval\]\)\)\)")
MEAN = re.compile(SUM + r"rate\(([^(){}]+)_sum\{[^}]*\}\[\$__rate_interval\]\)\) / \("
                  + SUM + r"rate\(\1_count\{[^}]*\}\[\$__rate_interval\]\)\) > 0\)")


@pytest.mark.parametrize("name", sorted(BUILT))
def test_quantiles_means_and_rates_are_written_as_vllm_writes_them(name: str) -> None:
    for expr in exprs(name):
        assert set(re.findall(r"\[([^\]]+)\]", expr)) <= {"$__rate_interval"}, f"a fixed range in {expr}"
        if "histogram_quantile(" in expr:
            assert QUANTILE.fullmatch(expr), expr
        if "_sum{" in expr:  # a mean: the _sum rate over the _count rate, never a lifetime average
            assert MEAN.fullmatch(expr), expr


def test_latency_panels_show_p50_p90_p99_and_the_mean() -> None:
    titles = {p["title"]: p for p in panels("inference-latency")}
    for title in ("Time to first token", "Inter-token latency", "End-to-end request latency", "Queue time"):
        p = titles[title]
        assert [t["legendFormat"] for t in p["targets"]] == ["p50", "p90", "p99", "mean"]
        assert p["fieldConfig"]["defaults"]["unit"] == "s"


def test_the_slo_tile_is_the_share_of_requests_in_the_threshold_bucket() -> None:
    (tile,) = [p for p in panels("inference-latency") if 'le="$ttft_slo"' in p["targets"][0]["expr"]]
    assert tile["type"] == "stat" and tile["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert "vllm:time_to_first_token_seconds_count" in tile["targets"][0]["expr"]
    slo = next(v for v in BUILT["inference-latency"]["templating"]["list"] if v["name"] == "ttft_slo")
    assert slo["current"]["value"] in [o["value"] for o in slo["options"]]
    assert all(re.fullmatch(r"\d+\.\d+", o["value"]) for o in slo["options"])  # as the exporter writes le


def test_the_dashboards_query_what_issue_11_lists() -> None:
    assert {dashboards.TTFT, dashboards.ITL, dashboards.E2E, dashboards.QUEUE}.issubset(
        {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in metric_names("inference-latency")})
    assert {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:generation_tokens_total",
            "vllm:kv_cache_usage_perc"} <= metric_names("inference-latency")
    assert {f"llmfab_train_{n}" for n in ("loss", "val_loss", "tokens_per_second", "mfu", "step_seconds")} | {
        f"llmfab_train_{n}" for n in CUDA_GAUGES} <= metric_names("training")
    assert {"llmfab_operator_resources", dashboards.DATASET_DOCUMENTS} <= metric_names("pipeline")


def test_the_autoscaling_dashboard_shows_replicas_cold_starts_and_held_requests() -> None:
    """Issue 21: replicas over time, wakes from zero and how long they took (the operator's
    metrics), and the requests the KEDA HTTP add-on's interceptor holds meanwhile."""
    assert {dashboards.REPLICAS, dashboards.COLD_STARTS, dashboards.LAST_COLD_START,
            f"{dashboards.COLD_START_SECONDS}_bucket", dashboards.INTERCEPTOR_CONCURRENCY} <= metric_names("autoscaling")
    titles = {p["title"]: p for p in panels("autoscaling")}
    assert [t["legendFormat"] for t in titles["Cold start duration"]["targets"]] == ["p50", "p90", "p99", "mean"]
    assert [t["legendFormat"] for t in titles["Replicas by service"]["targets"]] == [
        "{{resource}} desired", "{{resource}} ready"]
    # The add-on renamed interceptor_pending_requests in v0.14; the old name would draw nothing.
    assert "interceptor_pending_requests" not in " ".join(exprs("autoscaling"))


def test_the_pipeline_dashboard_shows_gpu_hours_and_cost_per_resource() -> None:
    """Issue 22: each resource's GPU-hours and cost (the operator's copy of status.usage), and the
    totals over the selected operator's resources."""
    assert {dashboards.USAGE_GPU_SECONDS, dashboards.USAGE_COST, dashboards.USAGE_ENERGY,
            dashboards.USAGE_CPU_SECONDS} <= metric_names("pipeline")
    titles = {p["title"]: p for p in panels("pipeline")}
    [gpu] = titles["GPU-hours by resource"]["targets"]
    assert gpu["expr"].startswith("sum by (resource_namespace, kind, resource) (") and gpu["expr"].endswith(") / 3600")
    assert gpu["legendFormat"] == "{{kind}}/{{resource}}"
    [cost] = titles["Cost by resource"]["targets"]
    assert "currency" in cost["expr"] and cost["legendFormat"] == "{{kind}}/{{resource}} ({{currency}})"
    # The operator exports the series those panels read, for a resource it has seen.
    operator_metrics.observe_usage("ns", "TrainingRun", "tiny", {"gpuSeconds": 7200.0, "cost": 1.6, "currency": "EUR"})
    try:
        labels = {"resource_namespace": "ns", "kind": "TrainingRun", "resource": "tiny"}
        assert operator_metrics.REGISTRY.get_sample_value(dashboards.USAGE_GPU_SECONDS, labels) == 7200.0
        assert operator_metrics.REGISTRY.get_sample_value(dashboards.USAGE_COST, {**labels, "currency": "EUR"}) == 1.6
        assert operator_metrics.REGISTRY.get_sample_value(dashboards.USAGE_ENERGY, labels) is None  # none in status
    finally:
        operator_metrics.observe_usage("ns", "TrainingRun", "tiny", None)
    assert operator_metrics.REGISTRY.get_sample_value(dashboards.USAGE_GPU_SECONDS, labels) is None


def test_no_dashboard_uses_a_vllm_name_that_v1_removed() -> None:
    for name in BUILT:
        assert not metric_names(name) & GONE_FROM_VLLM


def _exported(registry: CollectorRegistry) -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + s for family in registry.collect() for s in suffixes[family.type]}


def test_llmfab_metrics_the_dashboards_query_are_exported_by_the_trainer_the_operator_and_the_wake_proxy() -> None:
    trainer = {f"llmfab_train_{n}" for n in {**GAUGES, **CUDA_GAUGES}}
    operator = _exported(operator_metrics.REGISTRY) | AWAITED_FROM_OPERATOR
    wake_proxy = _exported(ScaleMetrics("any").registry)
    used = {n for name in BUILT for n in metric_names(name) if n.startswith("llmfab_")}
    assert used - trainer - operator - wake_proxy == set()


def test_the_inference_dashboard_charts_every_series_of_the_wake_proxy() -> None:
    """Issue 21: cold starts, their duration, requests held while waking, replicas, proxied requests."""
    exported = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                for n in _exported(ScaleMetrics("any").registry)}
    used = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            for n in metric_names("inference-latency")}
    assert exported <= used, exported - used


def test_every_query_parses_as_promql(tmp_path: Path) -> None:
    """promtool has no offline query parser, but it parses a rule file's expressions."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not on PATH: run scripts/install_prometheus.sh")
    rules = []
    for name, d in BUILT.items():
        values = default_values(d)
        for i, expr in enumerate(exprs(name)):
            rules.append({"record": f"llmfab:check:{name.replace('-', '_')}_{i}", "expr": expand(expr, values, 60)})
    path = tmp_path / "panels.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(rules)} rules found" in check.stdout
