"""The Grafana dashboards in ``charts/llmfab/dashboards/``: Inference latency (vLLM's V1 metrics and,
for a service scaled to zero by ``llmfab up``, the wake proxy's ``llmfab_serve_*``),
Training (``llmfab_train_*``, rank 0 of each TrainingRun), Pipeline (``llmfab_operator_*`` and
the Dataset step counts the operator exports) and Autoscaling (``llmfab_inference_*`` from the
operator, and the KEDA HTTP add-on interceptor's in-flight requests).

Generated so the JSON is reproducible and reviewable in one place:

    python -m llmfab.monitoring.dashboards --out charts/llmfab/dashboards          # write
    python -m llmfab.monitoring.dashboards --out charts/llmfab/dashboards --check  # 1 if they drifted

vLLM's metric names are those of its V1 engine as served on ``/metrics`` by vllm 0.32
(``vllm:kv_cache_usage_perc``, not the removed ``vllm:gpu_cache_usage_perc``); every vLLM series
carries ``model_name`` (the served model name) and ``engine``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from llmfab.monitoring.grafana import (
    Dashboard,
    Panel,
    Target,
    custom_variable,
    latency_targets,
    matchers,
    quantile,
    query_variable,
    rate,
    selector,
    share_within,
)

TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"
E2E = "vllm:e2e_request_latency_seconds"
QUEUE = "vllm:request_queue_time_seconds"
# Bounds of vLLM's TTFT histogram (vllm/v1/metrics/buckets.py), as its /metrics writes them.
TTFT_SLO_CHOICES = (("100ms", "0.1"), ("250ms", "0.25"), ("500ms", "0.5"), ("1s", "1.0"), ("2.5s", "2.5"),
                    ("5s", "5.0"), ("10s", "10.0"))
TTFT_SLO_DEFAULT = "1.0"

# The wake proxy of a service that scales to zero on one machine (llmfab/serving/scale_metrics.py),
# on the same scrape target as vLLM, with the same model_name label.
SERVE_COLD_STARTS = "llmfab_serve_cold_starts_total"
SERVE_COLD_START_SECONDS = "llmfab_serve_cold_start_seconds"
SERVE_REQUESTS_HELD = "llmfab_serve_requests_held"
SERVE_REPLICAS = "llmfab_serve_replicas"
SERVE_PROXIED_REQUESTS = "llmfab_serve_proxied_requests_total"
SERVE_WAKE_TIMEOUTS = "llmfab_serve_wake_timeouts_total"

# Each resource's status.usage, from the operator (llmfab/operator/metrics.py observe_usage):
# {resource_namespace, kind, resource}, the cost also {currency}.
USAGE_GPU_SECONDS = "llmfab_usage_gpu_seconds"
USAGE_CPU_SECONDS = "llmfab_usage_cpu_reserved_seconds"
USAGE_ENERGY = "llmfab_usage_energy_kwh"
USAGE_COST = "llmfab_usage_cost"
DATASET_DOCUMENTS = "llmfab_dataset_documents"  # {namespace, dataset, step, stage="in"|"out"}
DATASET_REMOVED = "llmfab_dataset_documents_removed"  # {namespace, dataset, step, reason}


def job_and_instance(metric: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two variables every dashboard filters by: Prometheus's ``job`` and ``instance`` labels."""
    return (query_variable("job", "Job", metric), query_variable("instance", "Instance", metric, after=("job",)))


def stat(title: str, unit: str, expr: str, description: str, **options: Any) -> Panel:
    return Panel(title, "stat", unit, (Target(expr),), description, width=4, height=4, **options)


