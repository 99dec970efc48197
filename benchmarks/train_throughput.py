"""Training tokens/s (and MFU where the device's peak is known): llmfab's real training step vs Hugging
Face LlamaForCausalLM (attn sdpa) and, when a nanoGPT checkout is present, nanoGPT's ``model.py``, at
the same shape, batch, precision, optimizer and clipping, measured in one run.

    .venv/bin/python benchmarks/train_throughput.py                 # CPU: 6×512×8, ctx 512, vocab 8000, batch 8×512
    .venv/bin/python benchmarks/train_throughput.py --shape small   # 4×256×4, ctx 256, batch 8×256
    .venv/bin/python benchmarks/train_throughput.py --precision fp32 --profile  # where the time goes
    .venv/bin/python benchmarks/train_throughput.py --peer-malloc keep          # peers with llmfab's allocator setting
    .venv/bin/python benchmarks/train_throughput.py --compile on                # torch.compile on CPU too (~35 s first)
    python benchmarks/train_throughput.py --device cuda             # GPU: gpt2-small and large shapes, bf16,
                                                                    # torch.compile, FSDP2 over all GPUs

What each side runs per step (equal work):

- llmfab: the trainer's own code, not a copy: ``trainer.build`` (model, ``parallelize``: compile and
  FSDP2 as the spec says, fused AdamW with its decay groups), ``trainer.train_step`` (forward, chunked
  loss, backward, global-norm clip at the spec default 1.0, the loss and grad norm read back as the
  training loop reads them) and ``optimizer.step()`` + ``zero_grad``, from a spec with the defaults
  plus this shape, batch and precision (``lossChunkTokens`` default 4096), and the SwiGLU width that
  gives its MLP nanoGPT's matmul work (``--intermediate matched``: 1368 at hidden 512, not the default 1408).
- transformers / nanoGPT: forward with their own full-logits cross-entropy, backward,
  ``clip_grad_norm_(1.0)``, fused AdamW (lr 3e-4, betas 0.9/0.95, weight decay 0.1), ``loss.item()``.
  On CUDA: bf16 autocast on one GPU; under FSDP2 (several GPUs) each decoder layer and the root are
  ``fully_shard``-ed with bf16 parameters and fp32 reduction, as ``parallelize`` does for llmfab; with
  compile each layer is ``.compile()``-d, as llmfab's blocks are.

The batch is one fixed random batch (data loading is not measured: the trainer's window sampler
reads a few memory-mapped rows per step).

``--profile`` runs more steps of each implementation under ``torch.profiler`` (``--profile-rounds``,
alternating; one profiled step varies by ±15% here) and splits their self time (median per kind)
into matmuls, attention kernels and everything else (norms, RoPE, activations, loss and optimizer
elementwise work); the printed ceiling is the best ratio against each peer that removing *all* of
llmfab's other work could give.

On CPU each implementation runs in a process of its own, as it would run as a program: its own
allocator state (glibc maps and zeroes every buffer above its mmap threshold afresh on each step unless
the process keeps freed memory, as llmfab's training process does: ``llmfab/training/components/host_memory.py``;
the ``faults`` column shows it) and its own process set-up (llmfab's is ``init_distributed``, as in its
workload). ``--peer-malloc keep`` gives the peers llmfab's allocator setting too; ``--in-process`` runs
all three in this process, as the script did before. Rounds alternate between the implementations
(the machine is shared: a neighbour's load hits all of them alike; the parent lets one process run at
a time); each reports its median and its best step. With several GPUs and no torchrun around it,
the script starts itself again under ``torchrun --standalone --nproc-per-node <GPUs>``; rank 0
prints. nanoGPT's code is loaded at run time from a local mirror (``--nanogpt PATH`` to its model.py
or the git dir of karpathy/nanoGPT); it is never committed here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import resource
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
    "tiny": Shape(2, 64, 2, 32, 512, 2),  # a smoke run of the script itself (tests)
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
    p.add_argument("--profile-rounds", type=int, default=3,
                   help="profiled steps per implementation, alternating; the split printed is the median per kind")
    p.add_argument("--nanogpt", default=str(NANOGPT_MIRROR), help="nanoGPT model.py or git dir; '' = skip")
    p.add_argument("--no-transformers", action="store_true", help="skip the Hugging Face peer")
    p.add_argument("--in-process", action="store_true",
                   help="CPU: run every implementation in this process instead of one process each")
    p.add_argument("--peer-malloc", choices=["default", "keep"], default="default",
                   help="CPU: the peers' processes keep glibc's defaults (as their programs run) or get llmfab's "
                   "setting (freed memory kept in the process: llmfab/training/components/host_memory.py)")
    p.add_argument("--intermediate", default="matched",
                   help="SwiGLU width of llmfab and transformers: 'matched' (default) gives their MLP the 8·hidden² "
                   "weights of nanoGPT's GELU MLP (8/3·hidden rounded up to a multiple of 8), so every "
                   "implementation does the same work; 'default' is llmfab's own (multiple of 64); or a number")
    a = p.parse_args(argv)
    if a.device == "auto":
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu")
    a.shape = ["small"] if a.small and a.shape is None else (a.shape or DEFAULT_SHAPES[a.device])
    a.precision = a.precision or (["bf16"] if a.device == "cuda" else ["fp32", "bf16"])
    a.compile = a.compile == "on" or (a.compile == "auto" and a.device == "cuda")
    a.warmup = a.warmup if a.warmup is not None else (3 if a.device == "cuda" else 1)
    if a.intermediate not in ("matched", "default") and not a.intermediate.isdigit():
        p.error(f"--intermediate {a.intermediate!r}: give 'matched', 'default' or a positive integer")
    return a


def intermediate_for(choice: str, hidden: int) -> int | None:
    """The SwiGLU width the benchmark gives llmfab and transformers; None = llmfab's default.

    nanoGPT's MLP is two hidden×4·hidden matrices (8·hidden² weights); SwiGLU has three hidden×I
    matrices, so I = 8/3·hidden gives equal matmul FLOPs. llmfab's default rounds that up to a multiple
    of 64 (1408 at hidden 512: 3% more MLP work than nanoGPT); 'matched' rounds to a multiple of 8
    instead (1368: 0.2% more), which is the comparison at the same work that the goal asks for.
    """
    if choice == "default":
        return None
    if choice == "matched":
        return -(-hidden // 3) * 8  # ceil(8·hidden/3 / 8) · 8
    return int(choice)


def torchrun_argv(argv: list[str], gpus: int) -> list[str] | None:
    """The command that runs this script once per GPU, or None where it already runs that way."""
    if gpus <= 1 or "LOCAL_RANK" in os.environ:
        return None
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
            str(Path(__file__).resolve()), *argv]


def llmfab_spec(shape: Shape, precision: str, compile_: bool, world: int, intermediate: int | None = None) -> object:
    """The TrainingRun spec whose defaults the benchmark measures, at this shape/batch/precision."""
    from llmfab.api.training_run import TrainingRunSpec

    model: dict[str, Any] = {"layers": shape.layers, "hidden": shape.hidden, "heads": shape.heads,
                             "contextLength": shape.ctx}
    if intermediate is not None:
        model["intermediate"] = intermediate
    return TrainingRunSpec.model_validate({
        "dataset": {"name": "benchmark"}, "release": {"license": "apache-2.0"}, "precision": precision,
        "compile": compile_, "model": model,
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


IMPLEMENTATIONS = ("llmfab", "transformers", "nanoGPT")


def build_step(a: argparse.Namespace, shape: Shape, precision: str, env: object,
               name: str) -> tuple[Step, dict[str, Any]] | None:
    """One implementation's step function and facts to print (its applied parameters N; for llmfab
    also whether it computes in bf16 and its SwiGLU width); None where that peer is skipped/absent."""
    from llmfab.training.components import distributed as D
    from llmfab.training.components.batching import BatchSchedule
    from llmfab.training.loop import trainer

    world = env.world_size  # type: ignore[attr-defined]
    device = env.device  # type: ignore[attr-defined]
    spec = llmfab_spec(shape, precision, a.compile, world, intermediate_for(a.intermediate, shape.hidden))
    bf16, fsdp = precision == "bf16", D.uses_fsdp(spec, env)  # type: ignore[arg-type]
    inter = spec.model.intermediate_size()  # type: ignore[attr-defined]

    if name == "llmfab":
        parts = trainer.build(spec, shape.vocab, env)  # type: ignore[arg-type]
        plan = BatchSchedule(spec.batch, shape.ctx, world).step_batch(0, shape.batch)  # type: ignore[attr-defined]

        def llmfab_step(batch: torch.Tensor) -> float:
            loss, _ = trainer.train_step(parts, batch, plan, spec, env)  # type: ignore[arg-type]
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
            return loss

        # Matmul weights applied per token (embedding tables used only as lookups excluded), for FLOPs.
        return llmfab_step, {"applied": parts.parameters, "llmfab_bf16": D.uses_bf16(spec, env),  # type: ignore[arg-type]
                             "intermediate": parts.args.intermediate}

    if name == "transformers":
        if a.no_transformers:
            return None
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

        return hf_step, {"applied": sum(p.numel() for p in hf.parameters())}

    nanogpt = load_nanogpt(Path(a.nanogpt)) if a.nanogpt else None
    if nanogpt is None:
        return None
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

    return gpt_step, {"applied": gpt.get_num_params(non_embedding=True)}  # without the position table


def fixed_batch(shape: Shape, device: torch.device) -> torch.Tensor:
    """The one random batch every implementation trains on (the same in every process)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, shape.vocab, (shape.batch, shape.ctx + 1), generator=gen).to(device)


