"""Which precision a run computes in: bf16 where it is faster on this machine, fp32 where it is not.

CPU flags do not answer this. Two machines that both report ``avx512_bf16`` disagree: on an AMD
EPYC (Zen 4) bf16 autocast trained the benchmark shape 1.75× faster than fp32, on an Intel Xeon
without AMX it was slower (issue 13). So on CPU ``precision: auto`` (the default) and
``precision: bf16`` time the model's own work at start and keep the faster:

    probe: one real ``Block`` of the model (qkv, attention, proj, gate_up, down, the norms and
           SwiGLU's elementwise ops) and a slice of the output head through the trainer's chunked
           loss, forward + backward at the run's shapes, in fp32 and under bf16 autocast,
           interleaved, warm-up excluded, best of a few repetitions; the per-sequence figure is
           ``layers × block + vocab / slice × head``.
    cache: ``<run dir>/precision-probe.json``, keyed by CPU model, torch version and CPU
           capability and shape (like the micro-batch cap), so a resumed or restarted run
           decides the same way without measuring again. Delete the file to measure again.

Only one flag is read, and only to exclude: a CPU that oneDNN cannot run bf16 on natively (no
AVX-512 BF16/AMX, e.g. AVX2-only) would emulate it ~50× slower, so it computes in fp32 without a
probe. ``LLMFAB_CPU_BF16=force`` insists on bf16 and ``=off`` on fp32, both without a probe.
On CUDA, ``auto`` and ``bf16`` are bf16 where the device supports it. ``fp32`` never probes.

Under torchrun every rank decides, and the run computes in bf16 only if every rank chose it (one
all-reduce); the figures reported are the slowest rank's. ``resolve`` returns a copy of the spec
whose ``precision`` is the concrete choice, so everything after it (``distributed.uses_bf16``, the
FSDP policy, the micro-batch cap key) reads one answer.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from llmfab.api.common import utc_now
from llmfab.machine import cpu_model
from llmfab.model import losses
from llmfab.model.transformer import Block, ModelArgs, rope_tables
from llmfab.status import StatusReporter
from llmfab.store import write_json_atomic

PROBE_FILE = "precision-probe.json"
PROBE_VERSION = 1  # part of the cache key: a changed probe measures again
OVERRIDE_ENV = "LLMFAB_CPU_BF16"  # force | off
# Takes the place of oneDNN's answer to "is bf16 native here?" (1 or 0): the test suite runs with it
# set both ways, so no test passes only on the CPU it was written on (issue 19).
NATIVE_ENV = "LLMFAB_CPU_NATIVE_BF16"
# Tokens per probe: the context, halved until one block's fp32 forward + backward is at most this
# many FLOPs (~0.1 s on one AVX-512 core), so the probe stays about a second for 12×1024; never
# below MIN_TOKENS, where matmuls are too small to rank the precisions as training's would.
BLOCK_FLOPS = 1e10
MIN_TOKENS = 128
HEAD_SLICE = 2048  # output-head rows timed; the figure scales them to the vocabulary
# Timed repetitions per precision, at least and at most: the best of three survives a neighbour's
# burst of load that a single repetition mistakes for the precision's cost.
REPEATS = (3, 7)
BUDGET_SECONDS = 0.3  # stop repeating (past the minimum) once the timed part took this long
KEEP_ENTRIES = 8  # cache entries kept (several CPU models may share a run directory)
# The probe runs on one thread. The bf16/fp32 ratio is each core's (AVX-512 BF16 and AMX units are
# per core), and on cores shared with other processes one thread does not wait for descheduled
# OpenMP peers: measured here with load 9 on 2 cores, the 2-thread probe of 6×512 took 8-13 s and
# gave bf16 1.00-1.19x, one thread took 1.2-2.0 s and gave 1.63-2.02x, training steps 1.53-1.60x.
PROBE_THREADS = 1

Concrete = Literal["bf16", "fp32"]


@dataclass(frozen=True)
class ProbeResult:
    """Estimated forward + backward time of one ``tokens``-long sequence through the model."""

    fp32_ms: float
    bf16_ms: float
    tokens: int
    seconds: float  # wall time of the probe itself, warm-up included
    repeats: int = 0  # timed repetitions per precision (the best is kept); 0: not recorded

    @property
    def speedup(self) -> float:
        """bf16's speed relative to fp32 (> 1: bf16 is faster)."""
        return self.fp32_ms / self.bf16_ms if self.bf16_ms > 0 else math.inf

    @property
    def faster(self) -> Concrete:
        return "bf16" if self.bf16_ms < self.fp32_ms else "fp32"

    def describe(self) -> str:
        best = f", best of {self.repeats}" if self.repeats else ""
        return (f"fp32 {self.fp32_ms:.1f} ms, bf16 {self.bf16_ms:.1f} ms per {self.tokens}-token sequence "
                f"fwd+bwd{best}, bf16 {self.speedup:.2f}x")