def inference_latency() -> Dashboard:
    sel = matchers("job", "model_name", "instance")
    running = selector("vllm:num_requests_running", sel)
    waiting = selector("vllm:num_requests_waiting", sel)
    kv_cache = selector("vllm:kv_cache_usage_perc", sel)
    tiles = (
        stat("Requests / s", "reqps", f"sum({rate('vllm:request_success_total', sel)})",
             "Requests finished per second, any finish reason (vllm:request_success_total)."),
        stat("Generation tokens / s", "short", f"sum({rate('vllm:generation_tokens_total', sel)})",
             "Output tokens generated per second (vllm:generation_tokens_total)."),
        stat("Running", "short", f"sum({running})", "Requests in the running batch (vllm:num_requests_running)."),
        stat("Waiting", "short", f"sum({waiting})",
             "Requests queued for the scheduler; a queue that stays means demand exceeds capacity."),
        stat("KV cache (fullest engine)", "percentunit", f"max({kv_cache})",
             "KV-cache blocks in use on the fullest engine (vllm:kv_cache_usage_perc, 0-1).",
             maximum=1, thresholds=(("green", None), ("orange", 0.9), ("red", 0.98))),
        stat("TTFT within SLO", "percentunit", share_within(TTFT, "$ttft_slo", sel),
             "Share of requests whose time to first token was at most the TTFT SLO chosen above "
             "(${ttft_slo:text}); the threshold is one of the histogram's bucket bounds.",
             maximum=1, thresholds=(("red", None), ("orange", 0.9), ("green", 0.99))),
    )

    def latency(title: str, histogram: str, what: str) -> Panel:
        return Panel(title, "timeseries", "s", latency_targets(histogram, sel),
                     f"{what}: p50, p90, p99 and the mean over the rate interval ({histogram}).")

    by_model = ("model_name",)
    return Dashboard(
        uid="llmfab-inference-latency",
        title="llmfab / Inference latency",
        description="vLLM serving an InferenceService: latency quantiles, queue, batch, throughput and KV cache; "
                    "replicas, held requests and cold starts of a service that scales to zero.",
        tags=("llmfab", "vllm"),
        variables=(
            query_variable("job", "Job", "vllm:num_requests_running"),
            query_variable("model_name", "Model", "vllm:num_requests_running", after=("job",)),
            query_variable("instance", "Instance", "vllm:num_requests_running", after=("job", "model_name")),
            custom_variable("ttft_slo", "TTFT SLO", "Time-to-first-token objective of the SLO tile.",
                            TTFT_SLO_CHOICES, TTFT_SLO_DEFAULT),
        ),
        rows=(
            tiles,
            (latency("Time to first token", TTFT, "Arrival to first output token: queue, prefill, first decode"),
             latency("Inter-token latency", ITL, "Time between consecutive output tokens")),
            (latency("End-to-end request latency", E2E, "Arrival to last token"),
             latency("Queue time", QUEUE, "Time spent waiting before the first schedule")),
            (Panel("Requests running and waiting by model", "timeseries", "short", (
                Target(f"sum by (model_name) ({running})", "{{model_name}} running"),
                Target(f"sum by (model_name) ({waiting})", "{{model_name}} waiting"),
            ), "Batch occupancy and queue length per served model."),
             Panel("Tokens / s by model", "timeseries", "short", (
                 Target(f"sum by (model_name) ({rate('vllm:generation_tokens_total', sel)})", "{{model_name}} generated"),
                 Target(f"sum by (model_name) ({rate('vllm:prompt_tokens_total', sel)})", "{{model_name}} prompt"),
             ), "Generation and prompt tokens per second per served model.")),
            (Panel("KV-cache usage by model", "timeseries", "percentunit", (
                Target(f"max by (model_name) ({kv_cache})", "{{model_name}}"),
            ), "KV-cache blocks in use, fullest engine of each model (0-1).", maximum=1),
             Panel("p99 latency by model", "timeseries", "s", (
                 Target(quantile(0.99, TTFT, sel, by_model), "{{model_name}} time to first token"),
                 Target(quantile(0.99, ITL, sel, by_model), "{{model_name}} inter-token"),
                 Target(quantile(0.99, E2E, sel, by_model), "{{model_name}} end to end"),
             ), "99th percentiles per served model.")),
            *scale_to_zero(sel),
        ),
    )