def timed_steps(step: Step, batch: torch.Tensor, n: int) -> list[tuple[float, int]]:
    """(seconds, minor page faults of this process) of each of ``n`` steps."""
    out = []
    for _ in range(n):
        _sync(batch.device)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step(batch)
        _sync(batch.device)
        out.append((time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults))
    return out


class InProcess:
    """An implementation run in this process (CUDA, and under torchrun: the ranks hold one of each)."""

    def __init__(self, step: Step, info: dict[str, Any], batch: torch.Tensor) -> None:
        self.step, self.info, self.batch = step, info, batch

    def run(self, n: int) -> list[tuple[float, int]]:
        return timed_steps(self.step, self.batch, n)

    def split(self) -> dict[str, float]:
        return split_step(self.step, self.batch)

    def close(self) -> None:
        del self.step


class Isolated:
    """An implementation in a process of its own (CPU): its own allocator state and process set-up,
    as when it runs as a program. llmfab's process is set up by ``init_distributed``, as its training
    workload's is (threads; freed memory kept in the process: ``training/components/host_memory.py``); a peer's
    process is plain PyTorch unless ``--peer-malloc keep`` gives it llmfab's setting too. The parent
    only tells the processes, one at a time, to run their steps, so rounds still alternate."""

    def __init__(self, argv: list[str], shape: Shape, precision: str, name: str) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        here = str(Path(__file__).resolve().parent)
        if here not in sys.path:  # loaded by path (tests): the child imports this module by name
            sys.path.append(here)
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_isolated_main, args=(child, argv, shape, precision, name), daemon=True)
        self.process.start()
        child.close()
        self.info: dict[str, Any] | None = self._reply()

    def _reply(self) -> Any:
        try:
            reply = self.conn.recv()
        except EOFError as e:
            raise RuntimeError(f"benchmark worker exited with {self.process.exitcode}") from e
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def run(self, n: int) -> list[tuple[float, int]]:
        self.conn.send(("run", n))
        result: list[tuple[float, int]] = self._reply()
        return result

    def split(self) -> dict[str, float]:
        self.conn.send(("split", 0))
        result: dict[str, float] = self._reply()
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop", 0))
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()


