"""Scale to zero on one machine (issue 21): cold start, the wake proxy's added latency, memory freed
while idle, and a burst at a sleeping service, through the real ``llmfab serve run``.

The service is the quickstart's shape (examples/quickstart.yaml: its TrainingRun's model, 6 layers,
hidden 192, 6 heads, context 128, vocab 2048; random weights through llmfab's own HF export; W4A16
round-to-nearest, group 64, the quickstart's group size) unless ``--model-dir`` names a served
model directory. One run:

1. ``llmfab serve run`` with ``spec.autoscaling.minReplicas: 0``: the proxy holds the port; the
   holder's RSS while Idle.
2. ``--cold-starts`` times: a streamed completion at the sleeping service, request to first token,
   and the status's ``lastColdStartSeconds``; then the vLLM process tree's RSS (and PSS, which
   counts pages shared between its processes once) while Ready, the tree's processes that are left
   after the idle stop (none: 0 bytes) and how long the stop took.
3. Warm: ``--requests`` sequential requests on one keep-alive connection each, to the proxy and to
   vLLM's own port (read from its command line) in turns: ``GET /v1/models`` and a 1-token
   completion. The proxy's added latency is the difference of the medians (and of the p95s); the
   goal is <= 2 ms at p50.
4. ``--burst`` concurrent completions (half streamed) at the sleeping service: every answer counted.

Example: .venv/bin/python benchmarks/wake_proxy.py --out benchmarks/results/wake_proxy.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "The quick model reads the river story and writes"


def cpu_description() -> dict[str, str]:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {"model": fields.get("Model name", "?").strip(), "flags": fields.get("Flags", "").strip(),
            "cpus": str(os.cpu_count())}  # fmt: skip


def build_quickstart_model(work: Path) -> tuple[Path, str]:
    """The quickstart TrainingRun's model shape, random weights, exported and quantized by llmfab."""
    import torch

    from llmfab.api import parse_resource
    from llmfab.api.loading import read_yaml_documents
    from llmfab.compress.quantize import QuantizeOptions, quantize_checkpoint
    from llmfab.model.from_spec import model_args_from_spec
    from llmfab.model.hf import export_hf
    from llmfab.model.transformer import Transformer
    from tests.serving.tiny_models import build_tokenizer, sample_text

    docs = [d for d in read_yaml_documents(REPO / "examples" / "quickstart.yaml") if d]
    run = parse_resource(next(d for d in docs if d["kind"] == "TrainingRun"))
    service = parse_resource(next(d for d in docs if d["kind"] == "InferenceService"))
    vocab = 2048  # the quickstart Dataset's tokenizer.vocabSize
    build_tokenizer(sample_text(1200), work / "tok")
    torch.manual_seed(0)
    args = model_args_from_spec(run.spec.model, vocab)
    export_hf(Transformer(args), args, work / "tok", work / "bf16")
    group = service.spec.quantization.group_size
    quantize_checkpoint(work / "bf16", work / "w4a16", QuantizeOptions(algorithm="rtn", group_size=group), None)
    shape = (f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, intermediate {args.intermediate}, "
             f"context {args.context_length}, vocab {vocab}; random weights, W4A16 RTN group {group}")  # fmt: skip
    return work / "w4a16", shape


