"""Training memory at scale: the seed's largest shape (12 layers × 1024, 16 heads, ctx 512, vocab 8000)
with llmfab's memory techniques on and off, Hugging Face ``LlamaForCausalLM`` beside it, and the
largest model that trains on this machine with every technique on.

    .venv/bin/python benchmarks/train_large.py                          # every section
    .venv/bin/python benchmarks/train_large.py --sections workload techniques peer
    .venv/bin/python benchmarks/train_large.py --sections largest --limit-gib 20
    .venv/bin/python benchmarks/train_large.py --base 2x128x4 --ladder 2x128x4 2x256x4 4x256x4 --limit-gib 2  # smoke

Every configuration runs in a fresh child process (at ``nice 10``) so its peak resident set is its
own; the peak is the kernel's high-water mark of the child (``VmHWM``; for the workload, ``wait4``'s
``ru_maxrss``, which also covers anything it started). Sections:

- ``workload``: the real entrypoint, ``llmfab train run --spec`` on a generated token Dataset
  (uniform random ids, vocab 8000, with a word-level Hugging Face tokenizer so the Dataset checks
  pass): build, dynamic micro-batch, the training loop, final validation, checkpoint and HF export.
  Its peak therefore includes the checkpoint and the export; tokens/s come from ``metrics.jsonl``.
- ``techniques``: the trainer's own pieces as ``train()`` composes them (``trainer.build``,
  ``choose_micro_batch``, ``train_step``, ``optimizer.step``) with all memory techniques on, each
  one off, and all off. Peak RSS here is the training steps only.
- ``peer``: ``LlamaForCausalLM`` at the same shape, micro-batches and global batch, with its own
  equivalents (``gradient_checkpointing_enable``, bf16 autocast, torch's fused AdamW) on and off.
- ``largest``: micro-batch 1, growing layers × hidden with every technique on. Each child's peak is
  predicted from the runs before it (a line through peak RSS against parameters) and a shape is only
  started when its prediction fits under ``--limit-gib`` and under what the machine has free; the
  child is also capped by ``RLIMIT_AS`` and killed if the machine's ``MemAvailable`` falls below
  ``--reserve-gib`` (other processes share the machine: it must never reach the OOM killer).
- ``optimizer``: one process times ``optimizer.step()`` of each optimizer type at the base shape on
  random gradients (no model compute): what each low-memory optimizer costs per step.

"all on" = activation checkpointing full + chunked loss (``lossChunkTokens`` 512) + ``adamw-8bit`` +
``precision`` (default ``bf16``, which the trainer computes in fp32 on CPUs without native bf16, as
reported). "chunked loss off" puts a whole micro-batch in one chunk (llmfab's loss is a fused
linear-cross-entropy, so even then no logits are kept for backward).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

VOCAB, CTX = 8000, 512
BASE = {"layers": 12, "hidden": 1024, "heads": 16}
GIB = 1 << 30
# Shapes tried by the search, in order of size (head size 64 at 1024 wide, 128 above): 0.16 to 3.8B.
LADDER = [(12, 1024, 16), (24, 2048, 16), (32, 2048, 16), (36, 2048, 16), (40, 2048, 16), (32, 2560, 20),
          (40, 2560, 20), (48, 2560, 20)]


# --------------------------------------------------------------------------------------------- child


def _status_kib(field: str, pid: int | str = "self") -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _spec(cfg: dict[str, Any]) -> Any:
    """The TrainingRunSpec of one configuration (validated by llmfab's API, as a spec file would be)."""
    from llmfab.api.training_run import TrainingRunSpec

    return TrainingRunSpec.model_validate(_spec_dict(cfg))


def _spec_dict(cfg: dict[str, Any]) -> dict[str, Any]:
    ctx = cfg.get("ctx", CTX)
    return {
        "dataset": {"name": "large"},
        "release": {"license": "apache-2.0"},
        "model": {"layers": cfg["layers"], "hidden": cfg["hidden"], "heads": cfg["heads"], "contextLength": ctx},
        "maxSteps": cfg["steps"],
        "seed": 0,
        "precision": cfg["precision"],
        "lossChunkTokens": cfg["chunk"],
        "optimizer": {"type": cfg["optimizer"], "lr": 3e-4, "warmupSteps": 0},
        "batch": {"globalTokens": cfg["sequences"] * ctx,
                  **({"microBatchSize": cfg["micro"]} if cfg.get("micro") else {})},
        "activationCheckpointing": {"mode": cfg["checkpointing"]},
        "checkpoint": {"everySteps": None},
        "evalEverySteps": None,
        "evalBatches": 1,
        "monitoring": {"prometheusPort": None, "logEverySteps": 1, "tensorboard": False},
    }


def child_llmfab(cfg: dict[str, Any]) -> dict[str, Any]:
    """train()'s loop without its metrics, eval and checkpoints: build, micro-batch, steps."""
    import torch

    from llmfab.api.training_run import TrainingRun
    from llmfab.status import NullStatusReporter
    from llmfab.training.components import distributed as D
    from llmfab.training.components.batching import BatchSchedule
    from llmfab.training.components.optim import optimizer_state_bytes
    from llmfab.training.components.precision import resolve
    from llmfab.training.loop import trainer as T

    class Events(NullStatusReporter):
        def __init__(self, resource: TrainingRun) -> None:
            super().__init__(resource)
            self.seen: list[str] = []

        def event(self, reason: str, message: str, type_: str = "Normal") -> None:
            self.seen.append(f"{reason}: {message}")

    resource = TrainingRun.model_validate({"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun",
                                           "metadata": {"name": "large"}, "spec": _spec_dict(cfg)})
    spec, reporter = resource.spec, Events(resource)
    env = D.init_distributed(spec)
    rss_start = _status_kib("VmRSS")
    with tempfile.TemporaryDirectory(prefix="llmfab-train-large-run-") as run_dir:
        # As train() does: auto/bf16 become the faster here, by the trainer's own probe.
        spec = resolve(spec, env.device, env.world_size, T.model_args_from_spec(spec.model, VOCAB), Path(run_dir),
                       reporter)
    parts = T.build(spec, VOCAB, env)
    ctx = spec.model.context_length
    schedule = BatchSchedule(spec.batch, ctx, env.world_size)
    micro = T.choose_micro_batch(spec, parts.module, env, parts.parameters, schedule.final)
    rss_built = _status_kib("VmRSS")
    gen = torch.Generator().manual_seed(0)
    times, losses = [], []
    for step in range(cfg["steps"]):
        plan = schedule.step_batch(step, micro)
        batch = torch.randint(0, VOCAB, (plan.global_sequences, ctx + 1), generator=gen)
        start = time.perf_counter()
        loss, grad_norm = T.train_step(parts, batch, plan, spec, env)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise T.NonFiniteLoss(f"step {step + 1}: loss {loss}, grad norm {grad_norm}")
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss)
    return {"parameters": parts.parameters, "micro": micro, "bf16": D.uses_bf16(spec, env),
            "precision": f"{cfg['precision']} -> {spec.precision}", "events": reporter.seen,
            "times": times, "losses": losses, "tokens_per_step": schedule.final * ctx,
            "state_bytes": optimizer_state_bytes(parts.optimizer), "rss_start_kib": rss_start,
            "rss_built_kib": rss_built}