@dataclass(frozen=True)
class Decision:
    """The concrete precision for ``requested`` and why; ``probe`` when it was measured or cached."""

    precision: Concrete
    requested: str
    why: str  # probe | cuda | no-native-bf16 | force | off | requested
    probe: ProbeResult | None = None
    cached: bool = False
    device: str = "cpu"


def probe_tokens(args: ModelArgs) -> int:
    """The context, halved (not below ``MIN_TOKENS``) until one block's fp32 fwd+bwd fits ``BLOCK_FLOPS``."""
    h, kv = args.hidden, args.kv_heads * args.head_dim
    weights = h * (h + 2 * kv) + h * h + 3 * h * args.intermediate
    tokens = args.context_length
    while tokens // 2 >= MIN_TOKENS and 6 * tokens * weights + 6 * tokens * tokens * h > BLOCK_FLOPS:
        tokens //= 2
    return tokens


def native_cpu_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 BF16 / AMX); without it bf16 is emulated.

    ``LLMFAB_CPU_NATIVE_BF16=1|0`` answers instead (a test forcing either kind of CPU).
    """
    forced = os.environ.get(NATIVE_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise ValueError(f"{NATIVE_ENV}: {forced!r} is not an answer; use 1 (native bf16), 0 (none), or unset it")
        return forced == "1"
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cache_key(args: ModelArgs) -> dict[str, object]:
    """What the probe's figures depend on: the machine, the software and the shapes timed."""
    return {
        "version": PROBE_VERSION, "cpu": cpu_model(), "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(), "threads": PROBE_THREADS,
        "hidden": args.hidden, "heads": args.heads, "kvHeads": args.kv_heads,
        "intermediate": args.intermediate, "layers": args.layers, "vocab": args.vocab_size,
        "tokens": probe_tokens(args),
    }


def read_probe(run_dir: Path, key: dict[str, object]) -> ProbeResult | None:
    """The cached figures for ``key``, or None (no file, unreadable, or measured for another key)."""
    for entry in _entries(run_dir):
        if entry.get("key") == key:
            try:
                return ProbeResult(float(entry["fp32Ms"]), float(entry["bf16Ms"]), int(entry["tokens"]),
                                   float(entry["seconds"]), int(entry.get("repeats", 0)))
            except (KeyError, TypeError, ValueError):
                return None
    return None


def write_probe(run_dir: Path, key: dict[str, object], result: ProbeResult) -> None:
    """Record ``result`` for ``key`` (atomically), replacing an older entry of the same key."""
    kept = [e for e in _entries(run_dir) if e.get("key") != key][-(KEEP_ENTRIES - 1):]
    kept.append({"key": key, "fp32Ms": result.fp32_ms, "bf16Ms": result.bf16_ms, "tokens": result.tokens,
                 "seconds": result.seconds, "repeats": result.repeats, "measuredAt": utc_now()})
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / PROBE_FILE, {"entries": kept})


