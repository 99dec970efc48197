"""The checks of ``scripts/gpu_check.py``: what each runs through llmfab's real entrypoints and what it
asks of the result. Standard library only; everything that imports torch runs in a child process
with the checks' interpreter (``Context.python``).

Each check is a function of the :class:`Context` that returns its figures (one line of text) or
raises :class:`CheckFailed` / :class:`CheckSkipped`. The judging is kept in pure functions
(``judge_logits``, ``judge_oom``, ``parse_throughput``, ...) so the CPU tests can check it on
recorded figures.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpu_check_context import (
    REPO,
    WORKER,
    CheckFailed,
    CheckSkipped,
    Context,
    event_numbers,
    last_line,
    read_json,
    read_jsonl,
)

API = "llmfab.dev/v1alpha1"
DATASET = "gpucheck"


@dataclass(frozen=True)
class Sizes:
    """The training shape of the train and fsdp2 checks on one device kind."""

    layers: int
    hidden: int
    heads: int
    context: int
    sequences: int  # per process per step
    steps: int
    sigterm_at: int  # the first run gets SIGTERM once it reports this step
    every: int  # checkpoint interval in steps


# Small enough that compile, not the steps, is most of a run; steps enough that SIGTERM lands mid-run.
SIZES = {"cuda": Sizes(4, 256, 4, 256, 16, 400, 20, 50), "cpu": Sizes(2, 64, 2, 64, 8, 24, 4, 8)}
# The out-of-memory check (CUDA only): ~0.1 GB of activations per sequence, so 64 of them need
# ~6 GB, well over the allocator cap it starts under; one sequence needs a fraction of it.
OOM_BUDGET_GIB = 3.0
OOM_MAX_MICRO = 64
OOM_STEPS = 8
OOM_LOWER_AFTER = 3


# --- specs -------------------------------------------------------------------------------------------


def dataset_resource(sources: str) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Dataset", "metadata": {"name": DATASET}, "spec": {
        "sources": [{"name": "sample", "path": sources, "documentPer": "paragraph", "paragraphsPerDocument": 8}],
        "tokenizer": {"type": "bpe", "vocabSize": 1024},
        "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0},
    }}


def train_resource(name: str, sizes: Sizes, processes: int = 1) -> dict[str, Any]:
    """bf16, compiled blocks, full activation checkpointing, the micro-batch probed; FSDP2 where the
    world is larger than one."""
    s = sizes
    return {"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name}, "spec": {
        "dataset": {"name": DATASET},
        "release": {"license": "apache-2.0"},
        "model": {"layers": s.layers, "hidden": s.hidden, "heads": s.heads, "contextLength": s.context},
        "maxSteps": s.steps, "precision": "bf16", "compile": True,
        "activationCheckpointing": {"mode": "full"},
        "batch": {"globalTokens": s.sequences * s.context * processes},
        "optimizer": {"lr": 1e-3, "warmupSteps": 10},
        "checkpoint": {"everySteps": s.every, "keepLast": 2},
        "evalEverySteps": 2 * s.every, "evalBatches": 2,
        "parallelism": {"processesPerNode": processes},
        "monitoring": {"prometheusPort": None, "logEverySteps": 1},
    }}


def oom_resource(name: str) -> dict[str, Any]:
    """Eager, no activation checkpointing, a micro-batch left to the probe (at most 64 sequences)."""
    return {"apiVersion": API, "kind": "TrainingRun", "metadata": {"name": name}, "spec": {
        "dataset": {"name": DATASET},
        "release": {"license": "apache-2.0"},
        "model": {"layers": 4, "hidden": 512, "heads": 8, "contextLength": 1024},
        "maxSteps": OOM_STEPS, "precision": "bf16", "compile": False,
        "batch": {"globalTokens": OOM_MAX_MICRO * 1024, "maxMicroBatchSize": OOM_MAX_MICRO},
        "optimizer": {"lr": 1e-3, "warmupSteps": 2},
        "checkpoint": {"everySteps": 4, "keepLast": 1},
        "evalEverySteps": OOM_STEPS, "evalBatches": 1,
        "monitoring": {"prometheusPort": None, "logEverySteps": 1},
    }}


# --- the checks ----------------------------------------------------------------------------------------


def check_dataset(ctx: Context) -> str:
    spec = ctx.write_spec(dataset_resource(str(REPO / "examples" / "data" / "*.txt")))
    child = ctx.run([*ctx.llmfab(), "data", "run", "--spec", str(spec)], "dataset")
    if child.process.returncode != 0:
        raise CheckFailed(f"llmfab data run exited {child.process.returncode}: {last_line(child.log)}")
    splits = read_json(ctx.home / "datasets" / DATASET / "manifest.json").get("splits", {})
    tokens = {k: v.get("tokens", 0) for k, v in splits.items()}
    return (f"{sum(v.get('documents', 0) for v in splits.values())} documents, "
            f"{sum(tokens.values())} tokens (train {tokens.get('train', 0)}), examples/data")


def train_and_resume(ctx: Context, name: str, sizes: Sizes, command: list[str], processes: int = 1) -> dict[str, Any]:
    """Run ``command`` (an llmfab entrypoint + ``train run --spec``) to ``sizes.sigterm_at`` steps, stop
    it with SIGTERM, run it again: it must have checkpointed where it stopped, resume from there,
    count on from that step and finish."""
    spec = ctx.write_spec(train_resource(name, sizes, processes))
    cmd = [*command, "train", "run", "--spec", str(spec)]
    run_dir, status_file = ctx.home / "runs" / name, ctx.home / "runs" / f"{name}.status.json"
    events_file = ctx.home / "runs" / f"{name}.events.jsonl"
    inductor = ctx.work / "inductor" / name  # this run's own: what it compiled shows there
    env = {"TORCHINDUCTOR_CACHE_DIR": str(inductor)}

    started = time.monotonic()
    first = ctx.start(cmd, f"{name}-1", env)
    if not ctx.wait_until(lambda: int(read_json(status_file).get("step") or 0) >= sizes.sigterm_at, first):
        code = first.process.returncode
        first.handle.close()
        raise CheckFailed(f"run 1 ended (exit {code}) before step {sizes.sigterm_at}: {last_line(first.log)}")
    first.process.send_signal(signal.SIGTERM)
    code = ctx.finish(first)
    first_seconds = time.monotonic() - started
    if code != 143:
        raise CheckFailed(f"run 1 exited {code} after SIGTERM, not 143: {last_line(first.log)}")
    stopped = event_numbers(read_jsonl(events_file), "Preempted", r"SIGTERM at step (\d+)")
    if not stopped:
        raise CheckFailed(f"run 1 left no Preempted event after SIGTERM; log: {first.log}")
    logged_before = len(read_jsonl(run_dir / "metrics.jsonl"))

    started = time.monotonic()
    second = ctx.run(cmd, f"{name}-2", env)
    second_seconds = time.monotonic() - started
    if second.process.returncode != 0:
        raise CheckFailed(f"run 2 (resume) exited {second.process.returncode}: {last_line(second.log)}")
    events = read_jsonl(events_file)
    resumed = event_numbers(events, "Resumed", r"\(step (\d+)\)")
    status = read_json(status_file)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    after = [m["step"] for m in metrics[logged_before:] if "step" in m]
    problems = []
    if resumed[-1:] != stopped[-1:]:
        problems.append(f"stopped at step {stopped[-1]} but resumed from {resumed[-1:] or 'nothing'}")
    if after[:1] != [stopped[-1] + 1]:
        problems.append(f"steps after the resume start at {after[:1] or 'none'}, not {stopped[-1] + 1}")
    if status.get("phase") != "Succeeded" or status.get("step") != sizes.steps:
        problems.append(f"ended {status.get('phase')} at step {status.get('step')} of {sizes.steps}")
    if ctx.device == "cuda" and any(e.get("reason") == "PrecisionFallback" for e in events):
        problems.append("fell back from bf16 to fp32 (PrecisionFallback event)")
    compiled = sum(1 for p in inductor.rglob("*") if p.is_file())
    if not compiled:
        problems.append("compile: true left nothing in the inductor cache (TORCHINDUCTOR_CACHE_DIR)")
    if problems:
        raise CheckFailed("; ".join(problems) + f"; logs: {first.log}, {second.log}")
    losses = [m["loss"] for m in metrics if "loss" in m]
    return {"stopped": stopped[-1], "status": status, "first_seconds": first_seconds,
            "second_seconds": second_seconds, "loss": (losses[0], losses[-1]), "compiled_files": compiled}


def describe_run(r: dict[str, Any], sizes: Sizes) -> str:
    status = r["status"]
    mfu = f", MFU {100 * status['mfu']:.1f}%" if status.get("mfu") is not None else ""
    tps = status.get("tokensPerSecond") or 0
    return (f"{sizes.layers}x{sizes.hidden} ctx {sizes.context}: SIGTERM at step {r['stopped']} -> exit 143, "
            f"checkpoint; resumed at {r['stopped']} -> {status.get('step')}/{sizes.steps} Succeeded; "
            f"{tps:,.0f} tok/s{mfu}; loss {r['loss'][0]:.2f} -> {r['loss'][1]:.2f}; "
            f"runs {r['first_seconds']:.0f} s + {r['second_seconds']:.0f} s")


def nvml(ctx: Context, log_name: str) -> dict[str, Any]:
    try:
        return ctx.worker(["nvml"], log_name)
    except CheckFailed as e:
        return {"error": str(e)}


def check_train(ctx: Context) -> str:
    """One process: bf16 autocast, compiled blocks, activation checkpointing, SIGTERM and resume."""
    sizes = SIZES[ctx.device]
    before = nvml(ctx, "nvml-before") if ctx.device == "cuda" else None
    started = time.monotonic()
    run = train_and_resume(ctx, "gpu-train", sizes, ctx.llmfab())
    if before is not None:
        ctx.state["energy"] = energy_used(before, nvml(ctx, "nvml-after"), time.monotonic() - started)
    ctx.state["train"] = run
    return ("bf16, " if ctx.device == "cuda" else "") + "compile, AC full; " + describe_run(run, sizes)


def energy_used(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Joules NVML counted on all GPUs between two readings of its total-energy counter."""
    if "error" in before or "error" in after:
        return {"error": before.get("error") or after.get("error")}
    joules, names = 0.0, []
    for b, a in zip(before.get("devices", []), after.get("devices", []), strict=False):
        if "energy_mj" not in b or "energy_mj" not in a:
            return {"error": b.get("error") or a.get("error") or "no energy reading"}
        joules += (a["energy_mj"] - b["energy_mj"]) / 1000
        names.append(a["name"])
    if not names:
        return {"error": "NVML found no GPU"}
    return {"joules": joules, "seconds": seconds, "gpus": names, "driver": after.get("driver")}