def _isolated_main(conn: Any, argv: list[str], shape: Shape, precision: str, name: str) -> None:
    from llmfab.training.components import distributed as D
    from llmfab.training.components.host_memory import keep_freed_memory

    try:
        a = parse_args(argv)
        if name == "llmfab":
            env = D.init_distributed(llmfab_spec(shape, precision, a.compile, 1))  # type: ignore[arg-type]
        else:
            env = D.DistEnv(0, 0, 1, torch.device("cpu"))
            if a.peer_malloc == "keep":
                keep_freed_memory()
        torch.set_num_threads(a.threads)
        built = build_step(a, shape, precision, env, name)
        if built is None:
            conn.send(None)
            return
        step, info = built
        batch = fixed_batch(shape, env.device)
        conn.send(info)
    except Exception as e:  # handed to the parent, which raises it
        conn.send(e)
        return
    while True:
        command, n = conn.recv()
        if command == "stop":
            return
        try:
            conn.send(timed_steps(step, batch, n) if command == "run" else split_step(step, batch))
        except Exception as e:
            conn.send(e)


def start_runners(a: argparse.Namespace, argv: list[str], shape: Shape, precision: str,
                  env: object) -> dict[str, InProcess | Isolated]:
    runners: dict[str, InProcess | Isolated] = {}
    try:
        for name in IMPLEMENTATIONS:
            if a.device == "cpu" and not a.in_process:
                isolated = Isolated(argv, shape, precision, name)
                if isolated.info is None:
                    isolated.close()
                else:
                    runners[name] = isolated
            elif (built := build_step(a, shape, precision, env, name)) is not None:
                runners[name] = InProcess(*built, fixed_batch(shape, env.device))  # type: ignore[attr-defined]
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    return runners