def _entries(run_dir: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((run_dir / PROBE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    entries = data.get("entries") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def run_probe(args: ModelArgs, timer: Callable[[], float] = time.perf_counter) -> ProbeResult:
    """Time one block and a head slice of ``args``'s shapes, fwd+bwd, fp32 and bf16 autocast (CPU),
    on ``PROBE_THREADS`` threads (the process's own setting is restored after).

    The repetitions alternate between the precisions, so a neighbour's load hits both alike, and
    the best of each is kept: the least disturbed measure of what the hardware does.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(PROBE_THREADS)
    try:
        return _probe(args, timer)
    finally:
        torch.set_num_threads(threads)


def _probe(args: ModelArgs, timer: Callable[[], float]) -> ProbeResult:
    start = timer()
    tokens = probe_tokens(args)
    shape = ModelArgs(vocab_size=min(args.vocab_size, HEAD_SLICE), layers=1, hidden=args.hidden,
                      heads=args.heads, kv_heads=args.kv_heads, intermediate=args.intermediate,
                      context_length=tokens, rope_theta=args.rope_theta, norm_eps=args.norm_eps,
                      dropout=0.0, sharing_groups=1)
    generator = torch.Generator().manual_seed(0)
    block = Block(shape)
    head = torch.nn.Parameter(torch.randn(shape.vocab_size, args.hidden, generator=generator) * 0.02)
    cos, sin = (t[:, None, :] for t in rope_tables(shape.head_dim, tokens, shape.rope_theta))
    x = torch.randn(1, tokens, args.hidden, generator=generator)
    grad = torch.randn(1, tokens, args.hidden, generator=generator)
    targets = torch.randint(0, shape.vocab_size, (tokens,), generator=generator)

    def once(bf16: bool) -> tuple[float, float]:
        """(block, head) seconds of one forward + backward."""
        block.zero_grad(set_to_none=True)
        head.grad = None
        inputs = x.clone().requires_grad_(True)
        context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
        t0 = timer()
        with context:
            out = block(inputs, cos, sin)
        torch.autograd.backward(out, grad)
        t1 = timer()
        hidden = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = losses.chunked_cross_entropy(hidden, head, targets)
        torch.autograd.backward(loss)
        return t1 - t0, timer() - t1

    once(False)
    once(True)  # warm-up: oneDNN creates its bf16 primitives on the first call
    timed_from = timer()
    best = {False: (math.inf, math.inf), True: (math.inf, math.inf)}
    repeats = 0
    while repeats < REPEATS[1] and (repeats < REPEATS[0] or timer() - timed_from <= BUDGET_SECONDS):
        repeats += 1
        for bf16 in (False, True):
            b, hd = once(bf16)
            best[bf16] = (min(best[bf16][0], b), min(best[bf16][1], hd))
    scale = args.vocab_size / shape.vocab_size

    def per_sequence(bf16: bool) -> float:
        return 1000 * (args.layers * best[bf16][0] + scale * best[bf16][1])

    return ProbeResult(per_sequence(False), per_sequence(True), tokens, timer() - start, repeats)


def decide(requested: str, device: str, *, probe: Callable[[], tuple[ProbeResult, bool]],
           override: str | None = None, native_bf16: Callable[[], bool] | None = None,
           cuda_bf16: Callable[[], bool] = lambda: torch.cuda.is_bf16_supported()) -> Decision:
    """``requested`` (auto, bf16, fp32) on ``device`` (cpu, cuda) as a concrete precision.

    ``probe`` returns (figures, whether they came from the cache); it is called only on a CPU
    where bf16 is requested or auto, runs natively and is not overridden. ``native_bf16`` defaults
    to :func:`native_cpu_bf16` looked up at call time, so a test that replaces the module's function
    decides as on the CPU it pretends to be (a default bound at import would ask the real CPU).
    """
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"spec.precision: {requested!r} is not a precision; use auto, bf16 or fp32")
    if requested == "fp32":
        return Decision("fp32", requested, "requested", device=device)
    if device == "cuda":
        return Decision("bf16" if cuda_bf16() else "fp32", requested, "cuda", device=device)
    if override not in (None, "", "force", "off"):
        raise ValueError(f"{OVERRIDE_ENV}: {override!r} is not an override; use force, off, or leave it unset")
    if override == "force":
        return Decision("bf16", requested, "force", device=device)
    if override == "off":
        return Decision("fp32", requested, "off", device=device)
    if not (native_bf16 or native_cpu_bf16)():
        return Decision("fp32", requested, "no-native-bf16", device=device)
    result, cached = probe()
    return Decision(result.faster, requested, "probe", result, cached, device)


def agree(decision: Decision, world_size: int, all_reduce_max: Callable[[list[float]], list[float]]) -> Decision:
    """One decision for every rank: bf16 only if all chose it; the slowest rank's figures.

    ``all_reduce_max`` reduces a list of floats with MAX over the ranks (one collective).
    """
    if world_size <= 1:
        return decision
    p = decision.probe
    fp32_ms, bf16_ms, refuse, tokens, seconds = all_reduce_max(
        [p.fp32_ms if p else -1.0, p.bf16_ms if p else -1.0, float(decision.precision != "bf16"),
         float(p.tokens) if p else -1.0, p.seconds if p else -1.0])
    precision: Concrete = "fp32" if refuse > 0 else "bf16"
    probe = ProbeResult(fp32_ms, bf16_ms, int(tokens), seconds) if p is not None and fp32_ms > 0 else p
    why = decision.why if precision == decision.precision else "ranks"
    return Decision(precision, decision.requested, why, probe, decision.cached, decision.device)


def message(decision: Decision, cache_file: Path | None = None) -> tuple[str, str, str] | None:
    """(reason, message, type) of the event that states the choice, or None (fp32 as requested,
    bf16 granted on CUDA: nothing to say)."""
    d, p = decision, decision.probe
    if d.why == "requested" or (d.why == "cuda" and d.requested == d.precision):
        return None
    figures = ""
    if p is not None:
        where = f"cached in {cache_file}" if d.cached else f"measured in {p.seconds:.2f} s, cached in {cache_file}"
        figures = f"probe: {p.describe()}; {where}, delete it to measure again"
    because = {
        "probe": figures,
        "cuda": "this CUDA device does not support bf16",
        "no-native-bf16": "this CPU has no native bf16 (AVX-512 BF16/AMX) and would emulate it ~50x slower; not probed",
        "force": f"{OVERRIDE_ENV}=force; not probed",
        "off": f"{OVERRIDE_ENV}=off; not probed",
        "ranks": "another rank found bf16 slower or unavailable"
                 + (f"; slowest rank's probe: {p.describe()}" if p is not None else ""),
    }[d.why]
    if d.requested == "bf16" and d.precision == "fp32":
        return ("PrecisionFallback", f"spec.precision: bf16 requested, but computing in fp32 ({because}). "
                "Set precision: fp32 or auto to silence this, or LLMFAB_CPU_BF16=force to insist", "Warning")
    return ("PrecisionChosen", f"precision {d.requested}: {d.precision} ({because})", "Normal")


def resolve(requested: str, device: torch.device, world_size: int, args: ModelArgs, run_dir: Path,
            reporter: StatusReporter, probe: Callable[[ModelArgs], ProbeResult] = run_probe) -> Concrete:
    """``spec.precision`` (``requested``) settled to bf16 or fp32 for this run, after one event saying why.

    Every rank calls it (it is collective under torchrun). TrainingRuns and RewardModels alike: it
    reads only the requested precision, the model's shape and where to cache the probe.
    """
    requested = str(requested)
    key = cache_key(args)

    def measured() -> tuple[ProbeResult, bool]:
        cached = read_probe(run_dir, key)
        if cached is not None:
            return cached, True
        result = probe(args)
        write_probe(run_dir, key, result)
        return result, False

    decision = decide(requested, device.type, probe=measured, override=os.environ.get(OVERRIDE_ENV))
    decision = agree(decision, world_size, lambda values: _all_reduce_max(values, device))
    if (event := message(decision, run_dir / PROBE_FILE)) is not None:
        reporter.event(*event)
    return decision.precision


def _all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return [float(v) for v in t.tolist()]