def check_usage(ctx: Context) -> str:
    if ctx.device != "cuda":
        raise CheckSkipped("NVML needs an NVIDIA GPU")
    energy = ctx.state.get("energy", {"error": "the train check measured nothing"})
    usage = ctx.state["train"]["status"].get("usage")
    shown = "status.usage: " + (json.dumps(usage, separators=(",", ":"))[:400] if usage else "absent")
    if "error" in energy:
        raise CheckFailed(f"NVML total-energy counter: {energy['error']}; {shown}")
    if energy["joules"] <= 0:
        raise CheckFailed(f"NVML total-energy counter did not advance over the train check; {shown}")
    return (f"NVML: {energy['joules']:.0f} J over {energy['seconds']:.0f} s of the train check "
            f"({energy['joules'] / max(energy['seconds'], 1e-9):.0f} W mean, {len(energy['gpus'])} GPU, "
            f"driver {energy.get('driver')}); {shown}")


# Tolerances: fp32 logits of two implementations of the same math differ by rounding only (~1e-5 of
# their scale); in bf16 each is off from the fp32 result by bf16 rounding, and llmfab's error may be
# at most twice transformers' own (or 2% of the logits' scale, where both are tiny).
FP32_TOLERANCE = 1e-3
BF16_RATIO = 2.0
BF16_FLOOR = 0.02