def scale_to_zero(sel: str) -> tuple[tuple[Panel, ...], ...]:
    """Services with spec.autoscaling.minReplicas 0 under llmfab up: the wake proxy's series."""
    return (
        (Panel("Replicas and requests held while waking", "timeseries", "short", (
            Target(f"sum by (model_name) ({selector(SERVE_REPLICAS, sel)})", "{{model_name}} replicas"),
            Target(f"sum by (model_name) ({selector(SERVE_REQUESTS_HELD, sel)})", "{{model_name}} held"),
        ), "Scale to zero: vLLM servers running or starting (0 or 1; llmfab_serve_replicas) and the "
           "requests the wake proxy holds until the server is ready (llmfab_serve_requests_held)."),
         Panel("Cold start duration", "timeseries", "s", latency_targets(SERVE_COLD_START_SECONDS, sel),
               "From the request that woke a scaled-to-zero service to a ready vLLM: p50, p90, p99 and the "
               "mean over the rate interval (llmfab_serve_cold_start_seconds); empty between wakes.")),
        (Panel("Wakes and wake timeouts / s", "timeseries", "short", (
            Target(f"sum by (model_name) ({rate(SERVE_COLD_STARTS, sel)})", "{{model_name}} cold starts"),
            Target(f"sum by (model_name) ({rate(SERVE_WAKE_TIMEOUTS, sel)})", "{{model_name}} 503 after coldStartTimeoutSeconds"),
        ), "Cold starts that reached a ready server, and requests answered 503 because none was ready within "
           "spec.autoscaling.coldStartTimeoutSeconds."),
         Panel("Proxied requests / s by status", "timeseries", "reqps", (
             Target(f"sum by (model_name, code) ({rate(SERVE_PROXIED_REQUESTS, sel)})", "{{model_name}} {{code}}"),
         ), "Requests the wake proxy forwarded to vLLM, by the status code vLLM answered "
            "(llmfab_serve_proxied_requests_total).")),
    )


def training() -> Dashboard:
    sel = matchers("job", "instance", "run")

    def gauge(name: str) -> str:
        return selector(f"llmfab_train_{name}", sel)

    return Dashboard(
        uid="llmfab-training",
        title="llmfab / Training",
        description="TrainingRuns (rank 0's exporter): loss, throughput, MFU, step time, optimizer and GPU memory.",
        variables=(
            *job_and_instance("llmfab_train_step"),
            query_variable("run", "TrainingRun", "llmfab_train_step", after=("job", "instance")),
        ),
        rows=(
            (stat("Step", "short", f"max by (run) ({gauge('step')})", "Optimizer steps done."),
             stat("Train loss", "short", f"min by (run) ({gauge('loss')})", "Latest logged training loss.",
                  minimum=None),
             stat("Validation loss", "short", f"min by (run) ({gauge('val_loss')})",
                  "Latest validation loss (every spec.evalEverySteps).", minimum=None),
             stat("Tokens / s", "short", f"sum by (run) ({gauge('tokens_per_second')})",
                  "Training tokens per second, all ranks, since the previous log."),
             stat("MFU", "percentunit", f"max by (run) ({gauge('mfu')})",
                  "Model FLOPs utilisation (0-1) against the device's bf16 peak; CPUs report it only "
                  "with LLMFAB_PEAK_FLOPS.", maximum=1),
             stat("Step time", "s", f"max by (run) ({gauge('step_seconds')})",
                  "Wall seconds per optimizer step, averaged since the previous log.")),
            (Panel("Loss", "timeseries", "short", (
                Target(gauge("loss"), "{{run}} train"),
                Target(gauge("val_loss"), "{{run}} validation"),
            ), "Training loss at each log and validation loss at each evaluation.", minimum=None),
             Panel("Tokens / s", "timeseries", "short", (Target(gauge("tokens_per_second"), "{{run}}"),),
                   "Training throughput over all ranks.")),
            (Panel("MFU", "timeseries", "percentunit", (Target(gauge("mfu"), "{{run}}"),),
                   "Model FLOPs utilisation (0-1).", maximum=1),
             Panel("Step time", "timeseries", "s", (Target(gauge("step_seconds"), "{{run}}"),),
                   "Wall seconds per optimizer step (evaluation and checkpoint pauses included).")),
            (Panel("Learning rate", "timeseries", "short", (Target(gauge("lr"), "{{run}}"),),
                   "Scheduled learning rate (warmup, then cosine)."),
             Panel("Gradient norm", "timeseries", "short", (Target(gauge("grad_norm"), "{{run}}"),),
                   "Global gradient norm before clipping.")),
            (Panel("GPU memory", "timeseries", "bytes", (
                Target(gauge("gpu_memory_allocated_bytes"), "{{run}} allocated"),
                Target(gauge("gpu_memory_reserved_bytes"), "{{run}} reserved"),
            ), "Rank 0's CUDA memory held by tensors and by the caching allocator; exported only "
               "where CUDA exists, so CPU runs show no data here."),
             Panel("Progress", "timeseries", "short", (Target(gauge("step"), "{{run}}"),),
                   "Optimizer step: a flat line on a running job is a stalled run.")),
        ),
    )


