"""The parts of ``scripts/gpu_check.py`` that run inside the checks' environment (torch, llmfab).

``gpu_check.py`` itself imports only the standard library, so it runs under whatever python holds
the machine's CUDA torch; it starts this file as a child process with the checks' interpreter:

    python scripts/gpu_check_worker.py cuda-info             # torch, CUDA and the devices, as JSON
    python scripts/gpu_check_worker.py nvml                  # NVML's total-energy counter per GPU, as JSON
    python scripts/gpu_check_worker.py logits MODEL_DIR      # llmfab vs transformers logits, as JSON
    python scripts/gpu_check_worker.py bounded-memory --budget-gib G --lower-after N --report FILE -- ARGS
    python scripts/gpu_check_worker.py world-of-one -- ARGS

The first three print one JSON object as their last line of output. The last two run llmfab's real
entrypoint (``python -m llmfab ARGS``, e.g. ``train run --spec FILE``) in this process after one
change from outside, which is why they exist:

- ``bounded-memory`` caps the CUDA caching allocator (``torch.cuda.set_per_process_memory_fraction``)
  at G GiB before the run, so the micro-batch probe meets real ``torch.OutOfMemoryError``s, and after
  optimizer step N lowers the cap below what that step used, so the next step runs out of memory
  and the trainer's back-off must halve the micro-batch and go on. It writes what the allocator
  saw (out-of-memory count, peaks, the caps) to FILE.
- ``world-of-one`` makes a one-process run shard with FSDP2: FSDP2 is applied only when the world
  is larger than one (``distributed.uses_fsdp``), so on a one-GPU machine it joins a process group
  of one rank and reports itself as distributed. Everything else is the trainer's own code.
"""

from __future__ import annotations

import argparse
import json
import platform
import runpy
import sys
from pathlib import Path
from typing import Any

# Of the bytes a training step used above what stays between steps (weights, gradients, optimizer
# state), the share the lowered cap still allows: the same step then cannot fit, and at half the
# micro-batch it needs about half of them, leaving this fraction's excess (25%) for fragmentation.
LOWERED_SHARE = 0.75
SHARDED_MARK = "gpu-check: fully_shard applied to"


def lowered_limit(held: int, peak: int) -> int:
    """Allocator cap in bytes under which a step that peaked at ``peak`` runs out of memory while one
    at half the micro-batch (activations halved, ``held`` unchanged) fits."""
    return held + int(LOWERED_SHARE * max(0, peak - held))


def cuda_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable}
    try:
        import torch
    except ImportError as e:
        info["error"] = f"torch is not importable by {sys.executable}: {e}"
        return info
    available = torch.cuda.is_available()
    info.update(torch=torch.__version__, cuda=torch.version.cuda, available=available,
                count=torch.cuda.device_count() if available else 0)
    if available:
        props = [torch.cuda.get_device_properties(i) for i in range(info["count"])]
        info.update(names=[p.name for p in props], memory_gib=[round(p.total_memory / 2**30, 1) for p in props],
                    bf16=torch.cuda.is_bf16_supported())
    return info


def nvml_energy() -> dict[str, Any]:
    """Every GPU's total-energy counter (millijoules since the driver loaded), as NVML reads it."""
    try:
        import pynvml
    except ImportError as e:
        return {"error": f"pynvml (package nvidia-ml-py) is not importable: {e}; `make gpu-wheels` carries it"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return {"error": f"nvmlInit failed: {e}"}
    try:
        devices = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            device: dict[str, Any] = {"index": i, "name": name.decode() if isinstance(name, bytes) else name}
            try:
                device["energy_mj"] = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))
            except pynvml.NVMLError as e:
                device["error"] = f"nvmlDeviceGetTotalEnergyConsumption: {e}"
            devices.append(device)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"driver": driver.decode() if isinstance(driver, bytes) else driver, "devices": devices}
    finally:
        pynvml.nvmlShutdown()


