"""One optimizer step: torch's fused AdamW (the peer) vs llmfab's AdamW8bit and AdamWBF16.

    .venv/bin/python benchmarks/optimizer_step.py                   # 12×1024-like parameter set
    .venv/bin/python benchmarks/optimizer_step.py --small           # a quarter of the rows
    .venv/bin/python benchmarks/optimizer_step.py --reference       # also the pre-chunking llmfab code

The parameter set is the large matrices of one 12×1024 model layer plus its 8000×1024 embedding
(tied head): qkv 1024×3072, gate_up 1024×5504 (as 2×2752), down 2752×1024, a 1024 norm weight.
The step time of a model is this per-layer cost times the layers, so the ratio is what matters.
Each optimizer takes one untimed step (state creation), then ``--steps`` timed steps, the
optimizers interleaved round by round so load on a shared machine hits them alike; the median is
reported. Peak extra memory of a step is the peak resident set during it (``VmHWM``, reset through
``/proc/self/clear_refs`` before the step) minus the resident set before it: the temporaries the step
allocates, which tracemalloc cannot see.

Peers, where importable: bitsandbytes' ``AdamW8bit`` (CPU backend in recent versions) and
torchao's ``AdamW8bit``. Run them from a venv that has them, e.g. with
``PYTHONPATH=/path/to/venv/lib/python3.11/site-packages`` holding the same torch version.
``--reference`` loads ``tests/training_model/lowmem_adam_reference.py``, a copy of the unchunked
implementation the tests compare the current one against.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfab.training.components.lowmem_adam import AdamW8bit, AdamWBF16  # noqa: E402

SHAPES = [(8000, 1024), (1024, 3072), (1024, 2752), (1024, 2752), (2752, 1024), (1024,)]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _params(shapes: list[tuple[int, ...]], dtype: torch.dtype) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(*s, generator=g) * 0.02).to(dtype))
        p.grad = (torch.randn(*s, generator=g) * 1e-3).to(dtype)
        params.append(p)
    return params


def _peers() -> dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    peers: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {}
    try:
        import bitsandbytes as bnb

        peers[f"bitsandbytes {bnb.__version__} AdamW8bit"] = lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-3)
    except Exception as e:  # any import failure means "not available here"
        print(f"bitsandbytes: not available ({type(e).__name__}: {e})".splitlines()[0])
    try:
        from torchao.optim import AdamW8bit as AoAdamW8bit

        peers["torchao AdamW8bit"] = lambda ps: AoAdamW8bit(ps, lr=1e-3)
    except Exception as e:
        print(f"torchao: not available ({type(e).__name__}: {e})".splitlines()[0])
    return peers


def _reference() -> dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]]:
    path = ROOT / "tests" / "training_model" / "lowmem_adam_reference.py"
    spec = importlib.util.spec_from_file_location("lowmem_adam_reference", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {"llmfab AdamW8bit (before)": lambda ps: mod.AdamW8bit(ps, lr=1e-3),
            "llmfab AdamWBF16 (before)": lambda ps: mod.AdamWBF16(ps, lr=1e-3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="a quarter of the rows of every matrix")
    ap.add_argument("--bf16-params", action="store_true", help="bf16 parameters (stochastic rounding)")
    ap.add_argument("--reference", action="store_true", help="also time the pre-chunking implementation")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [(s[0] // 4, *s[1:]) if args.small and len(s) > 1 else s for s in SHAPES]
    dtype = torch.bfloat16 if args.bf16_params else torch.float32
    makers: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
        "torch AdamW fused (peer)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        "llmfab AdamW8bit": lambda ps: AdamW8bit(ps, lr=1e-3),
        "llmfab AdamWBF16": lambda ps: AdamWBF16(ps, lr=1e-3),
    }
    makers.update(_peers())
    if args.reference:
        makers.update(_reference())
    n = sum(torch.Size(s).numel() for s in shapes)
    print(f"parameters: {n / 1e6:.1f}M in {len(shapes)} tensors {shapes}, dtype {dtype}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, load {os.getloadavg()}")
    runs = {}
    for name, make in makers.items():
        params = _params(shapes, dtype)
        t = time.perf_counter()
        opt = make(params)
        opt.step()  # creates the state (and, for a compiled peer, compiles)
        first = time.perf_counter() - t
        runs[name] = (params, opt, first)
    times: dict[str, list[float]] = {name: [] for name in runs}
    peaks: dict[str, list[int]] = {name: [] for name in runs}
    can_peak = _reset_peak()
    for _ in range(args.steps):
        for name, (_, opt, _) in runs.items():
            before = _status("VmRSS")
            _reset_peak()
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
            peaks[name].append(_status("VmHWM") - before)
    base = statistics.median(times["torch AdamW fused (peer)"])
    print(f"\n| optimizer | first step s | step s (median of {args.steps}) | × fused AdamW "
          f"| peak extra MiB{'' if can_peak else ' (n/a)'} |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, _, first) in runs.items():
        med = statistics.median(times[name])
        print(f"| {name} | {first:.3f} | {med:.3f} | {med / base:.2f} | {max(peaks[name]) / 2**20:.0f} |")


if __name__ == "__main__":
    main()
