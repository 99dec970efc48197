"""Dynamic batch sizing: the global batch is fixed in tokens, the micro-batch is whatever fits.

The spec says how many tokens one optimizer step sees (``batch.globalTokens``, optionally ramped
up from ``batch.ramp.startTokens``). Each process takes ``1/world`` of the sequences and runs them
as micro-batches of the largest size that fits in memory; gradient accumulation covers the rest. The
last micro-batch may be smaller, and each micro-batch's mean loss is weighted by its share of the
local tokens, so the gradient is that of the exact global batch whatever the micro-batch is.

On CUDA the size is probed (forward + backward at full context, halving on out-of-memory); on CPU
it comes from a memory estimate, since swapping rather than failing is what CPU memory does.

An out-of-memory error during training (fragmentation, a longer eval, a neighbour on the GPU) halves
the micro-batch. One process retries the step at once. Under torchrun the other ranks are inside
collectives with the failed one, so it cannot retry alone: it records the halved size in the run's
``micro-batch.json`` (the cap) and fails; the launcher restarts the workers, which resume from the last
checkpoint and start at or below the cap. The cap is kept for later runs of the same shape, so a
resumed run does not rediscover the limit by failing again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llmfab.api.training_run import BatchSpec
from llmfab.store import write_json_atomic
from llmfab.training.components.lowmem_adam import BLOCK

CAP_FILE = "micro-batch.json"


class BatchConfigError(ValueError):
    """The batch fields cannot produce an exact global batch."""


class OutOfMemoryAtSmallestBatch(RuntimeError):
    """Even one sequence per micro-batch does not fit."""


SMALLEST_BATCH_FIX = (
    "spec.batch: out of memory with one sequence per micro-batch; enable "
    "spec.activationCheckpointing.mode: full, use precision bf16, a smaller model or "
    "contextLength, or more processes with parallelism.fsdp"
)


class OutOfMemoryBackoff(RuntimeError):
    """A rank of a torchrun job ran out of memory; the cap is halved and the job must restart."""


def read_cap(run_dir: Path, key: str | None) -> int | None:
    """The recorded micro-batch cap for this memory key (``None``: whatever key recorded it)."""
    try:
        data = json.loads((run_dir / CAP_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    cap = data.get("microBatch") if isinstance(data, dict) else None
    matches = key is None or data.get("key") == key
    return cap if matches and isinstance(cap, int) and cap >= 1 else None


def write_cap(run_dir: Path, key: str, size: int, step: int) -> None:
    """Record ``size`` as the cap (never raising an existing smaller one); any rank may call it."""
    current = read_cap(run_dir, key)
    if current is not None and current <= size:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / CAP_FILE, {"key": key, "microBatch": size, "step": step})


@dataclass(frozen=True)
class StepBatch:
    """How one optimizer step is cut: ``sizes`` are the micro-batches of this process."""

    global_sequences: int
    local_sequences: int
    sizes: tuple[int, ...]

    @property
    def accumulation(self) -> int:
        return len(self.sizes)

    def weights(self) -> list[float]:
        """Loss weight of each micro-batch: its share of this process's sequences."""
        return [s / self.local_sequences for s in self.sizes]


def split_micro_batches(local_sequences: int, micro_batch: int) -> tuple[int, ...]:
    """``local_sequences`` as full micro-batches plus one remainder (never an empty one)."""
    full, rest = divmod(local_sequences, micro_batch)
    return (micro_batch,) * full + ((rest,) if rest else ())