def judge_logits(r: dict[str, Any]) -> tuple[bool, str]:
    scale = max(1.0, r["scale"])
    fp32_ok = r["fp32_max_diff"] <= FP32_TOLERANCE * scale
    bf16_ok = r["bf16_ours_vs_fp32"] <= max(BF16_RATIO * r["bf16_theirs_vs_fp32"], BF16_FLOOR * scale)
    figures = (f"{r['tokens']} tokens on {r['device']}: fp32 max |diff| {r['fp32_max_diff']:.1e} "
               f"(limit {FP32_TOLERANCE * scale:.1e}, logits up to {r['scale']:.1f}), argmax agree "
               f"{100 * r['argmax_agree_fp32']:.1f}%; bf16 vs fp32: llmfab {r['bf16_ours_vs_fp32']:.3f}, "
               f"transformers {r['bf16_theirs_vs_fp32']:.3f}")
    return fp32_ok and bf16_ok, figures


def check_export_logits(ctx: Context) -> str:
    model_dir = ctx.home / "runs" / "gpu-train" / "model"
    ok, figures = judge_logits(ctx.worker(["logits", str(model_dir)], "export-logits"))
    if not ok:
        raise CheckFailed(figures)
    return figures


def judge_oom(report: dict[str, Any], events: list[dict[str, Any]], cap: dict[str, Any],
              status: dict[str, Any]) -> tuple[list[str], str]:
    """(problems, figures) of the out-of-memory check from what the worker, the events, the run's
    ``micro-batch.json`` and its status say."""
    reduced = event_numbers(events, "MicroBatchReduced", r"micro-batch now (\d+)")
    probe_ooms = report.get("ooms_before_first_step", 0)
    after_lowering = report.get("ooms_total", 0) - report.get("ooms_at_lowering", report.get("ooms_total", 0))
    problems = []
    if probe_ooms < 1:
        problems.append(f"the probe met no out-of-memory under {report.get('budget_bytes', 0) / 2**30:.1f} GiB")
    if "lowered_bytes" not in report:
        problems.append(f"the cap was never lowered (only {report.get('steps', 0)} optimizer steps)")
    elif after_lowering < 1 or not reduced:
        problems.append("no out-of-memory (or no MicroBatchReduced event) after the cap was lowered")
    if reduced and cap.get("microBatch") != reduced[-1]:
        problems.append(f"micro-batch.json holds {cap.get('microBatch')}, the last back-off said {reduced[-1]}")
    if status.get("phase") != "Succeeded" or status.get("step") != OOM_STEPS:
        problems.append(f"training did not go on: ended {status.get('phase')} at step {status.get('step')} "
                        f"of {OOM_STEPS}")
    chosen = 2 * reduced[0] if reduced else None
    figures = (f"cap {report.get('budget_bytes', 0) / 2**30:.1f} GiB: probe met {probe_ooms} OOM(s) -> micro-batch "
               f"{chosen}/{OOM_MAX_MICRO}; step peak {report.get('step_peak_bytes', 0) / 2**30:.2f} GiB, cap "
               f"lowered to {report.get('lowered_bytes', 0) / 2**30:.2f} GiB after step {OOM_LOWER_AFTER} -> "
               f"{after_lowering} OOM(s), back-off to {reduced or 'none'} (micro-batch.json: "
               f"{cap.get('microBatch')}); {status.get('step')}/{OOM_STEPS} steps {status.get('phase')}")
    return problems, figures


