"""Training tokens/s: llmfab's model + chunked loss + AdamW step vs Hugging Face LlamaForCausalLM
(attn sdpa) and, when a nanoGPT checkout is present, nanoGPT's ``model.py``, at the same shape,
batch, precision and optimizer, measured in one run.

    .venv/bin/python benchmarks/train_throughput.py            # 6×512×8, ctx 512, vocab 8000, batch 8×512
    .venv/bin/python benchmarks/train_throughput.py --small    # 4×256×4, ctx 256, batch 8×256
    .venv/bin/python benchmarks/train_throughput.py --precision fp32 --profile  # where the time goes

``--profile`` runs one more step of each implementation under ``torch.profiler`` and splits its
self time into matmuls, attention kernels and everything else (norms, RoPE, activations, loss
and optimizer elementwise work). The matmuls and the attention kernel are the floor no Python-level
model can go below at the same shape; the printed ceiling is the best ratio against each peer that
removing *all* of llmfab's other work could give.

Rounds alternate between the implementations (the machine is shared: a neighbour's load hits all
of them alike); each reports its median and its best step (the best is the least disturbed by
neighbours). Runs unchanged on CUDA (bf16 autocast there
too; the device name is printed). nanoGPT's code is loaded at run time from a local mirror
(``--nanogpt PATH`` to its model.py or the git dir of karpathy/nanoGPT); it is never committed here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llmfab.api.training_run import OptimizerSpec
from llmfab.training.losses import chunked_cross_entropy
from llmfab.training.model import ModelArgs, Transformer
from llmfab.training.optim import build_optimizer

NANOGPT_MIRROR = Path("/work/.mirror/karpathy+nanoGPT/repo")
Step = Callable[[torch.Tensor], float]


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


def adamw(params: object, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,  # type: ignore[arg-type]
                             fused=device.type in ("cpu", "cuda"))


def build_steps(a: argparse.Namespace, device: torch.device, autocast: Callable[[], object]) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    inter = ((8 * a.hidden // 3) + 63) // 64 * 64

    torch.manual_seed(0)
    args = ModelArgs(vocab_size=a.vocab, layers=a.layers, hidden=a.hidden, heads=a.heads, kv_heads=a.heads,
                     intermediate=inter, context_length=a.ctx, sharing_groups=a.layers)
    ours = Transformer(args).to(device)
    ours_opt = build_optimizer(ours, OptimizerSpec(lr=3e-4, weight_decay=0.1))

    def llmfab_step(batch: torch.Tensor) -> float:
        with autocast():  # type: ignore[attr-defined]
            loss = chunked_cross_entropy(ours(batch[:, :-1]), ours.output.weight, batch[:, 1:],
                                         chunk_tokens=a.chunk)
        loss.backward()
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        return loss.item()

    steps["llmfab"] = llmfab_step

    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=inter,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.heads,
                      max_position_embeddings=a.ctx, tie_word_embeddings=True, attn_implementation="sdpa")
    hf = LlamaForCausalLM(cfg).to(device).train()
    hf_opt = adamw(hf.parameters(), device)

    def hf_step(batch: torch.Tensor) -> float:
        with autocast():  # type: ignore[attr-defined]
            loss = hf(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)
        return loss.item()

    steps["transformers"] = hf_step

    nanogpt = load_nanogpt(Path(a.nanogpt)) if a.nanogpt else None
    if nanogpt is not None:
        gcfg = nanogpt.GPTConfig(block_size=a.ctx, vocab_size=a.vocab, n_layer=a.layers,  # type: ignore[attr-defined]
                                 n_head=a.heads, n_embd=a.hidden, dropout=0.0, bias=False)
        with contextlib.redirect_stdout(sys.stderr):
            gpt = nanogpt.GPT(gcfg).to(device)  # type: ignore[attr-defined]
        gpt_opt = adamw(gpt.parameters(), device)

        def gpt_step(batch: torch.Tensor) -> float:
            with autocast():  # type: ignore[attr-defined]
                _, loss = gpt(batch[:, :-1].contiguous(), batch[:, 1:].contiguous())
            loss.backward()
            gpt_opt.step()
            gpt_opt.zero_grad(set_to_none=True)
            return loss.item()

        steps["nanoGPT"] = gpt_step
    return steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="4 layers, 256 wide, 4 heads, ctx 256")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["bf16", "fp32"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per implementation")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=1024, help="llmfab loss chunk (tokens)")
    p.add_argument("--profile", action="store_true", help="split one step per implementation by kernel kind")
    p.add_argument("--nanogpt", default=str(NANOGPT_MIRROR), help="nanoGPT model.py or git dir; '' = skip")
    a = p.parse_args()
    a.layers, a.hidden, a.heads, a.ctx, a.vocab = (4, 256, 4, 256, 8000) if a.small else (6, 512, 8, 512, 8000)
    torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(f"device: {device.type} ({name}), threads {a.threads}, torch {torch.__version__}")
    print(f"shape: {a.layers} layers, {a.hidden} hidden, {a.heads} heads, ctx {a.ctx}, vocab {a.vocab}, "
          f"batch {a.batch}x{a.ctx}")
    tokens_per_step = a.batch * a.ctx
    for precision in a.precision:
        def autocast(precision: str = precision) -> object:
            if precision == "bf16":
                return torch.autocast(device.type, dtype=torch.bfloat16)
            return contextlib.nullcontext()

        steps = build_steps(a, device, autocast)
        gen = torch.Generator().manual_seed(0)
        batch = torch.randint(0, a.vocab, (a.batch, a.ctx + 1), generator=gen).to(device)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for step in steps.values():  # warm-up: allocator, oneDNN primitives, optimizer state
            step(batch)
        for _ in range(a.rounds):
            for name_, step in steps.items():
                for _ in range(a.steps):
                    _sync(device)
                    start = time.perf_counter()
                    step(batch)
                    _sync(device)
                    times[name_].append(time.perf_counter() - start)
        median = {k: tokens_per_step / statistics.median(v) for k, v in times.items()}
        best = {k: tokens_per_step / min(v) for k, v in times.items()}
        print(f"\n[{precision}] tokens/s over {a.rounds}x{a.steps} steps per implementation: median (best)")
        for k in steps:
            print(f"  {k:13s} {median[k]:9.0f} ({best[k]:.0f})")
        for k in steps:
            if k != "llmfab":
                print(f"  llmfab / {k}: {median['llmfab'] / median[k]:.2f}x median, "
                      f"{best['llmfab'] / best[k]:.2f}x best")
        if a.profile:
            print_profile(steps, batch)


MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}


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
        if event.key in MATMUL_OPS or "gemm" in event.key.lower():
            split["matmul"] += seconds
        elif "scaled_dot_product" in event.key or "flash" in event.key.lower():
            split["attention"] += seconds
        else:
            split["other"] += seconds
    return split


def print_profile(steps: dict[str, Step], batch: torch.Tensor) -> None:
    splits = {name: split_step(step, batch) for name, step in steps.items()}
    print("\n  self time of one step (s): matmul + attention + other = total")
    for name, s in splits.items():
        print(f"  {name:13s} {s['matmul']:6.2f} + {s['attention']:6.2f} + {s['other']:6.2f} = {sum(s.values()):6.2f}")
    floor = splits["llmfab"]["matmul"] + splits["llmfab"]["attention"]
    for name, s in splits.items():
        if name != "llmfab":
            print(f"  ceiling llmfab / {name} with zero other work: {sum(s.values()) / floor:.2f}x "
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


if __name__ == "__main__":
    main()