def status_of(home: Path, name: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((home / "services" / f"{name}.status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data


def wait(condition: Any, what: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise SystemExit(f"llmfab serve run exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(processes, RSS sum, PSS sum) of ``pid``'s descendants: the vLLM tree."""
    rss = pss = 0
    children = psutil.Process(pid).children(recursive=True)
    for p in children:
        try:
            info = p.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
        except psutil.NoSuchProcess:
            pass
    return len(children), rss, pss


def first_token_seconds(url: str, model: str, timeout: float) -> float:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 16, "stream": True, "temperature": 0}
    req = urllib.request.Request(f"{url}/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            if line.startswith(b"data: {"):
                first = time.perf_counter() - start
                break
        else:
            raise SystemExit("the stream held no token")
        r.read()
    return first


def timed(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> float:
    start = time.perf_counter()
    conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
    response = conn.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise SystemExit(f"{method} {path}: {response.status}")
    return elapsed


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def warm_latency(proxy_port: int, vllm_port: int, model: str, requests: int) -> list[dict[str, Any]]:
    rows = []
    completion = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}).encode()
    for label, method, path, body in (("GET /v1/models", "GET", "/v1/models", None),
                                      ("POST /v1/completions, 1 token", "POST", "/v1/completions", completion)):  # fmt: skip
        conns = {"proxy": http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=60),
                 "direct": http.client.HTTPConnection("127.0.0.1", vllm_port, timeout=60)}  # fmt: skip
        times: dict[str, list[float]] = {"proxy": [], "direct": []}
        for i in range(requests + 20):
            for side in (("proxy", "direct") if i % 2 else ("direct", "proxy")):
                t = timed(conns[side], method, path, body)
                if i >= 20:  # warm-up not counted
                    times[side].append(t)
        for c in conns.values():
            c.close()
        row: dict[str, Any] = {"request": label, "n": requests}
        for side, xs in times.items():
            row[f"{side}P50Ms"] = round(1000 * statistics.median(xs), 3)
            row[f"{side}P95Ms"] = round(1000 * pct(xs, 0.95), 3)
        row["addedP50Ms"] = round(row["proxyP50Ms"] - row["directP50Ms"], 3)
        row["addedP95Ms"] = round(row["proxyP95Ms"] - row["directP95Ms"], 3)
        rows.append(row)
        print(f"  {label}: proxy p50 {row['proxyP50Ms']} ms, direct p50 {row['directP50Ms']} ms, "
              f"added p50 {row['addedP50Ms']} ms, p95 {row['addedP95Ms']} ms", flush=True)  # fmt: skip
    return rows


def burst(url: str, model: str, n: int, timeout: float) -> dict[str, Any]:
    def one(i: int) -> tuple[int, int]:
        stream = i % 2 == 0
        body = {"model": model, "prompt": f"{PROMPT} {i}", "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                "stream": stream, **({"stream_options": {"include_usage": True}} if stream else {})}  # fmt: skip
        req = urllib.request.Request(f"{url}/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read().decode()
                code = r.status
        except urllib.error.HTTPError as e:
            return e.code, 0
        if stream:  # the usage is in the last event before [DONE]
            events = [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]
            return code, int(json.loads(events[-2])["usage"]["completion_tokens"]) if events[-1:] == ["[DONE]"] else 0
        return code, int(json.loads(raw)["usage"]["completion_tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    return {"sent": n, "answered200": sum(code == 200 for code, _ in results),
            "withAllTokens": sum(code == 200 and tokens == 8 for code, tokens in results),
            "codes": sorted({code for code, _ in results}), "wallSeconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, help="a served model directory (default: build the quickstart shape)")
    p.add_argument("--cold-starts", type=int, default=3)
    p.add_argument("--requests", type=int, default=300, help="warm requests per path and kind")
    p.add_argument("--burst", type=int, default=64)
    p.add_argument("--idle-seconds", type=int, default=5)
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args()

    from llmfab.stages import stage_command
    from tests.serving.conftest import SERVE_PYTHON, free_port

    work = Path(tempfile.mkdtemp(prefix="wake-bench-"))
    load_before = os.getloadavg()
    if args.model_dir:
        model_dir, shape = args.model_dir, str(args.model_dir)
    else:
        model_dir, shape = build_quickstart_model(work)
    name, model, port = "wake-bench", "bench", free_port()
    spec = {"model": {"path": str(model_dir)}, "release": {"license": "apache-2.0"},
            "quantization": {"method": "none"}, "eval": {"enabled": False},
            "server": {"port": port, "maxModelLen": 128, "cpuKvCacheGib": 1, "servedModelName": model},
            "autoscaling": {"minReplicas": 0, "idleSeconds": args.idle_seconds, "coldStartTimeoutSeconds": 1800}}  # fmt: skip
    doc = {"apiVersion": "llmfab.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name}, "spec": spec}
    (work / "svc.yaml").write_text(yaml.safe_dump(doc))
    home = work / "home"
    env = {**os.environ, "LLMFAB_HOME": str(home), "LLMFAB_SERVE_PYTHON": str(SERVE_PYTHON)}
    env.pop("LLMFAB_STATUS", None)
    log = (work / "serve.out").open("wb")
    proc = subprocess.Popen(stage_command("serve", work / "svc.yaml", python=sys.executable), env=env, stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"

    def state() -> str | None:
        return (status_of(home, name).get("scale") or {}).get("state")

    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_description(),
                              "command": " ".join(sys.argv), "model": shape, "loadBefore": load_before}  # fmt: skip
    try:
        wait(lambda: state() == "Idle", "the proxy to hold the port", 300, proc)
        result["holderRssIdleBytes"] = psutil.Process(proc.pid).memory_info().rss
        colds = []
        for i in range(args.cold_starts):
            wait(lambda: state() == "Idle" and not psutil.Process(proc.pid).children(), "Idle", 300, proc)
            ttft = first_token_seconds(url, model, 1800)
            scale = status_of(home, name)["scale"]
            count, rss, pss = tree_memory(proc.pid)
            stop_began = time.monotonic()
            wait(lambda: state() == "Idle", "the idle stop", args.idle_seconds + 120, proc)
            left, rss_after, _ = tree_memory(proc.pid)
            colds.append({"firstTokenSeconds": round(ttft, 2), "statusColdStartSeconds": scale["lastColdStartSeconds"],
                          "vllmProcesses": count, "vllmRssBytes": rss, "vllmPssBytes": pss,
                          "processesAfterStop": left, "rssAfterStopBytes": rss_after,
                          "requestEndToIdleSeconds": round(time.monotonic() - stop_began, 1)})  # fmt: skip
            print(f"cold start {i + 1}: first token after {ttft:.1f} s (status: {scale['lastColdStartSeconds']} s); "
                  f"vLLM tree {count} processes, RSS {rss / 2**30:.2f} GiB, PSS {pss / 2**30:.2f} GiB; after the "
                  f"stop {left} processes, {rss_after} bytes", flush=True)  # fmt: skip
        result["coldStarts"] = colds
        result["holderRssAfterBytes"] = psutil.Process(proc.pid).memory_info().rss

        # Warm: wake it, read vLLM's own port, keep it busy with requests through both paths.
        first_token_seconds(url, model, 1800)
        child = next(c for c in psutil.Process(proc.pid).children() if "--port" in c.cmdline())
        vllm_port = int(child.cmdline()[child.cmdline().index("--port") + 1])
        print(f"warm latency, proxy :{port} vs vLLM :{vllm_port}", flush=True)
        result["warm"] = warm_latency(port, vllm_port, model, args.requests)

        wait(lambda: state() == "Idle", "Idle before the burst", args.idle_seconds + 120, proc)
        before = status_of(home, name)["scale"]["coldStarts"]
        result["burst"] = burst(url, model, args.burst, 1800)
        result["burst"]["coldStarts"] = status_of(home, name)["scale"]["coldStarts"] - before
        print(f"burst: {result['burst']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    result["loadAfter"] = os.getloadavg()
    print(json.dumps({k: v for k, v in result.items() if k != "cpu"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