def pipeline() -> Dashboard:
    sel = matchers("job", "instance")
    ds = matchers("job", "instance", "dataset")
    resources = selector("llmfab_operator_resources", sel)

    def in_phase(phase: str) -> str:
        return selector("llmfab_operator_resources", sel, f'phase="{phase}"')

    reconciles = rate("llmfab_operator_reconciles_total", sel)
    errors = rate("llmfab_operator_reconcile_errors_total", sel)
    kept = selector(DATASET_DOCUMENTS, ds, 'stage="out"')
    read = selector(DATASET_DOCUMENTS, ds, 'stage="in"')
    per_resource = "sum by (resource_namespace, kind, resource)"
    gpu_seconds, cost = selector(USAGE_GPU_SECONDS, sel), selector(USAGE_COST, sel)
    return Dashboard(
        uid="llmfab-pipeline",
        title="llmfab / Pipeline",
        description="The operator: resources by phase, reconcile rate, errors and duration; Dataset step counts; "
        "GPU-hours, energy and cost per resource.",
        variables=(
            *job_and_instance("llmfab_operator_reconciles_total"),
            query_variable("dataset", "Dataset", DATASET_DOCUMENTS, after=("job", "instance")),
        ),
        rows=(
            (stat("Resources", "short", f"sum({resources})", "llmfab resources the operator tracks."),
             stat("Running", "short", f"sum({in_phase('Running')}) or vector(0)", "Resources in phase Running."),
             stat("Failed", "short", f"sum({in_phase('Failed')}) or vector(0)", "Resources in phase Failed.",
                  thresholds=(("green", None), ("red", 1))),
             stat("Reconciles / s", "short", f"sum({reconciles})", "Reconcile passes per second, all kinds."),
             stat("Reconcile errors", "percentunit", f"(sum({errors}) or vector(0)) / (sum({reconciles}) > 0)",
                  "Share of reconcile passes that raised.", maximum=1,
                  thresholds=(("green", None), ("orange", 0.01), ("red", 0.1))),
             stat("Reconcile p99", "s", quantile(0.99, "llmfab_operator_reconcile_seconds", sel),
                  "99th percentile of one reconcile pass.")),
            (Panel("Resources by phase", "timeseries", "short", (
                Target(f"sum by (kind, phase) ({resources})", "{{kind}} {{phase}}"),
            ), "Datasets, TrainingRuns, RewardModels and InferenceServices in each phase."),
             Panel("Reconciles and errors / s by kind", "timeseries", "short", (
                 Target(f"sum by (kind) ({reconciles})", "{{kind}} reconciles"),
                 Target(f"sum by (kind) ({errors})", "{{kind}} errors"),
             ), "Reconcile passes and the passes that raised, per kind.")),
            (Panel("Reconcile duration", "timeseries", "s",
                   latency_targets("llmfab_operator_reconcile_seconds", sel),
                   "One reconcile pass: p50, p90, p99 and the mean."),
             Panel("Dataset documents kept per step", "bargauge", "short", (
                 Target(f"sum by (dataset, step) ({kept})", "{{dataset}} {{step}}"),
             ), "Documents each Dataset pipeline step passed on (status.steps[].documentsOut).")),
            (Panel("Dataset share kept per step", "bargauge", "percentunit", (
                Target(f"sum by (dataset, step) ({kept}) / (sum by (dataset, step) ({read}) > 0)",
                       "{{dataset}} {{step}}"),
            ), "documentsOut / documentsIn of each step.", maximum=1),
             Panel("Dataset documents removed by reason", "bargauge", "short", (
                 Target(f"sum by (dataset, step, reason) ({selector(DATASET_REMOVED, ds)})",
                        "{{dataset}} {{step}}: {{reason}}"),
             ), "Why each step dropped documents (status.steps[].removed).")),
            (Panel("GPU-hours", "stat", "short", (Target(f"sum({gpu_seconds}) / 3600"),),
                   "GPUs x time of every resource's pods, all attempts (status.usage.gpuSeconds).", width=6, height=4),
             Panel("CPU core-hours reserved", "stat", "short", (Target(f"sum({selector(USAGE_CPU_SECONDS, sel)}) / 3600"),),
                   "CPU requests x time of every resource's pods (status.usage.cpuSeconds): reserved, not used.",
                   width=6, height=4),
             Panel("Energy (kWh)", "stat", "short", (Target(f"sum({selector(USAGE_ENERGY, sel)})"),),
                   "Measured by NVML in the pods, else the chart's cost.wattsPerGpu x GPU hours (status.usage.energyKwh).",
                   width=6, height=4),
             Panel("Cost", "stat", "short", (Target(f"sum({cost})"),),
                   "At the chart's cost prices (status.usage.cost); no data where no price is set.", width=6, height=4)),
            (Panel("GPU-hours by resource", "bargauge", "short", (
                Target(f"{per_resource} ({gpu_seconds}) / 3600", "{{kind}}/{{resource}}"),
            ), "GPU-hours each resource used over all its attempts, preempted and failed ones included."),
             Panel("Cost by resource", "bargauge", "short", (
                 Target(f"sum by (resource_namespace, kind, resource, currency) ({cost})",
                        "{{kind}}/{{resource}} ({{currency}})"),
             ), "Each resource's estimated cost at the chart's prices: pricePerGpuHour x GPU hours + pricePerKwh x kWh.")),
            (Panel("GPU-hours over time", "timeseries", "short", (
                Target(f"{per_resource} ({gpu_seconds}) / 3600", "{{kind}}/{{resource}}"),
            ), "Each resource's GPU-hours as they accrue (rewritten after every minute of runtime, at once when a pod starts, ends or goes).",
                width=24),),
        ),
    )


