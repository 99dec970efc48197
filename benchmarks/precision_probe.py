"""Does ``precision: auto`` pick the faster precision on this machine? The probe's choice against
real training steps in fp32 and bf16, measured in one run.

    .venv/bin/python benchmarks/precision_probe.py            # 6×512×8, ctx 512, vocab 8000, batch 8×512
    .venv/bin/python benchmarks/precision_probe.py --small    # 4×256×4, ctx 256, batch 8×256
    .venv/bin/python benchmarks/precision_probe.py --large --batch 2 --rounds 1   # 12×1024×16, ctx 512

First the probe runs as a training run's start would run it (``training/components/precision.py``: one block
and a head slice, fwd+bwd, fp32 and bf16 autocast) and its time is printed. Then the steps are the
trainer's own: ``trainer.build`` (model, chunked loss, parallelize, optimizer), ``trainer.train_step``
(forward/backward over the micro-batches, clip) and ``optimizer.step``, for a spec resolved to fp32
and one resolved to bf16. Rounds alternate between the two (the machine is shared: a neighbour's load
hits both alike); each reports its median and best step. The goal (issue 13): the chosen precision
within 5% of the faster, and where bf16 wins, bf16 ≥ 1.5× fp32.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llmfab.api.training_run import TrainingRunSpec
from llmfab.model.from_spec import model_args_from_spec
from llmfab.training.components import distributed as D
from llmfab.training.components import precision as P
from llmfab.training.components.batching import BatchSchedule
from llmfab.training.loop.trainer import build, train_step


def spec_for(a: argparse.Namespace, precision: str) -> TrainingRunSpec:
    return TrainingRunSpec.model_validate({
        "dataset": {"name": "benchmark"}, "release": {"license": "apache-2.0"}, "precision": precision, "seed": 0,
        "model": {"layers": a.layers, "hidden": a.hidden, "heads": a.heads, "contextLength": a.ctx},
        "batch": {"globalTokens": a.batch * a.ctx, "microBatchSize": a.micro or a.batch},
        "lossChunkTokens": a.chunk,
        "optimizer": {"lr": 3e-4, "weightDecay": 0.1},
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--small", action="store_true", help="4 layers, 256 wide, 4 heads, ctx 256")
    shape.add_argument("--large", action="store_true", help="12 layers, 1024 wide, 16 heads, ctx 512")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--micro", type=int, default=0, help="sequences per micro-batch (0: the whole batch)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    p.add_argument("--steps", type=int, default=1, help="timed steps per precision per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk", type=int, default=1024, help="loss chunk (tokens)")
    p.add_argument("--vocab", type=int, default=8000)
    a = p.parse_args()
    a.layers, a.hidden, a.heads, a.ctx = ((4, 256, 4, 256) if a.small else (12, 1024, 16, 512) if a.large
                                          else (6, 512, 8, 512))
    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    env = D.DistEnv(0, 0, 1, device)
    print(f"device: cpu ({P.cpu_model()}), threads {a.threads}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}, native bf16 {P.native_cpu_bf16()}")
    print(f"shape: {a.layers} layers, {a.hidden} hidden, {a.heads} heads, ctx {a.ctx}, vocab {a.vocab}, "
          f"batch {a.batch}x{a.ctx}, micro-batch {a.micro or a.batch}")

    args = model_args_from_spec(spec_for(a, "fp32").model, a.vocab)
    start = time.perf_counter()
    probe = P.run_probe(args)
    wall = time.perf_counter() - start
    decision = P.decide("auto", "cpu", probe=lambda: (probe, False))
    print(f"probe: {probe.describe()}; {probe.tokens} tokens, {wall:.2f} s in all -> auto chooses "
          f"{decision.precision} ({decision.why})")

    specs = {precision: spec_for(a, precision) for precision in ("fp32", "bf16")}
    parts = {k: build(s, a.vocab, env) for k, s in specs.items()}
    schedule = BatchSchedule(specs["fp32"].batch, a.ctx, 1)
    plan = schedule.step_batch(0, a.micro or a.batch)
    batch = torch.randint(0, a.vocab, (a.batch, a.ctx + 1), generator=torch.Generator().manual_seed(0))

    def step(precision: str) -> float:
        t0 = time.perf_counter()
        train_step(parts[precision], batch, plan, specs[precision], env)
        parts[precision].optimizer.step()
        parts[precision].optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for precision in specs:  # warm-up: allocator, oneDNN primitives, optimizer state
        step(precision)
    times: dict[str, list[float]] = {k: [] for k in specs}
    for _ in range(a.rounds):
        for precision in specs:
            times[precision] += [step(precision) for _ in range(a.steps)]
    tokens = a.batch * a.ctx
    median = {k: tokens / statistics.median(v) for k, v in times.items()}
    best = {k: tokens / min(v) for k, v in times.items()}
    print(f"\ntraining tokens/s over {a.rounds}x{a.steps} steps per precision: median (best)")
    for k in specs:
        print(f"  {k}  {median[k]:8.0f} ({best[k]:.0f})")
    faster = max(median, key=lambda k: median[k])
    chosen = decision.precision
    ratio = median[chosen] / median[faster]
    print(f"bf16 / fp32: {median['bf16'] / median['fp32']:.2f}x median, {best['bf16'] / best['fp32']:.2f}x best")
    print(f"probe chose {chosen}; faster in training: {faster}; chosen / faster {ratio:.3f} -> "
          f"{'within' if ratio >= 0.95 else 'NOT within'} 5%")
    if faster == "bf16":
        verdict = "meets" if median["bf16"] >= 1.5 * median["fp32"] else "misses"
        print(f"bf16 wins: {median['bf16'] / median['fp32']:.2f}x fp32 ({verdict} the 1.5x goal)")


if __name__ == "__main__":
    main()
