"""Training tokens/s (and MFU where the device's peak is known): llmfab's real training step vs Hugging
Face LlamaForCausalLM (attn sdpa) and, when a nanoGPT checkout is present, nanoGPT's ``model.py``, at
the same shape, batch, precision, optimizer and clipping, measured in one run.

    .venv/bin/python benchmarks/train_throughput.py                 # CPU: 6×512×8, ctx 512, vocab 8000, batch 8×512
    .venv/bin/python benchmarks/train_throughput.py --shape small   # 4×256×4, ctx 256, batch 8×256
    .venv/bin/python benchmarks/train_throughput.py --precision fp32 --profile  # where the time goes
    python benchmarks/train_throughput.py --device cuda             # GPU: gpt2-small and large shapes, bf16,
                                                                    # torch.compile, FSDP2 over all GPUs

What each side runs per step (equal work):

- llmfab: the trainer's own code, not a copy: ``trainer.build`` (model, ``parallelize``: compile and
  FSDP2 as the spec says, fused AdamW with its decay groups), ``trainer.train_step`` (forward, chunked
  loss, backward, global-norm clip at the spec default 1.0, the loss and grad norm read back as the
  training loop reads them) and ``optimizer.step()`` + ``zero_grad``, from a spec with the defaults
  plus this shape, batch and precision (``lossChunkTokens`` default 4096).
- transformers / nanoGPT: forward with their own full-logits cross-entropy, backward,
  ``clip_grad_norm_(1.0)``, fused AdamW (lr 3e-4, betas 0.9/0.95, weight decay 0.1), ``loss.item()``.
  On CUDA: bf16 autocast on one GPU; under FSDP2 (several GPUs) each decoder layer and the root are
  ``fully_shard``-ed with bf16 parameters and fp32 reduction, as ``parallelize`` does for llmfab; with
  compile each layer is ``.compile()``-d, as llmfab's blocks are.

The batch is one fixed random batch (data loading is not measured: the trainer's window sampler
reads a few memory-mapped rows per step).

``--profile`` runs one more step of each implementation under ``torch.profiler`` and splits its self
time into matmuls, attention kernels and everything else (norms, RoPE, activations, loss and optimizer
elementwise work); the printed ceiling is the best ratio against each peer that removing *all* of
llmfab's other work could give.

Rounds alternate between the implementations (the machine is shared: a neighbour's load hits all of
them alike); each reports its median and its best step. With several GPUs and no torchrun around it,
the script starts itself again under ``torchrun --standalone --nproc-per-node <GPUs>``; rank 0
prints. nanoGPT's code is loaded at run time from a local mirror (``--nanogpt PATH`` to its model.py
or the git dir of karpathy/nanoGPT); it is never committed here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

NANOGPT_MIRROR = Path("/work/.mirror/karpathy+nanoGPT/repo")
Step = Callable[[torch.Tensor], float]


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    heads: int
    ctx: int
    vocab: int
    batch: int  # sequences per step per process


SHAPES = {
    "bench": Shape(6, 512, 8, 512, 8000, 8),  # the CPU benchmark shape (seed preset "small")
    "small": Shape(4, 256, 4, 256, 8000, 8),
    "gpt2-small": Shape(12, 768, 12, 1024, 50304, 16),  # GPT-2 small class, nanoGPT's padded vocabulary
    "large": Shape(12, 1024, 16, 512, 8000, 32),  # the seed's largest preset ("base"), default vocabulary
}
DEFAULT_SHAPES = {"cpu": ["bench"], "cuda": ["gpt2-small", "large"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if present")
    p.add_argument("--shape", nargs="+", choices=list(SHAPES), default=None,
                   help="default: bench on CPU; gpt2-small and large on CUDA")
    p.add_argument("--small", action="store_true", help="same as --shape small")
    p.add_argument("--precision", nargs="+", choices=["bf16", "fp32"], default=None,
                   help="default: fp32 and bf16 on CPU, bf16 on CUDA")
    p.add_argument("--batch", type=int, default=None, help="sequences per step per process (default: the shape's)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per implementation")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 3 on CUDA)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the blocks of every implementation; auto: on CUDA only")
    p.add_argument("--profile", action="store_true", help="split one step per implementation by kernel kind")
    p.add_argument("--nanogpt", default=str(NANOGPT_MIRROR), help="nanoGPT model.py or git dir; '' = skip")
    p.add_argument("--no-transformers", action="store_true", help="skip the Hugging Face peer")
    a = p.parse_args(argv)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu")
    a.shape = ["small"] if a.small and a.shape is None else (a.shape or DEFAULT_SHAPES[a.device])
    a.precision = a.precision or (["bf16"] if a.device == "cuda" else ["fp32", "bf16"])
    a.compile = a.compile == "on" or (a.compile == "auto" and a.device == "cuda")
    a.warmup = a.warmup if a.warmup is not None else (3 if a.device == "cuda" else 1)
    return a


def torchrun_argv(argv: list[str], gpus: int) -> list[str] | None:
    """The command that runs this script once per GPU, or None where it already runs that way."""
    if gpus <= 1 or "LOCAL_RANK" in os.environ:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            str(Path(__file__).resolve()), *argv]


def llmfab_spec(shape: Shape, precision: str, compile_: bool, world: int) -> object:
    """The TrainingRun spec whose defaults the benchmark measures, at this shape/batch/precision."""
    from llmfab.api.training_run import TrainingRunSpec

    return TrainingRunSpec.model_validate({
        "dataset": {"name": "benchmark"}, "precision": precision, "compile": compile_,
        "model": {"layers": shape.layers, "hidden": shape.hidden, "heads": shape.heads,
                  "contextLength": shape.ctx},
        "batch": {"globalTokens": shape.batch * shape.ctx * world, "microBatchSize": shape.batch},
        "optimizer": {"lr": 3e-4, "warmupSteps": 0, "weightDecay": 0.1},
    })


def load_nanogpt(path: Path) -> object | None:
    """nanoGPT's model.py as a module, from a file or a bare git dir (``git show HEAD:model.py``)."""
    if path.is_file():
        source = path
    elif path.is_dir():
        try:
            text = subprocess.run(["git", "--git-dir", str(path), "show", "HEAD:model.py"],
                                  capture_output=True, text=True, check=True).stdout
        except (subprocess.CalledProcessError, FileNotFoundError):
            return None
        source = Path(tempfile.mkdtemp()) / "nanogpt_model.py"
        source.write_text(text)
    else:
        return None
    spec = importlib.util.spec_from_file_location("nanogpt_model", source)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peer_setup(model: torch.nn.Module, layers: torch.nn.ModuleList, bf16: bool, compile_: bool,
               fsdp: bool) -> Callable[[], contextlib.AbstractContextManager[object]]:
    """Compile and shard a peer the way ``parallelize`` treats llmfab; returns its autocast."""
    if compile_:
        for layer in layers:
            layer.compile()
    if fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        for i, layer in enumerate(layers):
            fully_shard(layer, mp_policy=policy, reshard_after_forward=i < len(layers) - 1)
        fully_shard(model, mp_policy=policy)
    device = next(model.parameters()).device.type
    if bf16 and not fsdp:
        return lambda: torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext


def peer_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)


def build_steps(a: argparse.Namespace, shape: Shape, precision: str, env: object) -> tuple[dict[str, Step], dict[str, Any]]:
    """One step function per implementation, and facts to print (llmfab's FLOPs/token, MFU function)."""
    from llmfab.training import distributed as D
    from llmfab.training import trainer
    from llmfab.training.batching import BatchSchedule

    world = env.world_size  # type: ignore[attr-defined]
    device = env.device  # type: ignore[attr-defined]
    spec = llmfab_spec(shape, precision, a.compile, world)
    parts = trainer.build(spec, shape.vocab, env)  # type: ignore[arg-type]
    plan = BatchSchedule(spec.batch, shape.ctx, world).step_batch(0, shape.batch)  # type: ignore[attr-defined]
    bf16_used = D.uses_bf16(spec, env)  # type: ignore[arg-type]

    def llmfab_step(batch: torch.Tensor) -> float:
        loss, _ = trainer.train_step(parts, batch, plan, spec, env)  # type: ignore[arg-type]
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        return loss

    steps: dict[str, Step] = {"llmfab": llmfab_step}
    info = {"mfu": trainer.mfu_function(parts, shape.ctx, env), "parameters": parts.parameters,  # type: ignore[arg-type]
            "llmfab_bf16": bf16_used}
    bf16, fsdp = precision == "bf16", D.uses_fsdp(spec, env)  # type: ignore[arg-type]
    inter = parts.args.intermediate

    if not a.no_transformers:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=inter,
                          num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                          num_key_value_heads=shape.heads, max_position_embeddings=shape.ctx,
                          tie_word_embeddings=True, attn_implementation="sdpa")  # type: ignore[call-arg]
        torch.manual_seed(0)
        hf = LlamaForCausalLM(cfg).to(device).train()
        hf_autocast = peer_setup(hf, hf.model.layers, bf16, a.compile, fsdp)
        hf_opt = peer_optimizer(hf)

        def hf_step(batch: torch.Tensor) -> float:
            with hf_autocast():
                loss = hf(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)
            return float(loss.item())

        steps["transformers"] = hf_step

    nanogpt = load_nanogpt(Path(a.nanogpt)) if a.nanogpt else None
    if nanogpt is not None:
        gcfg = nanogpt.GPTConfig(block_size=shape.ctx, vocab_size=shape.vocab, n_layer=shape.layers,  # type: ignore[attr-defined]
                                 n_head=shape.heads, n_embd=shape.hidden, dropout=0.0, bias=False)
        torch.manual_seed(0)
        with contextlib.redirect_stdout(sys.stderr):
            gpt = nanogpt.GPT(gcfg).to(device)  # type: ignore[attr-defined]
        gpt_autocast = peer_setup(gpt, gpt.transformer.h, bf16, a.compile, fsdp)
        gpt_opt = peer_optimizer(gpt)

        def gpt_step(batch: torch.Tensor) -> float:
            with gpt_autocast():
                _, loss = gpt(batch[:, :-1].contiguous(), batch[:, 1:].contiguous())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
            gpt_opt.step()
            gpt_opt.zero_grad(set_to_none=True)
            return float(loss.item())

        steps["nanoGPT"] = gpt_step
    return steps, info