REPLICAS = "llmfab_inference_replicas"  # {resource_namespace, resource, state="desired"|"ready"}
COLD_STARTS = "llmfab_inference_cold_starts_total"
COLD_START_SECONDS = "llmfab_inference_cold_start_seconds"
LAST_COLD_START = "llmfab_inference_last_cold_start_seconds"
# The KEDA HTTP add-on interceptor's in-flight requests per InterceptorRoute (v0.14+; was
# interceptor_pending_requests): the operator names each route after its InferenceService.
INTERCEPTOR_CONCURRENCY = "interceptor_request_concurrency"
ROUTE = 'route_namespace=~"$resource_namespace", route_name=~"$resource"'


def autoscaling() -> Dashboard:
    sel = matchers("job", "instance", "resource_namespace", "resource")
    per_service = "sum by (resource_namespace, resource)"

    def replicas(state: str) -> str:
        return selector(REPLICAS, sel, f'state="{state}"')

    held = f"{INTERCEPTOR_CONCURRENCY}{{{ROUTE}}}"
    return Dashboard(
        uid="llmfab-autoscaling",
        title="llmfab / Autoscaling",
        description="InferenceServices with spec.autoscaling (KEDA): replicas, wakes from zero and their "
        "duration, requests held at the KEDA HTTP interceptor.",
        tags=("llmfab", "keda"),
        variables=(
            *job_and_instance(REPLICAS),
            query_variable("resource_namespace", "Namespace", REPLICAS, after=("job", "instance")),
            query_variable("resource", "InferenceService", REPLICAS, after=("job", "instance", "resource_namespace")),
        ),
        rows=(
            (stat("Ready replicas", "short", f"sum({replicas('ready')})", "Server pods answering /health, all "
                  "selected services (the operator's view of each Deployment)."),
             stat("Desired replicas", "short", f"sum({replicas('desired')})",
                  "Replicas KEDA (or spec.replicas) asks of the server Deployments."),
             stat("Scaled to zero", "short", f"count({per_service} ({replicas('desired')}) == 0)"
                  " or vector(0)", "Services idle at 0 replicas: no GPU held; the next request wakes one."),
             stat("Requests at the interceptor", "short", f"sum({held})",
                  "Requests in flight at the KEDA HTTP add-on's interceptor for the selected services "
                  f"({INTERCEPTOR_CONCURRENCY}); held there while a service wakes."),
             stat("Last cold start", "s", f"max({selector(LAST_COLD_START, sel)})",
                  "The longest of the selected services' last wake from zero: first pod created to first pod ready."),
             stat("Cold starts", "short", f"sum({selector(COLD_STARTS, sel)})",
                  "Wakes from zero the operator has recorded since it started.")),
            (Panel("Replicas by service", "timeseries", "short", (
                Target(f"{per_service} ({replicas('desired')})", "{{resource}} desired"),
                Target(f"{per_service} ({replicas('ready')})", "{{resource}} ready"),
            ), "Desired (what KEDA set on the Deployment) and ready server replicas of each service; a ready line "
               "lagging a desired one is a server starting."),
             Panel("Requests held at the interceptor", "timeseries", "short", (
                 Target(f"sum by (route_namespace, route_name) ({held})", "{{route_name}}"),
             ), "Requests in flight at the KEDA interceptor per service (its InterceptorRoute): while the service "
                "has no ready replica (Waking) every one of them is held, for up to coldStartTimeoutSeconds.")),
            (Panel("Cold starts", "timeseries", "short", (
                Target(f"{per_service} (increase({selector(COLD_STARTS, sel)}[$__rate_interval]))",
                       "{{resource}}"),
            ), "Wakes from zero completed per interval, per service."),
             Panel("Cold start duration", "timeseries", "s", latency_targets(COLD_START_SECONDS, sel),
                   "A wake from zero, first pod created to first pod ready: p50, p90, p99 and the mean of the "
                   "wakes in each interval (no line where none completed).")),
            (Panel("Last cold start by service", "timeseries", "s", (
                Target(f"max by (resource_namespace, resource) ({selector(LAST_COLD_START, sel)})", "{{resource}}"),
            ), "The duration of each service's last wake from zero (status.scale.lastColdStartSeconds).", width=24),),
        ),
    )


DASHBOARDS = {"inference-latency": inference_latency, "training": training, "pipeline": pipeline,
              "autoscaling": autoscaling}


def render() -> dict[str, str]:
    """File name → JSON text, as committed."""
    return {f"{name}.json": json.dumps(build().to_json(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmfab.monitoring.dashboards", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory of the dashboard JSON files")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    drifted = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                drifted.append(str(path))
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if drifted:
        print("error: dashboards differ from llmfab/monitoring/dashboards.py: " + ", ".join(drifted)
              + f"; regenerate with python -m llmfab.monitoring.dashboards --out {args.out}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