class BatchSchedule:
    """Global batch (in sequences) per step, including the optional linear ramp."""

    def __init__(self, spec: BatchSpec, context: int, world: int) -> None:
        unit = context * world
        self.spec, self.context, self.world = spec, context, world
        if spec.global_tokens % unit:
            lower = max(unit, spec.global_tokens // unit * unit)
            raise BatchConfigError(
                f"spec.batch.globalTokens: {spec.global_tokens} is not a multiple of contextLength × processes "
                f"= {context} × {world} = {unit}; use {lower} or {lower + unit}"
            )
        self.final = spec.global_tokens // context
        if spec.ramp is not None and spec.ramp.start_tokens > spec.global_tokens:
            raise BatchConfigError(
                f"spec.batch.ramp.startTokens: {spec.ramp.start_tokens} exceeds batch.globalTokens "
                f"({spec.global_tokens}); a ramp grows towards the final batch"
            )

    def global_sequences(self, step: int) -> int:
        ramp = self.spec.ramp
        if ramp is None or step >= ramp.steps:
            return self.final
        tokens = ramp.start_tokens + (self.spec.global_tokens - ramp.start_tokens) * step / ramp.steps
        sequences = int(tokens) // self.context // self.world * self.world
        return max(self.world, min(self.final, sequences))

    def step_batch(self, step: int, micro_batch: int) -> StepBatch:
        g = self.global_sequences(step)
        local = g // self.world
        return StepBatch(g, local, split_micro_batches(local, micro_batch))

    def tokens_until(self, step: int) -> int:
        """Tokens trained on in steps ``[0, step)``."""
        ramp = self.spec.ramp
        ramp_steps = 0 if ramp is None else min(step, ramp.steps)
        ramped = sum(self.global_sequences(s) for s in range(ramp_steps))
        return (ramped + (step - ramp_steps) * self.final) * self.context

    def steps_for_tokens(self, max_tokens: int) -> int:
        """Optimizer steps needed to train on at least ``max_tokens`` tokens."""
        step = 0
        ramp_steps = 0 if self.spec.ramp is None else self.spec.ramp.steps
        while step < ramp_steps and self.tokens_until(step) < max_tokens:
            step += 1
        if self.tokens_until(step) >= max_tokens:
            return max(1, step)
        remaining = max_tokens - self.tokens_until(step)
        per_step = self.final * self.context
        return step + -(-remaining // per_step)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def fit_micro_batch(try_size: Callable[[int], None], largest: int) -> int:
    """The largest size ``<= largest``, halving from it, for which ``try_size`` does not run out of
    memory. Other errors propagate."""
    size = largest
    while True:
        try:
            try_size(size)
            return size
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if size == 1:
                raise OutOfMemoryAtSmallestBatch(SMALLEST_BATCH_FIX) from e
            size = max(1, size // 2)


# Bytes per parameter of optimizer state (llmfab/training/components/optim.py): AdamW's two fp32 moments;
# AdamWBF16's two bf16 ones; AdamW8bit's two 8-bit ones plus two fp32 scales per BLOCK elements;
# Adafactor's factored second moment (a row and a column vector per matrix, no first moment): ~0.
OPTIMIZER_STATE_BYTES: dict[str, float] = {
    "adamw": 8.0, "adamw-bf16": 4.0, "adamw-8bit": 2.0 + 2 * 4 / BLOCK, "adafactor": 0.0,
}
GRADIENT_BYTES = 4  # fp32 gradients, whatever the autocast precision


def estimate_micro_batch(
    parameters: int, layers: int, hidden: int, context: int, checkpointing: bool,
    largest: int, available_bytes: int | None = None, optimizer: str = "adamw",
) -> int:
    """CPU: the largest power-of-two micro-batch whose activations fit in half the memory left free
    once the gradients and the optimizer state exist.

    The estimate runs after the model is built, so its fp32 weights already count against the free
    memory; what is still to come per parameter is the gradient (4 bytes) and ``optimizer``'s state
    (``OPTIMIZER_STATE_BYTES``: 8 for AdamW, ~2 for AdamW8bit), created at the first step.
    Activations per token per layer are ~34·hidden bytes in bf16 (Korthikanti et al., 2022) plus
    the attention scores; with checkpointing only the block inputs stay (2·hidden bytes). The loss is
    chunked, so the logits add a constant, not a per-sequence term.
    """
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"spec.optimizer.type: unknown optimizer {optimizer!r}; "
                         f"use one of {', '.join(OPTIMIZER_STATE_BYTES)}")
    free = available_bytes if available_bytes is not None else _available_memory()
    fixed = int(parameters * (GRADIENT_BYTES + OPTIMIZER_STATE_BYTES[optimizer]))
    per_layer = 2 * hidden if checkpointing else 34 * hidden
    per_sequence = context * layers * per_layer + layers * 2 * context * context * 4
    budget = (free - fixed) // 2
    size = 1
    while size * 2 <= largest and (size * 2) * per_sequence <= budget:
        size *= 2
    return size


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