def child_hf(cfg: dict[str, Any]) -> dict[str, Any]:
    """LlamaForCausalLM, same shape and batching: micro-batches with weighted loss, clip 1.0, AdamW."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(0)
    rss_start = _status_kib("VmRSS")
    h = cfg["hidden"]
    inter = ((8 * h // 3) + 63) // 64 * 64
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=h, intermediate_size=inter, num_hidden_layers=cfg["layers"],
                         num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
                         max_position_embeddings=CTX, tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(config).train()
    if cfg["checkpointing"] != "none":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    bf16 = cfg["precision"] == "bf16"
    micro, sequences = cfg["micro"], cfg["sequences"]
    rss_built = _status_kib("VmRSS")
    gen = torch.Generator().manual_seed(0)
    times, losses = [], []
    for _ in range(cfg["steps"]):
        batch = torch.randint(0, VOCAB, (sequences, CTX + 1), generator=gen)
        start = time.perf_counter()
        total = 0.0
        for chunk in torch.split(batch, micro):
            weight = chunk.shape[0] / sequences
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = model(input_ids=chunk[:, :-1], labels=chunk[:, :-1]).loss
            (loss * weight).backward()
            total += float(loss) * weight
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(total)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    return {"parameters": sum(p.numel() for p in model.parameters()), "micro": micro, "bf16": bf16,
            "precision": cfg["precision"],
            "times": times, "losses": losses, "tokens_per_step": sequences * CTX, "state_bytes": state,
            "rss_start_kib": rss_start, "rss_built_kib": rss_built}


def child_optimizer(cfg: dict[str, Any]) -> dict[str, Any]:
    """Seconds of one optimizer step of each type at this shape, gradients random (no model compute)."""
    import torch

    from llmfab.api.training_run import OptimizerSpec
    from llmfab.model.transformer import Transformer
    from llmfab.training.components.optim import build_optimizer
    from llmfab.training.loop import trainer as T

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = Transformer(T.model_args_from_spec(_spec(cfg).model, VOCAB))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    seconds: dict[str, list[float]] = {}
    for kind in cfg["optimizers"]:
        optimizer = build_optimizer(model, OptimizerSpec(type=kind, lr=3e-4))
        seconds[kind] = []
        for _ in range(cfg["steps"]):
            start = time.perf_counter()
            optimizer.step()
            seconds[kind].append(time.perf_counter() - start)
        del optimizer
    return {"parameters": sum(p.numel() for p in model.parameters()), "seconds": seconds}


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg["impl"] == "optimizer":
        out = child_optimizer(cfg)
        out["hwm_kib"] = _status_kib("VmHWM")
        return out
    out = child_hf(cfg) if cfg["impl"] == "transformers" else child_llmfab(cfg)
    out["hwm_kib"] = _status_kib("VmHWM")
    out["vm_peak_kib"] = _status_kib("VmPeak")
    return out


# -------------------------------------------------------------------------------------------- parent


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Guard:
    """Kills process ``pid`` when the machine's free memory falls under ``reserve`` bytes (checked every
    0.1 s), so an estimate that was wrong ends in a failed configuration, not the OOM killer."""

    def __init__(self, pid: int, reserve: int) -> None:
        self.pid, self.reserve, self.killed = pid, reserve, False
        self.least_available = mem_available()
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.1):
            available = mem_available()
            self.least_available = min(self.least_available, available)
            if available < self.reserve:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                return

    def stop(self) -> None:
        self.done.set()
        self._thread.join()


def launch(cmd: list[str], a: argparse.Namespace, log: Path, home: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` at nice 10 under RLIMIT_AS and the memory guard, output to ``log``; the exit code,
    the child's peak RSS (``wait4``'s ``ru_maxrss``: it and any children it waited for), the load."""
    load_before = loadavg()
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_child_env(a.threads, home),
                                preexec_fn=_limits(int(a.address_space_gib * GIB)))
    guard = Guard(proc.pid, int(a.reserve_gib * GIB))
    timer = threading.Timer(a.child_timeout, lambda: os.kill(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        guard.stop()
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {"code": code, "maxrss_kib": usage.ru_maxrss, "load": f"{load_before} -> {loadavg()}",
                              "wall_s": round(time.monotonic() - started, 1),
                              "least_available_gib": round(guard.least_available / GIB, 1)}
    if guard.killed:
        result["error"] = f"killed: MemAvailable fell below {a.reserve_gib} GiB"
    elif code != 0:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
        result["error"] = f"exit {code}" + (" (timeout or killed)" if code < 0 else "") + \
            f": {(lines or ['?'])[-1][:240]}"
    return result


def _limits(address_space: int) -> Any:
    def apply() -> None:
        os.nice(10)
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    return apply


def _child_env(threads: int, home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if home is not None:
        env["LLMFAB_HOME"] = str(home)
    return env


def run_child(cfg: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """One configuration in a fresh process; its result, or ``error`` saying why none."""
    with tempfile.TemporaryDirectory(prefix="llmfab-train-large-") as tmp:
        log = Path(tmp) / "child.log"
        result = launch([sys.executable, __file__, "--child", json.dumps(cfg)], a, log)
        if "error" not in result:
            lines = log.read_text().strip().splitlines()
            result.update(json.loads(lines[-1]))
    return result


def _tiny_tokenizer(out: Path) -> None:
    """A word-level Hugging Face tokenizer with exactly VOCAB ids (the Dataset check compares sizes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {t: i for i, t in enumerate(special + [f"w{i}" for i in range(VOCAB - len(special))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(str(out))


def build_dataset(home: Path, tokens: int) -> Path:
    """Dataset/large in the shard format: random documents of ids in [4, VOCAB), EOS = 2."""
    import numpy as np

    from llmfab.data.shards import token_dtype, write_split

    directory = home / "datasets" / "large"
    directory.mkdir(parents=True)
    _tiny_tokenizer(directory / "tokenizer")
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", tokens), ("val", tokens // 4)):
        docs, left = [], n
        while left > 0:
            size = min(left, int(rng.integers(200, 2000)))
            docs.append(rng.integers(4, VOCAB, size))
            left -= size
        splits[split] = write_split(directory, split, docs, token_dtype(VOCAB), eos_id=2)
    manifest = {"kind": "Dataset", "name": "large", "specHash": "benchmark", "vocabSize": VOCAB, "dtype": "uint16",
                "bosId": 1, "eosId": 2, "padId": 3, "unkId": 0, "hfTokenizer": "tokenizer", "splits": splits}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def run_workload(cfg: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """``llmfab train run --spec`` in a fresh process; peak RSS from wait4, tokens/s from metrics.jsonl."""
    import yaml

    from llmfab.training.components.batching import estimate_micro_batch

    with tempfile.TemporaryDirectory(prefix="llmfab-train-large-") as tmp:
        home = Path(tmp) / "home"
        build_dataset(home, tokens=(cfg["steps"] + 2) * cfg["sequences"] * (CTX + 1))
        spec_file = Path(tmp) / "large.yaml"
        spec_file.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun",
                                             "metadata": {"name": "large"}, "spec": _spec_dict(cfg)}))
        spec = _spec(cfg)
        # What the trainer's CPU estimate gives now (it runs again inside, with that moment's free memory).
        estimate = estimate_micro_batch(parameters_of(cfg["layers"], cfg["hidden"]), cfg["layers"], cfg["hidden"], CTX,
                                        cfg["checkpointing"] != "none", min(spec.batch.max_micro_batch_size,
                                                                            cfg["sequences"]))
        cmd = [sys.executable, "-m", "llmfab.cli", "train", "run", "--spec", str(spec_file)]
        result = launch(cmd, a, Path(tmp) / "train.log", home)
        result.update(hwm_kib=result["maxrss_kib"], micro=f"dynamic (estimate {estimate})")
        if "error" in result:
            return result
        run = home / "runs" / "large"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        status_doc = json.loads((home / "runs" / "large.status.json").read_text())
        events_file = home / "runs" / "large.events.jsonl"
        events = events_file.read_text() if events_file.is_file() else ""
        found = re.search(r"precision \w+: (bf16|fp32) \(", events)
        chosen = "fp32" if "PrecisionFallback" in events else found.group(1) if found else cfg["precision"]
        result.update(parameters=status_doc.get("parameters"), losses=[r["loss"] for r in rows],
                      tps_steps=[r["tokens_per_second"] for r in rows], phase=status_doc.get("phase"),
                      exported=(run / "model" / "model.safetensors").is_file(),
                      precision=f"{cfg['precision']} -> {chosen}", bf16=chosen == "bf16",
                      events=[json.loads(x).get("reason", "") + ": " + json.loads(x).get("message", "")
                              for x in events.splitlines() if "Precision" in x])
        return result


def tokens_per_second(r: dict[str, Any], warmup: int) -> float | None:
    if "tps_steps" in r:
        rest = r["tps_steps"][warmup:] or r["tps_steps"]
        return statistics.median(rest)
    if "times" not in r:
        return None
    rest = r["times"][warmup:] or r["times"]
    return r["tokens_per_step"] * len(rest) / sum(rest)


def row(name: str, r: dict[str, Any], warmup: int) -> str:
    if "error" in r:
        return f"| {name} | {r.get('parameters', '')} | — | — | — | — | {r['error']} | {r['load']} |"
    tps = tokens_per_second(r, warmup)
    losses = r.get("losses", [])
    finite = all(math.isfinite(x) for x in losses)
    state = f"{r['state_bytes'] / 2**20:.0f}" if "state_bytes" in r else "—"
    base = (f"; RSS after imports {r['rss_start_kib'] / 2**20:.2f}, after build {r['rss_built_kib'] / 2**20:.2f} GiB"
            if "rss_start_kib" in r else "")
    base += "".join(f"; {e[:220]}" for e in r.get("events", []))
    return (f"| {name} | {r['parameters'] / 1e6:.1f}M | {r['hwm_kib'] / 2**20:.2f} | {tps:.0f} | {r['micro']} "
            f"| {len(losses)} | loss {losses[0]:.3f} → {losses[-1]:.3f} {'finite' if finite else 'NOT FINITE'}; "
            f"opt state {state} MiB; precision {r.get('precision', '')}, bf16 compute {r.get('bf16')}{base} "
            f"| {r['load']} |")


HEADER = ("| configuration | parameters | peak RSS (GiB) | tokens/s | micro-batch | steps | notes | load avg |\n"
          "|---|---|---|---|---|---|---|---|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["workload", "techniques", "peer", "optimizer", "largest"],
                   choices=["workload", "techniques", "peer", "largest", "optimizer"])
    p.add_argument("--precision", default="auto", help="spec.precision of the 'all on' runs (auto: the trainer's probe)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per configuration (the first is warm-up)")
    p.add_argument("--sequences", type=int, default=4, help="global batch in sequences of 512 tokens")
    p.add_argument("--search-steps", type=int, default=2, help="optimizer steps per shape in the search")
    p.add_argument("--limit-gib", type=float, default=20.0, help="largest predicted peak the search may start")
    p.add_argument("--reserve-gib", type=float, default=1.5, help="kill a child when MemAvailable falls below")
    p.add_argument("--address-space-gib", type=float, default=22.0, help="RLIMIT_AS of every child")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child-timeout", type=int, default=900)
    p.add_argument("--base", type=_shape, default=(BASE["layers"], BASE["hidden"], BASE["heads"]),
                   help="LAYERSxHIDDENxHEADS of the workload/techniques/peer sections (default 12x1024x16)")
    p.add_argument("--ladder", type=_shape, nargs="+", default=LADDER, help="shapes the search walks up")
    p.add_argument("--only", nargs="*", help="techniques/peer: only configurations whose name contains one of these; optimizer: these types")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return

    import torch

    print(f"# torch {torch.__version__}, {a.threads} threads, nice 10; load avg {loadavg()}; "
          f"MemAvailable {mem_available() / GIB:.1f} GiB; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    layers, hidden, heads = a.base
    on = {"layers": layers, "hidden": hidden, "heads": heads, "impl": "llmfab", "precision": a.precision,
          "checkpointing": "full", "chunk": 512,
          "optimizer": "adamw-8bit", "steps": a.steps, "sequences": a.sequences}
    whole = a.sequences * CTX  # one chunk holds a whole micro-batch: the loss is not chunked
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, r: dict[str, Any]) -> None:
        results[name] = r
        print(row(name, r, warmup=1), flush=True)

    if {"workload", "techniques", "peer"} & set(a.sections):
        print(f"\n## {layers}x{hidden}x{heads}, ctx {CTX}, vocab {VOCAB}, global batch {a.sequences}x{CTX} tokens, "
              f"{a.steps} steps (tokens/s after the first)\n")
        print(HEADER)
    if "workload" in a.sections:
        record("`llmfab train run`, all on (incl. final eval, checkpoint, HF export)", run_workload(on, a))
    configs: dict[str, dict[str, Any]] = {}
    if "techniques" in a.sections:
        configs.update({
            "llmfab, all on": on,
            "llmfab, checkpointing off": {**on, "checkpointing": "none"},
            "llmfab, chunked loss off": {**on, "chunk": whole},
            "llmfab, adamw (fp32 states) instead of adamw-8bit": {**on, "optimizer": "adamw"},
            "llmfab, fp32 instead of the chosen precision": {**on, "precision": "fp32"},
            "llmfab, all off (fp32, no checkpointing, one loss chunk, adamw)": {
                **on, "precision": "fp32", "checkpointing": "none", "chunk": whole, "optimizer": "adamw"},
        })
    if "peer" in a.sections:
        configs.update({
            "transformers, all on (gradient checkpointing, llmfab's precision as autocast, AdamW)": {
                **on, "impl": "transformers", "precision": "bf16"},
            "transformers, all off (fp32, AdamW)": {
                **on, "impl": "transformers", "precision": "fp32", "checkpointing": "none"},
        })
    micro_of_llmfab: int | None = None
    precision_of_llmfab: str | None = None
    for name, cfg in configs.items():
        if a.only and not any(s in name for s in a.only):
            continue
        if cfg["impl"] == "transformers":
            # The peer gets the micro-batch and (with techniques on) the precision llmfab chose:
            # its own loop has neither sizing nor a probe.
            cfg = {**cfg, "micro": micro_of_llmfab or a.sequences}
            if "all on" in name:
                cfg["precision"] = precision_of_llmfab or ("fp32" if a.precision == "fp32" else "bf16")
        record(name, run_child(cfg, a))
        if name == "llmfab, all on" and "micro" in results[name]:
            micro_of_llmfab = results[name]["micro"]
            precision_of_llmfab = results[name]["precision"].split("-> ")[-1]
    print_ratios(results)
    if "optimizer" in a.sections:
        kinds = [k for k in ("adamw", "adamw-bf16", "adamw-8bit", "adafactor") if not a.only or k in a.only]
        r = run_child({**on, "impl": "optimizer", "optimizers": kinds}, a)
        print(f"\n## one optimizer step at {layers}x{hidden}x{heads} (random gradients; first step creates the state)"
              f"\nload {r['load']}", flush=True)
        for kind, secs in r.get("seconds", {}).items():
            print(f"- {kind}: " + ", ".join(f"{x:.2f} s" for x in secs), flush=True)
        if "error" in r:
            print(f"- {r['error']}")
    if "largest" in a.sections:
        search_largest(a, on)


def print_ratios(results: dict[str, dict[str, Any]]) -> None:
    def get(name: str) -> dict[str, Any] | None:
        r = results.get(name)
        return r if r and "error" not in r else None

    pairs = [("llmfab, all on", "transformers, all on (gradient checkpointing, llmfab's precision as autocast, AdamW)"),
             ("llmfab, all off (fp32, no checkpointing, one loss chunk, adamw)", "transformers, all off (fp32, AdamW)"),
             ("llmfab, all on", "llmfab, all off (fp32, no checkpointing, one loss chunk, adamw)")]
    lines = []
    for x, y in pairs:
        rx, ry = get(x), get(y)
        if rx and ry:
            tx, ty = tokens_per_second(rx, 1), tokens_per_second(ry, 1)
            lines.append(f"- {x} / {y}: peak RSS {rx['hwm_kib'] / ry['hwm_kib']:.2f}x, tokens/s "
                         f"{(tx or 0) / (ty or 1):.2f}x")
    base = get("llmfab, all on")
    for name, r in results.items():
        if base and name.startswith("llmfab, ") and "off" in name and "error" not in r:
            lines.append(f"- {name} vs all on: peak RSS +{(r['hwm_kib'] - base['hwm_kib']) / 2**20:.2f} GiB, "
                         f"tokens/s {(tokens_per_second(r, 1) or 0) / (tokens_per_second(base, 1) or 1):.2f}x")
    if lines:
        print("\nratios:\n" + "\n".join(lines), flush=True)


def _shape(text: str) -> tuple[int, int, int]:
    try:
        layers, hidden, heads = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LAYERSxHIDDENxHEADS, e.g. 12x1024x16") from None
    return layers, hidden, heads


def parameters_of(layers: int, hidden: int) -> int:
    """llmfab's parameter count for a ladder shape (tied head; fused qkv and gate/up)."""
    inter = ((8 * hidden // 3) + 63) // 64 * 64
    return VOCAB * hidden + layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + hidden


def search_largest(a: argparse.Namespace, on: dict[str, Any]) -> None:
    """Micro-batch 1, every technique on: walk up LADDER while the predicted peak fits."""
    print(f"\n## largest model, every technique on, micro-batch 1 x {CTX} tokens, {a.search_steps} steps each; "
          f"start only if the predicted peak <= {a.limit_gib} GiB and MemAvailable - {a.reserve_gib} GiB\n")
    print(HEADER, flush=True)
    points: list[tuple[int, float]] = []  # (parameters, peak bytes)
    largest = None
    for layers, hidden, heads in a.ladder:
        n = parameters_of(layers, hidden)
        free = mem_available() - a.reserve_gib * GIB
        if len(points) >= 2:
            (n0, m0), (n1, m1) = points[-2], points[-1]
            slope = (m1 - m0) / (n1 - n0)
            predicted = m1 + slope * (n - n1)
            note = f"predicted {predicted / GIB:.1f} GiB ({slope:.1f} B/parameter)"
            if predicted > min(a.limit_gib * GIB, free):
                print(f"\nnot started: {layers}x{hidden} ({n / 1e6:.0f}M parameters): {note}, over the limit "
                      f"of {min(a.limit_gib * GIB, free) / GIB:.1f} GiB", flush=True)
                break
        else:
            note = "too few points to predict"
        cfg = {**on, "layers": layers, "hidden": hidden, "heads": heads, "steps": a.search_steps, "sequences": 1,
               "micro": 1}
        r = run_child(cfg, a)
        print(row(f"{layers}x{hidden}x{heads} ({note})", r, warmup=1), flush=True)
        if "error" in r:
            print(f"\nfailed at {layers}x{hidden}: {r['error']}", flush=True)
            break
        points.append((r["parameters"], r["hwm_kib"] * 1024))
        largest = (layers, hidden, heads, r)
    if largest:
        layers, hidden, heads, r = largest
        print(f"\nlargest that trained: {layers} layers x {hidden} hidden x {heads} heads, "
              f"{r['parameters'] / 1e9:.2f}B parameters, peak RSS {r['hwm_kib'] / 2**20:.2f} GiB", flush=True)


if __name__ == "__main__":
    main()
