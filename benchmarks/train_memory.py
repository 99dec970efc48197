"""Peak training memory with each memory technique on and off, one fresh process per configuration.

    .venv/bin/python benchmarks/train_memory.py            # 6×512×8, ctx 512, vocab 8000, batch 8×512
    .venv/bin/python benchmarks/train_memory.py --small    # 4×256×4, ctx 256, batch 8×256

Each configuration runs ``--steps`` optimizer steps of llmfab's model in a child process and reports
its peak memory: on CPU the peak resident set (VmHWM) minus the resident set after building the
model and batch (so the interpreter and torch's own pages do not count); on CUDA
``torch.cuda.max_memory_allocated``. Techniques: activation checkpointing (``torch.utils.checkpoint``
around every block, applied from outside the model as the trainer does), chunked cross-entropy vs
the naive full-logits loss, bf16 autocast vs fp32, and the low-memory AdamW variants, whose state
bytes are also reported against fp32 AdamW.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

CONFIGS: dict[str, dict[str, Any]] = {
    "baseline (fp32, naive CE, AdamW)": {},
    "chunked CE": {"chunked": True},
    "activation checkpointing": {"checkpointing": True},
    "bf16 autocast": {"bf16": True},
    "adamw-bf16": {"optimizer": "adamw-bf16"},
    "adamw-8bit": {"optimizer": "adamw-8bit"},
    "adafactor": {"optimizer": "adafactor"},
    "all: chunked + checkpointing + bf16 + adamw-8bit": {
        "chunked": True, "checkpointing": True, "bf16": True, "optimizer": "adamw-8bit"},
}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def child(cfg: dict[str, Any], shape: dict[str, int], steps: int, threads: int) -> dict[str, Any]:
    """One configuration in this (fresh) process."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    from llmfab.api.training_run import OptimizerSpec
    from llmfab.model.losses import chunked_cross_entropy
    from llmfab.model.transformer import ModelArgs, Transformer
    from llmfab.training.components.optim import build_optimizer, optimizer_state_bytes

    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=shape["vocab"], layers=shape["layers"], hidden=shape["hidden"],
                     heads=shape["heads"], kv_heads=shape["heads"],
                     intermediate=((8 * shape["hidden"] // 3) + 63) // 64 * 64,
                     context_length=shape["ctx"], sharing_groups=shape["layers"])
    model = Transformer(args).to(device)
    if cfg.get("checkpointing"):
        for i, block in enumerate(model.blocks):
            model.blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    optimizer = build_optimizer(model, OptimizerSpec(type=cfg.get("optimizer", "adamw"), lr=3e-4))
    batch = torch.randint(0, args.vocab_size, (shape["batch"], args.context_length + 1), device=device)
    before = _rss_kib("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before_cuda = torch.cuda.memory_allocated()
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.get("bf16")
                else contextlib.nullcontext())
    for _ in range(steps):
        with autocast:
            hidden = model(batch[:, :-1])
            if cfg.get("chunked"):
                loss = chunked_cross_entropy(hidden, model.output.weight, batch[:, 1:], chunk_tokens=512)
            else:
                logits = model.output(hidden).float()
                loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    result = {"state_bytes": optimizer_state_bytes(optimizer), "loss": loss.item()}
    if device.type == "cuda":
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - before_cuda) / 2**20
        result["device"] = torch.cuda.get_device_name(device)
    else:
        result["peak_mib"] = (_rss_kib("VmHWM") - before) / 1024
        result["device"] = "cpu"
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", nargs="*", help="run only the configurations whose name contains one of these")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    shape = ({"layers": 4, "hidden": 256, "heads": 4, "ctx": 256} if a.small
             else {"layers": 6, "hidden": 512, "heads": 8, "ctx": 512})
    shape.update(vocab=8000, batch=a.batch)
    if a.child:
        print(json.dumps(child(CONFIGS[a.child], shape, a.steps, a.threads)))
        return
    print(f"shape: {shape}, {a.steps} steps, {a.threads} threads, torch {torch.__version__}")
    results = {}
    for name in CONFIGS:
        if a.only and not any(s in name for s in a.only):
            continue
        cmd = [sys.executable, __file__, "--child", name, "--steps", str(a.steps), "--batch", str(a.batch),
               "--threads", str(a.threads)] + (["--small"] if a.small else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        print(f"  {name:52s} peak {r['peak_mib']:8.0f} MiB   optimizer state {r['state_bytes'] / 2**20:7.1f} MiB"
              f"   ({r['device']})", flush=True)
    base = results.get("baseline (fp32, naive CE, AdamW)")
    if base:
        print("\nvs baseline:")
        for name, r in results.items():
            print(f"  {name:52s} peak {r['peak_mib'] / base['peak_mib']:.2f}x   "
                  f"optimizer state {r['state_bytes'] / base['state_bytes']:.2f}x")


if __name__ == "__main__":
    main()