def compare_logits(model_dir: Path, batch: int = 2, length: int = 128, seed: int = 0) -> dict[str, Any]:
    """Logits of the exported model through transformers and through llmfab's own model (rebuilt from
    the same export by ``load_hf``) on the GPU: in fp32 both, and each in bf16 against the fp32 ones."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmfab.model.hf import load_hf

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ours, args = load_hf(model_dir)
    length = min(length, args.context_length)
    tokens = torch.randint(0, args.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    tokens = tokens.to(device)
    theirs = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    logits: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            ours = ours.to(device=device, dtype=dtype).eval()
            theirs = theirs.to(device=device, dtype=dtype).eval()
            logits[f"ours_{tag}"] = ours.logits(tokens).float()
            logits[f"theirs_{tag}"] = theirs(input_ids=tokens).logits.float()
    reference = logits["theirs_fp32"]

    def max_diff(a: str, b: torch.Tensor) -> float:
        return float((logits[a] - b).abs().max())

    return {
        "device": str(device), "tokens": batch * length, "vocab": args.vocab_size,
        "scale": float(reference.abs().max()),
        "fp32_max_diff": max_diff("ours_fp32", reference),
        "bf16_ours_vs_fp32": max_diff("ours_bf16", reference),
        "bf16_theirs_vs_fp32": max_diff("theirs_bf16", reference),
        "argmax_agree_fp32": float((logits["ours_fp32"].argmax(-1) == reference.argmax(-1)).float().mean()),
    }


def run_llmfab(argv: list[str]) -> int:
    """``python -m llmfab ARGV`` in this process: the same module, arguments and exit code."""
    sys.argv = ["llmfab", *argv]
    try:
        runpy.run_module("llmfab", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def bounded_memory(budget_gib: float, lower_after: int, report: Path, argv: list[str]) -> int:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook  # every optimizer's step, globally

    if not torch.cuda.is_available():
        report.write_text(json.dumps({"error": "bounded-memory needs a CUDA device"}))
        return 3
    total = torch.cuda.get_device_properties(0).total_memory
    budget = int(budget_gib * 2**30)
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), 0)
    seen: dict[str, Any] = {"budget_bytes": budget, "total_bytes": total, "lower_after": lower_after, "steps": 0}

    def ooms() -> int:
        return int(torch.cuda.memory_stats(0).get("num_ooms", 0))

    def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        seen["steps"] += 1
        step = seen["steps"]
        if step == 1:
            seen["ooms_before_first_step"] = ooms()  # the probe's (and any of step 1's)
        if step == lower_after - 1:
            torch.cuda.reset_peak_memory_stats(0)  # the next step's peak alone, not the probe's
        if step == lower_after:
            held, peak = torch.cuda.memory_allocated(0), torch.cuda.max_memory_allocated(0)
            limit = lowered_limit(held, peak)
            torch.cuda.empty_cache()  # cached blocks count against the cap: the next step must allocate
            torch.cuda.set_per_process_memory_fraction(limit / total, 0)
            seen.update(held_bytes=held, step_peak_bytes=peak, lowered_bytes=limit, ooms_at_lowering=ooms())

    register_optimizer_step_post_hook(after_step)
    try:
        return run_llmfab(argv)
    finally:
        seen["ooms_total"] = ooms()
        report.write_text(json.dumps(seen))


def world_of_one(argv: list[str]) -> int:
    import torch.distributed as dist

    from llmfab.training.components import distributed as D

    original = D.init_distributed

    class ShardedWorldOfOne(D.DistEnv):
        """A world of one that answers "distributed", so ``parallelize`` applies ``fully_shard``."""

        @property
        def distributed(self) -> bool:
            return True

    def init_distributed(spec: Any) -> D.DistEnv:
        env = original(spec)
        if env.world_size != 1:
            raise RuntimeError(f"world-of-one: WORLD_SIZE is {env.world_size}; run it without torchrun")
        if not dist.is_initialized():
            cuda = env.device.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo", store=dist.HashStore(), rank=0, world_size=1,
                                    device_id=env.device if cuda else None)
        return ShardedWorldOfOne(env.rank, env.local_rank, 1, env.device)

    parallelize = D.parallelize

    def parallelize_and_count(*args: Any, **kwargs: Any) -> Any:
        from torch.distributed.fsdp import FSDPModule

        root = parallelize(*args, **kwargs)
        sharded = sum(isinstance(m, FSDPModule) for m in root.modules())
        print(f"{SHARDED_MARK} {sharded} modules", flush=True)  # the check reads this from the log
        return root

    D.init_distributed = init_distributed  # type: ignore[assignment]
    D.parallelize = parallelize_and_count  # type: ignore[assignment]
    return run_llmfab(argv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("cuda-info")
    sub.add_parser("nvml")
    logits = sub.add_parser("logits")
    logits.add_argument("model_dir", type=Path)
    bounded = sub.add_parser("bounded-memory")
    bounded.add_argument("--budget-gib", type=float, required=True)
    bounded.add_argument("--lower-after", type=int, required=True, help="optimizer step (>= 2) after which to lower the cap")
    bounded.add_argument("--report", type=Path, required=True)
    bounded.add_argument("llmfab_args", nargs=argparse.REMAINDER)
    one = sub.add_parser("world-of-one")
    one.add_argument("llmfab_args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    rest: list[str] = getattr(a, "llmfab_args", [])
    rest = rest[1:] if rest[:1] == ["--"] else rest
    if a.command == "bounded-memory":
        if a.lower_after < 2:
            p.error("--lower-after must be at least 2 (the step before it measures the step's peak)")
        return bounded_memory(a.budget_gib, a.lower_after, a.report, rest)
    if a.command == "world-of-one":
        return world_of_one(rest)
    result = {"cuda-info": cuda_info, "nvml": nvml_energy}.get(a.command)
    print(json.dumps(result() if result else compare_logits(a.model_dir)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