def check_oom(ctx: Context) -> str:
    if ctx.device != "cuda":
        raise CheckSkipped("a CUDA out-of-memory needs a GPU")
    name = "gpu-oom"
    spec = ctx.write_spec(oom_resource(name))
    report_file = ctx.work / "oom-report.json"
    child = ctx.run([ctx.python, str(WORKER), "bounded-memory", "--budget-gib", str(OOM_BUDGET_GIB),
                     "--lower-after", str(OOM_LOWER_AFTER), "--report", str(report_file), "--",
                     "train", "run", "--spec", str(spec)], name)
    runs = ctx.home / "runs"
    problems, figures = judge_oom(read_json(report_file), read_jsonl(runs / f"{name}.events.jsonl"),
                                  read_json(runs / name / "micro-batch.json"), read_json(runs / f"{name}.status.json"))
    if child.process.returncode != 0:
        problems.insert(0, f"exited {child.process.returncode}: {last_line(child.log)}")
    if problems:
        raise CheckFailed("; ".join(problems) + f" [{figures}]; log: {child.log}")
    return figures


def check_fsdp2(ctx: Context) -> str:
    """FSDP2 over every GPU through the launcher (torchrun), or, on one GPU, over a world of one."""
    sizes = SIZES[ctx.device]
    if ctx.gpus >= 2:
        processes = min(ctx.gpus, 8)
        run = train_and_resume(ctx, "gpu-fsdp2", sizes, ctx.llmfab(), processes)
        where = f"world {processes}, torchrun over {processes} GPUs"
    else:
        run = train_and_resume(ctx, "gpu-fsdp2", sizes, [ctx.python, str(WORKER), "world-of-one", "--"])
        logs = [ctx.work / "logs" / f"gpu-fsdp2-{i}.log" for i in (1, 2)]
        sharded = [sharded_modules(log.read_text(errors="replace")) for log in logs]
        if not all(sharded):
            raise CheckFailed(f"fully_shard was not applied (modules sharded per run: {sharded}); logs: {logs}")
        backend = "NCCL" if ctx.device == "cuda" else "gloo"
        where = (f"world 1 ({backend}, one rank, fully_shard on {sharded[0]} modules: FSDP2's code paths, "
                 f"no sharding across GPUs; {'1 GPU' if ctx.device == 'cuda' else 'CPU'} here)")
    return f"{where}; {'bf16 params, ' if ctx.device == 'cuda' else ''}compile, AC full; " + describe_run(run, sizes)


def sharded_modules(log: str) -> int:
    """How many modules the world-of-one worker found sharded (``gpu_check_worker.SHARDED_MARK``)."""
    found = re.findall(r"gpu-check: fully_shard applied to (\d+) modules", log)
    return int(found[-1]) if found else 0


