"""Scale of the operator (issue 10): N resources applied at once -> every child Job created once.

The test API server (``tests/kube``: kmock's emulator with the chart's CRDs and an emulated Job
controller) is served from a background thread; the real operator (``build_registry`` with
``OperatorSettings(resync_seconds=...)``, the production default 10 s) runs under kopf's
``KopfRunner`` exactly as tests/cluster/conftest.py runs it. Then N resources are applied at once:
one ``kubectl apply -f`` of a multi-document file with the real kubectl (``--apply kubectl``, the
default; its discovery cache is warmed first, as a user's would be), or parallel POSTs from 16
threads (``--apply post``).

Measured from the start of the apply:

- ``all Jobs``: until every Dataset has its child Job stored;
- ``reconciled``: until every resource also has the phase the operator sets in the same pass
  (Dataset: ``Pending``/``JobCreated`` or later; a TrainingRun of ``--kinds mixed``, whose Dataset
  exists but has not succeeded: ``Waiting``, and no Job);
- per-resource time to Job (p50/p95), from the apply and from the resource's own creation;
- the operator's requests (its own client and kopf's), requests per second, and the time its
  client calls took (``Kube.request``, timed by a wrapper on this instance; no operator code
  changes);
- duplicates: Job creates answered 201 in ``server.request_log``, Jobs stored, Jobs per resource,
  counted again after ``--settle`` seconds (default: one resync period, so every timer has fired).

The API server, kopf and the reconciler share one Python process (and its GIL), as in the tests;
kubectl is a process of its own. ``--profile FILE`` runs cProfile on every thread and writes the
merged statistics (``python -m pstats FILE``) and prints the top functions.

    .venv/bin/python benchmarks/operator_scale.py --resources 200
    .venv/bin/python benchmarks/operator_scale.py --resources 50
    .venv/bin/python benchmarks/operator_scale.py --resources 200 --kinds mixed --profile /tmp/op.prof
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import yaml
from kubernetes import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmfab.operator.kube import USER_AGENT, Kube  # noqa: E402
from llmfab.operator.settings import OperatorSettings  # noqa: E402
from tests.cluster.operator_runner import run_operator  # noqa: E402
from tests.kube.apiserver import CHART_CRDS, KubeAPIServer  # noqa: E402
from tests.kube.serving import serve_in_thread, write_kubeconfig  # noqa: E402
from tests.kube.watches import WatchEvent  # noqa: E402

GOAL_S = 30.0
KUBECTL = REPO / ".tools" / "bin" / "kubectl"
INSTANCE = "app.kubernetes.io/instance"
LLMFAB = ("llmfab.dev", None)
PLURALS = ("datasets", "trainingruns", "rewardmodels", "inferenceservices")


def manifests(n: int, kinds: str) -> list[dict[str, Any]]:
    """``datasets``: n Datasets. ``mixed``: n/2 Datasets and n/2 TrainingRuns, each reading one of
    them (which exists but has not succeeded, so the run waits)."""
    n_ds = n if kinds == "datasets" else (n + 1) // 2
    docs: list[dict[str, Any]] = []
    for i in range(n_ds):
        docs.append({"apiVersion": "llmfab.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": f"ds-{i:04d}"},
                     "spec": {"sources": [{"path": "corpus/*.txt"}],
                              "tokenizer": {"type": "bpe", "vocabSize": 384}}})
    for i in range(n - n_ds):
        docs.append({"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": f"tr-{i:04d}"},
                     "spec": {"dataset": {"name": f"ds-{i:04d}"}, "eval": {"enabled": False},
                              "release": {"license": "apache-2.0"},
                              "model": {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32}}})
    return docs


class Recorder:
    """A store controller (called under the store's lock on every committed change): when each
    resource was created, got its first Job, and got its first operator-set phase."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.job: dict[str, float] = {}
        self.jobs_added: collections.Counter[str] = collections.Counter()
        self.phase: dict[str, tuple[float, str]] = {}

    def __call__(self, ev: WatchEvent) -> None:
        t = time.monotonic()
        group, plural = ev.key
        meta = ev.obj.get("metadata") or {}
        if group == "llmfab.dev" and plural in PLURALS:
            key = f"{plural}/{meta.get('name')}"
            if ev.type == "ADDED":
                self.created.setdefault(key, t)
            phase = (ev.obj.get("status") or {}).get("phase")
            if phase and key not in self.phase:
                self.phase[key] = (t, phase)
        elif group == "batch" and plural == "jobs" and ev.type == "ADDED":
            instance = (meta.get("labels") or {}).get(INSTANCE, "")
            kind = (meta.get("labels") or {}).get("llmfab.dev/kind", "")
            key = f"{kind}s/{instance}" if kind else instance
            self.jobs_added[key] += 1
            self.job.setdefault(key, t)


class TimedKube:
    """Wraps ``kube.request`` on one instance: duration per (method, resource), calls in flight,
    and when the operator first asked about each resource (its first list of children)."""

    def __init__(self, kube: Kube) -> None:
        self.lock = threading.Lock()
        self.calls: dict[str, list[float]] = collections.defaultdict(list)
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_touch: dict[str, float] = {}
        original = kube.request

        def request(method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
                    content_type: str = "application/json") -> tuple[int, Any]:
            started = time.monotonic()
            selector = (query or {}).get("labelSelector", "")
            instance = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
            if INSTANCE in instance:
                key = f"{instance.get('llmfab.dev/kind', '')}s/{instance[INSTANCE]}"
                with self.lock:
                    self.first_touch.setdefault(key, started)
            with self.lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return original(method, path, body, query, content_type)
            finally:
                parts = path.split("/")  # /api(s)/.../namespaces/NS/PLURAL[/NAME[/status]]
                at = parts.index("namespaces") + 2 if "namespaces" in parts else len(parts) - 1
                what = parts[at] + ("/status" if parts[-1] == "status" else "")
                with self.lock:
                    self.in_flight -= 1
                    self.calls[f"{method} {what}"].append(time.monotonic() - started)

        kube.request = request  # type: ignore[method-assign]


@contextlib.contextmanager
def profiling(path: str | None) -> Iterator[list[cProfile.Profile]]:
    """cProfile in every thread started from here on (the server's, kopf's, its executor's) and
    in this one."""
    profiles: list[cProfile.Profile] = []
    if not path:
        yield profiles
        return

    def start(*_: Any) -> None:
        sys.setprofile(None)
        prof = cProfile.Profile()
        profiles.append(prof)
        prof.enable()

    threading.setprofile(start)
    main = cProfile.Profile()
    profiles.append(main)
    main.enable()
    try:
        yield profiles
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        main.disable()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def apply_kubectl(path: Path, env: dict[str, str]) -> float:
    started = time.monotonic()
    out = subprocess.run([str(KUBECTL), "apply", "-f", str(path)], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"error: kubectl apply exited {out.returncode}: {out.stderr[-2000:]}")
    return time.monotonic() - started


def apply_posts(url: str, docs: list[dict[str, Any]]) -> float:
    started = time.monotonic()
    local = threading.local()

    def post(doc: dict[str, Any]) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        plural = {"Dataset": "datasets", "TrainingRun": "trainingruns"}[doc["kind"]]
        r = local.session.post(f"{url}/apis/llmfab.dev/v1alpha1/namespaces/default/{plural}",
                               data=json.dumps(doc), headers={"Content-Type": "application/json"}, timeout=120)
        if r.status_code != 201:
            raise SystemExit(f"error: POST {doc['metadata']['name']}: HTTP {r.status_code}: {r.text[:500]}")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(post, docs))
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=200, help="how many resources are applied at once")
    parser.add_argument("--resync", type=float, default=10.0, help="OperatorSettings.resync_seconds (production: 10)")
    parser.add_argument("--kinds", choices=("datasets", "mixed"), default="datasets",
                        help="datasets: N Datasets; mixed: N/2 Datasets + N/2 TrainingRuns that wait for them")
    parser.add_argument("--apply", choices=("kubectl", "post"), default="kubectl",
                        help="one `kubectl apply -f` of a multi-document file, or 16 threads of POSTs")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to keep the operator running after the last Job, counting duplicates "
                             "again (default: --resync + 1, so every resource's timer has fired)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    parser.add_argument("--profile", metavar="FILE", help="cProfile all threads; merged stats to FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    settle = args.resync + 1 if args.settle is None else args.settle
    if args.apply == "kubectl" and not KUBECTL.exists():
        subprocess.run([str(REPO / "scripts" / "install_kube_tools.sh")], check=True, timeout=600)

    docs = manifests(args.resources, args.kinds)
    datasets = [f"datasets/{d['metadata']['name']}" for d in docs if d["kind"] == "Dataset"]
    runs = [f"trainingruns/{d['metadata']['name']}" for d in docs if d["kind"] == "TrainingRun"]
    load_before = os.getloadavg()

    with profiling(args.profile) as profiles, tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        server = KubeAPIServer(crds=CHART_CRDS)
        recorder = Recorder()
        server.store.controllers.append(recorder)
        with serve_in_thread(server):
            kubeconfig = write_kubeconfig(Path(tmp) / "kubeconfig", server.server_url)
            cfg = client.Configuration()
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
            kube = Kube(client.ApiClient(cfg))
            timed = TimedKube(kube)
            env = {**os.environ, "KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(Path(tmp) / "kube-cache"),
                   "NO_COLOR": "1"}
            manifest_file = Path(tmp) / "resources.yaml"
            manifest_file.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            if args.apply == "kubectl":  # a user's discovery cache is warm
                subprocess.run([str(KUBECTL), "get", "datasets,trainingruns"], env=env, capture_output=True,
                               check=True, timeout=120)
            settings = OperatorSettings(resync_seconds=args.resync)
            with run_operator(kube, settings, timeout=120) as runner:
                # Ready: kopf watches every llmfab kind.
                wait_until(lambda: {r.resource for r in list(server.request_log)
                                    if r.verb == "watch" and r.api_group == "llmfab.dev"} >= set(PLURALS),
                           60, "kopf's watches")
                time.sleep(1.0)
                log_start = len(server.request_log)
                cpu_start = time.process_time()
                t0 = time.monotonic()
                apply_s = apply_kubectl(manifest_file, env) if args.apply == "kubectl" else \
                    apply_posts(server.server_url, docs)

                def all_jobs() -> bool:
                    return all(k in recorder.job for k in datasets)

                def reconciled() -> bool:
                    return all_jobs() and all(k in recorder.phase for k in datasets) and \
                        all(recorder.phase.get(k, (0, ""))[1] == "Waiting" for k in runs)

                wait_until(all_jobs, args.timeout, "every Dataset's Job")
                t_jobs = max(recorder.job[k] for k in datasets)
                wait_until(reconciled, args.timeout, "every resource's phase")
                t_done = max([recorder.phase[k][0] for k in datasets + runs] + [t_jobs])
                log_done = len(server.request_log)
                cpu_done = time.process_time()
                load_during = os.getloadavg()
                uptime_during = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
                time.sleep(settle)
            if runner.exception is not None:
                raise SystemExit(f"error: the operator failed: {runner.exception!r}\n{runner.output[-3000:]}")
            tracebacks = runner.output.count("Traceback")
        log = list(server.request_log)
        stored_jobs = server.items("jobs")
        failures = list(server.failures)

    window = log[log_start:log_done]
    by_agent = collections.Counter("llmfab" if r.user_agent.startswith(USER_AGENT.split("/")[0])
                                   else "kopf" if r.user_agent.startswith("kopf") else "other" for r in window)
    operator_requests = by_agent["llmfab"] + by_agent["kopf"]
    verbs = collections.Counter(f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''} {r.code}"
                                for r in window if not r.user_agent.startswith("kubectl"))
    job_creates = [r for r in log if r.verb == "create" and r.resource == "jobs"]
    created_201 = sum(r.code == 201 for r in job_creates)
    conflicts_409 = sum(r.code == 409 for r in job_creates)
    per_resource = collections.Counter(j["metadata"]["labels"][INSTANCE] for j in stored_jobs)
    duplicates = max(sum(c - 1 for c in per_resource.values() if c > 1), created_201 - len(datasets), 0)
    wrong = len(stored_jobs) != len(datasets) or created_201 != len(datasets) or duplicates or \
        any(j["metadata"]["labels"][INSTANCE].startswith("tr-") for j in stored_jobs)

    from_apply = [recorder.job[k] - t0 for k in datasets]
    from_created = [recorder.job[k] - recorder.created[k] for k in datasets]
    queue = [timed.first_touch[k] - recorder.created[k] for k in datasets + runs if k in timed.first_touch]
    reconcile_s = [recorder.job[k] - timed.first_touch[k] for k in datasets if k in timed.first_touch]
    wall_jobs, wall_done = t_jobs - t0, t_done - t0
    busy = cpu_done - cpu_start

    result = {
        "resources": args.resources, "kinds": args.kinds, "datasets": len(datasets), "trainingruns": len(runs),
        "apply": args.apply, "resync_s": args.resync, "apply_s": round(apply_s, 2),
        "all_jobs_s": round(wall_jobs, 2), "reconciled_s": round(wall_done, 2),
        "goal_s": GOAL_S, "ratio_to_goal": round(wall_done / GOAL_S, 3),
        "time_to_job_from_apply_p50_s": round(percentile(from_apply, 0.5), 2),
        "time_to_job_from_apply_p95_s": round(percentile(from_apply, 0.95), 2),
        "time_to_job_from_created_p50_s": round(percentile(from_created, 0.5), 2),
        "time_to_job_from_created_p95_s": round(percentile(from_created, 0.95), 2),
        "created_to_first_operator_call_p50_s": round(percentile(queue, 0.5), 2),
        "created_to_first_operator_call_p95_s": round(percentile(queue, 0.95), 2),
        "first_operator_call_to_job_p50_s": round(percentile(reconcile_s, 0.5), 3),
        "first_operator_call_to_job_p95_s": round(percentile(reconcile_s, 0.95), 3),
        "operator_requests": operator_requests, "operator_requests_llmfab_client": by_agent["llmfab"],
        "operator_requests_kopf": by_agent["kopf"],
        "operator_requests_per_s": round(operator_requests / wall_done, 1),
        "job_creates_201": created_201, "job_creates_409": conflicts_409, "jobs_stored": len(stored_jobs),
        "duplicates": duplicates, "max_jobs_per_resource": max(per_resource.values(), default=0),
        "settle_s": settle, "process_cpu_s": round(busy, 1), "process_cpu_per_wall": round(busy / wall_done, 2),
        "max_operator_calls_in_flight": timed.max_in_flight,
        "load_before": [round(x, 2) for x in load_before], "load_during": [round(x, 2) for x in load_during],
        "uptime_during": uptime_during, "emulator_failures": len(failures), "operator_tracebacks": tracebacks,
    }

    print(f"{args.resources} resources ({len(datasets)} Datasets, {len(runs)} TrainingRuns waiting), "
          f"applied by {args.apply} in {apply_s:.2f} s; resync {args.resync:g} s")
    print(f"  all Jobs created after {wall_jobs:.2f} s; every resource reconciled (phase set) after {wall_done:.2f} s")
    print(f"  time to Job from the apply: p50 {result['time_to_job_from_apply_p50_s']} s, "
          f"p95 {result['time_to_job_from_apply_p95_s']} s; from the resource's creation: "
          f"p50 {result['time_to_job_from_created_p50_s']} s, p95 {result['time_to_job_from_created_p95_s']} s")
    print(f"  of which: creation -> operator's first call p50 {result['created_to_first_operator_call_p50_s']} s "
          f"p95 {result['created_to_first_operator_call_p95_s']} s; first call -> Job "
          f"p50 {result['first_operator_call_to_job_p50_s']} s p95 {result['first_operator_call_to_job_p95_s']} s")
    print(f"  operator requests until reconciled: {operator_requests} ({by_agent['llmfab']} llmfab client, "
          f"{by_agent['kopf']} kopf) = {result['operator_requests_per_s']}/s; "
          f"at most {timed.max_in_flight} client calls in flight")
    print(f"  Job creates: {created_201} answered 201, {conflicts_409} answered 409; {len(stored_jobs)} Jobs stored "
          f"for {len(datasets)} Datasets (checked {settle:g} s after the last); duplicates: {duplicates}")
    print(f"  this process (API server + kopf + reconciler): {busy:.1f} CPU s in {wall_done:.1f} s wall "
          f"({busy / wall_done:.2f} cores); load average before {load_before[0]:.2f}, "
          f"during {load_during[0]:.2f}; emulator failures {len(failures)}, operator tracebacks {tracebacks}")
    print("  requests by verb (window, not kubectl): " + ", ".join(f"{k}: {v}" for k, v in verbs.most_common()))
    client_time = sorted(((sum(v), k, len(v), statistics.median(v)) for k, v in timed.calls.items()), reverse=True)
    print("  llmfab client calls (total s, count, median ms): "
          + ", ".join(f"{k} {t:.1f}s/{n}/{m * 1000:.0f}ms" for t, k, n, m in client_time))

    if profiles:
        stats = pstats.Stats(profiles[0])
        for prof in profiles[1:]:
            with contextlib.suppress(TypeError):
                stats.add(prof)
        stats.dump_stats(args.profile)
        text = io.StringIO()
        pstats.Stats(args.profile, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue())

    verdict = "MET" if wall_done < GOAL_S and not wrong else "MISSED"
    print(f"SUMMARY: {args.resources} resources ({args.kinds}, {args.apply}) reconciled in {wall_done:.2f} s "
          f"(all Jobs {wall_jobs:.2f} s) = {wall_done / GOAL_S:.2f}x the {GOAL_S:g} s goal: {verdict}; "
          f"{created_201} Job creates for {len(datasets)} Datasets, duplicates {duplicates}; "
          f"{result['operator_requests_per_s']} operator requests/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if wrong:
        print(f"error: expected exactly one Job per Dataset: {dict(per_resource)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
