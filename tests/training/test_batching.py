"""Dynamic batch sizing keeps the global batch exact whatever micro-batch fits."""

from __future__ import annotations

import pytest
import torch

from llmfab.api.training_run import BatchSpec
from llmfab.training.components.batching import (
    BatchConfigError,
    BatchSchedule,
    OutOfMemoryAtSmallestBatch,
    estimate_micro_batch,
    fit_micro_batch,
    split_micro_batches,
)


@pytest.mark.parametrize("micro", [1, 3, 4, 5, 7, 16, 64])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_micro_batches_cover_the_global_batch_exactly(micro: int, world: int) -> None:
    schedule = BatchSchedule(BatchSpec(global_tokens=32 * 16), context=32, world=world)
    plan = schedule.step_batch(0, micro)
    assert plan.global_sequences == 16
    assert sum(plan.sizes) * world == 16
    assert all(0 < s <= micro for s in plan.sizes)
    assert sum(plan.weights()) == pytest.approx(1.0)
    assert plan.accumulation == -(-plan.local_sequences // micro)


def test_weighted_micro_batch_losses_equal_the_full_batch_gradient() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, requires_grad=True)
    x = torch.randn(10, 8)
    (x @ w).square().mean().backward()
    full = w.grad.clone()
    w.grad = None
    sizes = split_micro_batches(10, 4)
    for chunk, weight in zip(x.split(list(sizes)), [s / 10 for s in sizes], strict=True):
        ((chunk @ w).square().mean() * weight).backward()
    torch.testing.assert_close(w.grad, full)


def test_global_tokens_not_a_multiple_of_context_times_world_is_refused_with_the_fix() -> None:
    with pytest.raises(BatchConfigError, match=r"spec.batch.globalTokens: 1000 .* use 960 or 1024"):
        BatchSchedule(BatchSpec(global_tokens=1000), context=32, world=2)


def test_ramp_grows_linearly_to_the_final_batch_in_whole_rank_multiples() -> None:
    spec = BatchSpec.model_validate({"globalTokens": 32 * 64, "ramp": {"startTokens": 32 * 8, "steps": 10}})
    schedule = BatchSchedule(spec, context=32, world=2)
    sizes = [schedule.global_sequences(s) for s in range(12)]
    assert sizes[0] == 8 and sizes[10] == sizes[11] == 64
    assert sizes == sorted(sizes) and all(s % 2 == 0 for s in sizes)
    assert schedule.tokens_until(12) == sum(sizes) * 32
    steps = schedule.steps_for_tokens(schedule.tokens_until(12))
    assert steps == 12


def test_max_tokens_converts_to_steps() -> None:
    schedule = BatchSchedule(BatchSpec(global_tokens=256), context=32, world=1)
    assert schedule.steps_for_tokens(256 * 10) == 10
    assert schedule.steps_for_tokens(256 * 10 + 1) == 11


def test_probe_halves_on_out_of_memory_until_it_fits() -> None:
    tried = []

    def attempt(n: int) -> None:
        tried.append(n)
        if n > 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert fit_micro_batch(attempt, 64) == 4
    assert tried == [64, 32, 16, 8, 4]


def test_probe_fails_clearly_when_one_sequence_does_not_fit() -> None:
    def attempt(n: int) -> None:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(OutOfMemoryAtSmallestBatch, match=r"spec\.batch: out of memory with one sequence"):
        fit_micro_batch(attempt, 8)


def test_probe_does_not_swallow_other_errors() -> None:
    def attempt(n: int) -> None:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        fit_micro_batch(attempt, 8)


def test_cpu_estimate_is_smaller_with_less_memory_and_larger_with_checkpointing() -> None:
    kwargs = {"parameters": 30_000_000, "layers": 6, "hidden": 512, "context": 512, "largest": 64}
    roomy = estimate_micro_batch(checkpointing=False, available_bytes=16 << 30, **kwargs)
    tight = estimate_micro_batch(checkpointing=False, available_bytes=2 << 30, **kwargs)
    saved = estimate_micro_batch(checkpointing=True, available_bytes=2 << 30, **kwargs)
    assert 1 <= tight < roomy <= 64
    assert saved > tight


def test_cpu_estimate_counts_the_optimizer_state_it_will_create() -> None:
    """1.23B parameters (24×2048, ctx 1024) with 20 GiB free: fp32 AdamW's 8 bytes of state per
    parameter leave room for one sequence, AdamW8bit's ~2 for two, and more with checkpointing."""
    kwargs = {"parameters": 1_230_000_000, "layers": 24, "hidden": 2048, "context": 1024, "largest": 64,
              "available_bytes": 20 << 30}
    sizes = {opt: estimate_micro_batch(checkpointing=False, optimizer=opt, **kwargs)
             for opt in ("adamw", "adamw-bf16", "adamw-8bit", "adafactor")}
    assert sizes["adamw"] == 1
    assert sizes["adamw-8bit"] == 2
    assert sizes["adamw"] <= sizes["adamw-bf16"] <= sizes["adamw-8bit"] <= sizes["adafactor"]
    assert estimate_micro_batch(checkpointing=True, optimizer="adamw-8bit", **kwargs) > sizes["adamw-8bit"]
    assert estimate_micro_batch(checkpointing=False, **kwargs) == sizes["adamw"]  # adamw is the default


def test_cpu_estimate_refuses_an_unknown_optimizer_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"spec.optimizer.type: unknown optimizer 'sgd'.*adamw-8bit"):
        estimate_micro_batch(1000, 2, 64, 32, False, 8, available_bytes=1 << 30, optimizer="sgd")