THROUGHPUT_LINE = re.compile(r"^\s+(\S+)\s+(\d+) \((\d+)\)\s+N [\d.]+M\s+[\d.]+ GFLOP/token\s+[\d.]+ TFLOP/s"
                             r"(?:\s+MFU ([\d.]+)%)?")


def parse_throughput(output: str) -> dict[str, dict[str, float | None]]:
    """Each implementation's median tokens/s and MFU (%) from ``benchmarks/train_throughput.py``."""
    found: dict[str, dict[str, float | None]] = {}
    for line in output.splitlines():
        if m := THROUGHPUT_LINE.match(line):
            found[m.group(1)] = {"tokens_per_second": float(m.group(2)),
                                 "mfu": float(m.group(4)) if m.group(4) else None}
    return found


def describe_throughput(found: dict[str, dict[str, float | None]], shape: str) -> str:
    ours = found["llmfab"]
    parts = [f"{shape}: llmfab {ours['tokens_per_second'] or 0:.0f} tok/s"
             + (f" MFU {ours['mfu']:.1f}%" if ours["mfu"] is not None else "")]
    for name, peer in found.items():
        if name != "llmfab" and peer["tokens_per_second"]:
            parts.append(f"{name} {peer['tokens_per_second']:.0f} tok/s "
                         f"({(ours['tokens_per_second'] or 0) / peer['tokens_per_second']:.2f}x)")
    return "; ".join(parts)


def check_throughput(ctx: Context) -> str:
    """The benchmark against transformers; if that run fails, llmfab alone, so its MFU is still known."""
    cuda = ctx.device == "cuda"
    shape = "gpt2-small" if cuda else "tiny"
    args = ["--device", ctx.device, "--shape", shape, "--precision", "bf16", "--rounds", "3" if cuda else "1",
            "--steps", "3" if cuda else "1", "--nanogpt", ""]
    script = str(REPO / "benchmarks" / "train_throughput.py")
    child = ctx.run([ctx.python, script, *args], "throughput")
    found = parse_throughput(child.log.read_text(errors="replace"))
    if child.process.returncode == 0 and "llmfab" in found:
        if cuda and found["llmfab"]["mfu"] is None:
            raise CheckFailed(f"no MFU for this GPU (its peak FLOP/s is unknown: add it to "
                              f"metrics.PEAK_BF16_FLOPS or set LLMFAB_PEAK_FLOPS); {describe_throughput(found, shape)}")
        return describe_throughput(found, shape)
    failure = f"train_throughput.py exited {child.process.returncode}: {last_line(child.log)}; log: {child.log}"
    if ctx.left() < 60:
        raise CheckFailed(failure)
    alone = ctx.run([ctx.python, script, *args, "--no-transformers"], "throughput-llmfab")
    found = parse_throughput(alone.log.read_text(errors="replace"))
    if alone.process.returncode == 0 and "llmfab" in found:
        raise CheckFailed(f"{failure}; without transformers: {describe_throughput(found, shape)}")
    raise CheckFailed(f"{failure}; without transformers it exited {alone.process.returncode}: {last_line(alone.log)}")


@dataclass(frozen=True)
class Check:
    name: str
    summary: str
    run: Callable[[Context], str]
    budget: int  # seconds at most (the remaining --timeout may allow less)
    needs: tuple[str, ...] = ()


CHECKS = [
    Check("dataset", "the Dataset stage builds a tiny token Dataset from examples/data (the runs' data)",
          check_dataset, 120),
    Check("train", "TrainingRun on one GPU: bf16, compile, activation checkpointing, the micro-batch probe; "
          "SIGTERM mid-run, then resume from its checkpoint", check_train, 300, ("dataset",)),
    Check("usage", "NVML's total-energy counter around the train check, and the run's status.usage",
          check_usage, 10, ("train",)),
    Check("export-logits", "the exported model in transformers gives llmfab's logits on the GPU (fp32; bf16 "
          "error no worse than transformers')", check_export_logits, 120, ("train",)),
    Check("oom", "real CUDA out-of-memory under an allocator cap: the probe halves, a step's OOM halves the "
          "micro-batch, records the cap and training goes on", check_oom, 180, ("dataset",)),
    Check("fsdp2", "FSDP2 (bf16 params, compile, AC) with SIGTERM and resume: torchrun over all GPUs, or a "
          "world of one on one GPU", check_fsdp2, 300, ("dataset",)),
    Check("throughput", "benchmarks/train_throughput.py --device cuda: tokens/s and MFU, llmfab vs transformers",
          check_throughput, 300),
]