def run_shape(a: argparse.Namespace, argv: list[str], shape: Shape, env: object, main: bool) -> None:
    device = env.device  # type: ignore[attr-defined]
    world = env.world_size  # type: ignore[attr-defined]

    def say(*args: object) -> None:
        if main:
            print(*args, flush=True)

    say(f"\nshape: {shape.layers} layers, {shape.hidden} hidden, {shape.heads} heads, ctx {shape.ctx}, "
        f"vocab {shape.vocab}, batch {shape.batch}x{shape.ctx} per process x {world} process(es)"
        f"{', torch.compile' if a.compile else ''}{', FSDP2' if world > 1 else ''}")
    if device.type == "cpu":
        say("  each implementation in its own process" if not a.in_process else "  all implementations in this process",
            f"(peers' malloc: {a.peer_malloc})" if not a.in_process else "")
    tokens_per_step = shape.batch * shape.ctx * world
    for precision in a.precision:
        runners = start_runners(a, argv, shape, precision, env)
        try:
            info = {k: r.info for k, r in runners.items()}
            if precision == "bf16" and not info["llmfab"]["llmfab_bf16"]:  # type: ignore[index]
                say("  note: llmfab computes this in fp32 (its bf16 fallback on this CPU)")
            for runner in runners.values():  # warm-up: allocator, oneDNN primitives, compile, optimizer state
                runner.run(a.warmup)
            runs: dict[str, list[tuple[float, int]]] = {k: [] for k in runners}
            for _ in range(a.rounds):
                for name, runner in runners.items():
                    runs[name] += runner.run(a.steps)
            report(a, shape, precision, runs, info, world, tokens_per_step, device, say)
            if a.profile:  # one profiled step each, alternating, a.profile_rounds times; the median per kind
                splits: dict[str, list[dict[str, float]]] = {k: [] for k in runners}
                for _ in range(a.profile_rounds):
                    for name, runner in runners.items():
                        splits[name].append(runner.split())
                print_profile({k: {kind: statistics.median(s[kind] for s in v) for kind in v[0]}
                               for k, v in splits.items()}, device, say)
        finally:
            for runner in runners.values():
                runner.close()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def report(a: argparse.Namespace, shape: Shape, precision: str, runs: dict[str, list[tuple[float, int]]],
           info: dict[str, Any], world: int, tokens_per_step: int, device: torch.device,
           say: Callable[..., None]) -> None:
    from llmfab.training.components.metrics import flops_per_token, peak_flops
    from llmfab.training.components.metrics import model_flops_utilization as metrics_mfu

    times = {k: [t for t, _ in v] for k, v in runs.items()}
    median = {k: tokens_per_step / statistics.median(v) for k, v in times.items()}
    best = {k: tokens_per_step / min(v) for k, v in times.items()}
    faults = {k: statistics.median(f for _, f in v) for k, v in runs.items()}
    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    flops = {k: flops_per_token(i["applied"], shape.layers, shape.hidden, shape.ctx) for k, i in info.items()}
    say(f"\n[{precision}] tokens/s over {a.rounds}x{a.steps} steps per implementation: median (best); "
        "each one's applied parameters N and model FLOPs/token (6N + 12·layers·hidden·ctx); achieved "
        "model TFLOP/s of the median" + (" and MFU" if peak else "") + "; minor page faults per step (median)")
    say(f"  llmfab/transformers SwiGLU width {info['llmfab']['intermediate']} (--intermediate {a.intermediate})")
    if peak:
        say(f"  peak: {peak / 1e12:.0f} TFLOP/s dense bf16 per device "
            f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'LLMFAB_PEAK_FLOPS'}) x {world}")
    for k in runs:
        achieved = median[k] * flops[k]
        mfu = metrics_mfu(median[k], flops[k], peak, world)
        say(f"  {k:13s} {median[k]:9.0f} ({best[k]:.0f})  N {info[k]['applied'] / 1e6:.2f}M  "
            f"{flops[k] / 1e9:.3f} GFLOP/token  {achieved / 1e12:.3f} TFLOP/s"
            + (f"  MFU {100 * mfu:.1f}%" if mfu is not None else "") + f"  faults {faults[k]:.0f}")
    for k in runs:
        if k != "llmfab":
            say(f"  llmfab / {k}: {median['llmfab'] / median[k]:.2f}x median tokens/s, "
                f"{best['llmfab'] / best[k]:.2f}x best; {median['llmfab'] * flops['llmfab'] / (median[k] * flops[k]):.2f}x "
                "model FLOP/s")


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


def print_profile(splits: dict[str, dict[str, float]], device: torch.device, say: Callable[..., None]) -> None:
    say(f"\n  {'device' if device.type == 'cuda' else 'self'} time of one step (s): matmul + attention + other = total")
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
    from llmfab.training.components import distributed as D

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
            run_shape(a, argv, shape, env, env.is_main)
    finally:
        D.teardown(env)


if __name__ == "__main__":
    main()