def run_shape(a: argparse.Namespace, shape: Shape, env: object, main: bool) -> None:
    from llmfab.training.metrics import flops_per_token, peak_flops

    device = env.device  # type: ignore[attr-defined]
    world = env.world_size  # type: ignore[attr-defined]
    say = print if main else (lambda *_, **__: None)
    say(f"\nshape: {shape.layers} layers, {shape.hidden} hidden, {shape.heads} heads, ctx {shape.ctx}, "
        f"vocab {shape.vocab}, batch {shape.batch}x{shape.ctx} per process x {world} process(es)"
        f"{', torch.compile' if a.compile else ''}{', FSDP2' if world > 1 else ''}")
    tokens_per_step = shape.batch * shape.ctx * world
    for precision in a.precision:
        steps, info = build_steps(a, shape, precision, env)
        if precision == "bf16" and not info["llmfab_bf16"]:
            say("  note: llmfab computes this in fp32 (its bf16 fallback on this CPU)")
        gen = torch.Generator().manual_seed(0)
        batch = torch.randint(0, shape.vocab, (shape.batch, shape.ctx + 1), generator=gen).to(device)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for step in steps.values():  # warm-up: allocator, oneDNN primitives, compile, optimizer state
            for _ in range(a.warmup):
                step(batch)
        for _ in range(a.rounds):
            for name, step in steps.items():
                for _ in range(a.steps):
                    _sync(device)
                    start = time.perf_counter()
                    step(batch)
                    _sync(device)
                    times[name].append(time.perf_counter() - start)
        median = {k: tokens_per_step / statistics.median(v) for k, v in times.items()}
        best = {k: tokens_per_step / min(v) for k, v in times.items()}
        peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
        n = info["parameters"]
        say(f"\n[{precision}] tokens/s over {a.rounds}x{a.steps} steps per implementation: median (best)"
            + (", MFU of the median" if peak else ""))
        say(f"  llmfab parameters {n / 1e6:.2f}M; model FLOPs/token {flops_per_token(n, shape.layers, shape.hidden, shape.ctx) / 1e9:.3f} G "
            "(6N + 12·layers·hidden·ctx); the same FLOPs are used for every implementation")
        if peak:
            say(f"  peak: {peak / 1e12:.0f} TFLOP/s dense bf16 per device "
                f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'LLMFAB_PEAK_FLOPS'}) x {world}")
        for k in steps:
            mfu = info["mfu"](median[k])
            say(f"  {k:13s} {median[k]:9.0f} ({best[k]:.0f})" + (f"  MFU {100 * mfu:.1f}%" if mfu is not None else ""))
        for k in steps:
            if k != "llmfab":
                say(f"  llmfab / {k}: {median['llmfab'] / median[k]:.2f}x median, {best['llmfab'] / best[k]:.2f}x best")
        if a.profile:
            print_profile(steps, batch, say)
        del steps, info
        if device.type == "cuda":
            torch.cuda.empty_cache()


MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}
MATMUL_KERNELS = ("gemm", "nvjet", "cutlass")  # cuBLAS / CUTLASS kernel names on CUDA
ATTENTION_KERNELS = ("scaled_dot_product", "flash", "fmha", "cudnn")


def classify(key: str) -> str:
    lower = key.lower()
    if key in MATMUL_OPS or any(k in lower for k in MATMUL_KERNELS):
        return "matmul"
    if any(k in lower for k in ATTENTION_KERNELS):
        return "attention"
    return "other"


def split_step(step: Step, batch: torch.Tensor) -> dict[str, float]:
    """Seconds of one step's self time in matmuls, attention kernels and everything else."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if batch.is_cuda else [])
    with profile(activities=activities) as prof:
        step(batch)
        _sync(batch.device)
    split = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        seconds = (event.self_device_time_total if batch.is_cuda else event.self_cpu_time_total) / 1e6
        split[classify(event.key)] += seconds
    return split


def print_profile(steps: dict[str, Step], batch: torch.Tensor, say: Callable[..., None]) -> None:
    splits = {name: split_step(step, batch) for name, step in steps.items()}
    say(f"\n  {'device' if batch.is_cuda else 'self'} time of one step (s): matmul + attention + other = total")
    for name, s in splits.items():
        say(f"  {name:13s} {s['matmul']:6.3f} + {s['attention']:6.3f} + {s['other']:6.3f} = {sum(s.values()):6.3f}")
    floor = splits["llmfab"]["matmul"] + splits["llmfab"]["attention"]
    for name, s in splits.items():
        if name != "llmfab":
            say(f"  ceiling llmfab / {name} with zero other work: {sum(s.values()) / floor:.2f}x "
                f"(now {sum(s.values()) / sum(splits['llmfab'].values()):.2f}x on this step)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "cpu"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.device == "cuda" and (relaunch := torchrun_argv(argv, torch.cuda.device_count())) is not None:
        sys.exit(subprocess.run(relaunch, check=False).returncode)
    if a.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # llmfab's init_distributed picks CUDA wherever it exists
        torch.set_num_threads(a.threads)
    if "bf16" in a.precision:
        # Measure bf16 where asked, even where llmfab's own choice for this CPU would be fp32.
        os.environ.setdefault("LLMFAB_CPU_BF16", "force")
    from llmfab.training import distributed as D

    env = D.init_distributed(llmfab_spec(SHAPES[a.shape[0]], a.precision[0], a.compile, 1))  # type: ignore[arg-type]
    if a.device == "cpu":
        torch.set_num_threads(a.threads)  # init_distributed sets the cores' count where OMP_NUM_THREADS is unset
    name = torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else _cpu_name()
    if env.is_main:
        print(f"device: {env.device.type} ({name}), "
              + (f"{env.world_size} GPU(s)" if env.device.type == "cuda" else f"threads {a.threads}")
              + f", torch {torch.__version__}")
    try:
        for shape_name in a.shape:
            shape = SHAPES[shape_name]
            if a.batch:
                shape = Shape(shape.layers, shape.hidden, shape.heads, shape.ctx, shape.vocab, a.batch)
            run_shape(a, shape, env, env.is_main)
    finally:
        D.teardown(env)


if __name__ == "__main__":
    main()
