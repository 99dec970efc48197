"""The pretraining loop, composed from one module per concern (torchtitan's shape).

    build model -> parallelize -> optimizer -> resume from the latest checkpoint
    for each step: stop here on SIGTERM (with a checkpoint if it fits);
                   lr; the step's windows; micro-batches (forward, chunked loss, backward);
                   all-reduce; clip; stop on NaN/inf; optimizer step; log; validate; checkpoint

Every rank runs this; rank 0 alone writes metrics, status and the trainer part of checkpoints.
What is trained for (the data, the loss module, extra metrics and reports) comes from an
``objective.Objective``; this module imports no objective.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmfab.api.training_run import TrainingRunSpec
from llmfab.model.from_spec import model_args_from_spec
from llmfab.model.transformer import ModelArgs, Transformer
from llmfab.signals import hold_sigterm
from llmfab.status import StatusReporter
from llmfab.training.components import distributed as D
from llmfab.training.components.batching import (
    CAP_FILE,
    SMALLEST_BATCH_FIX,
    BatchSchedule,
    OutOfMemoryAtSmallestBatch,
    OutOfMemoryBackoff,
    StepBatch,
    estimate_micro_batch,
    fit_micro_batch,
    is_out_of_memory,
    read_cap,
    write_cap,
)
from llmfab.training.components.checkpoint import (
    SIGTERM_SAVE_BUDGET_SECONDS,
    CheckpointManager,
    architecture_of,
    parameter_fingerprint,
)
from llmfab.training.components.metrics import (
    MetricsSink,
    flops_per_token,
    model_flops_utilization,
    peak_flops,
)
from llmfab.training.components.optim import build_optimizer, lr_multiplier
from llmfab.training.components.precision import resolve as resolve_precision
from llmfab.training.loop.loss_module import LanguageModelLoss
from llmfab.training.loop.objective import Objective, TrainResult


class NonFiniteLoss(RuntimeError):
    """The loss or gradient norm became NaN/inf; the optimizer step was not taken."""


def total_steps(spec: TrainingRunSpec, schedule: BatchSchedule) -> int:
    candidates = [spec.max_steps] if spec.max_steps is not None else []
    if spec.max_tokens is not None:
        candidates.append(schedule.steps_for_tokens(spec.max_tokens))
    return min(candidates)


def micro_batch_key(spec: TrainingRunSpec, env: D.DistEnv) -> str:
    """What decides how large a micro-batch fits: a recorded cap holds only while these stay the same."""
    return json.dumps({"model": spec.model.model_dump(mode="json"), "precision": spec.precision,
                       "checkpointing": spec.activation_checkpointing.model_dump(mode="json"),
                       "optimizer": spec.optimizer.type, "world": env.world_size,
                       "device": env.device.type, "fsdp": spec.parallelism.fsdp}, sort_keys=True)


def choose_micro_batch(spec: TrainingRunSpec, module: LanguageModelLoss, env: D.DistEnv,
                       parameters: int, local_sequences: int, cap: int | None = None) -> int:
    """Spec value, or the largest that fits (probed on CUDA, estimated on CPU) and is not above the
    cap an earlier out-of-memory left; equal on all ranks."""
    largest = min(spec.batch.max_micro_batch_size, local_sequences, cap or local_sequences)
    if spec.batch.micro_batch_size is not None:
        size = min(spec.batch.micro_batch_size, local_sequences)
    elif env.device.type == "cuda":
        T = spec.model.context_length

        def attempt(n: int) -> None:
            tokens = torch.zeros(n, T, dtype=torch.long, device=env.device)
            with D.autocast(spec, env):
                module(tokens, tokens).backward()
            module.zero_grad(set_to_none=True)

        size = fit_micro_batch(attempt, largest)
    else:
        m = spec.model
        size = estimate_micro_batch(parameters, m.layers, m.hidden, m.context_length,
                                    spec.activation_checkpointing.mode != "none", largest, optimizer=spec.optimizer.type)
    return _over_ranks(size, env, torch.distributed.ReduceOp.MIN)


def _over_ranks(value: int, env: D.DistEnv, op: Any) -> int:
    """``value`` reduced over all ranks with ``op`` (e.g. ``ReduceOp.MIN``); itself for one process."""
    if not env.distributed:
        return value
    t = torch.tensor([value], device=env.device)
    torch.distributed.all_reduce(t, op=op)
    return int(t.item())


def inputs_and_targets(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a batch: token windows ``[B, T + 1]``, or SFT's ``[B, 2, T + 1]`` of ids and
    labels (-100 where no loss is taken; ``objectives/sft/examples.py``)."""
    if batch.dim() == 3:
        return batch[:, 0, :-1], batch[:, 1, 1:]
    return batch[:, :-1], batch[:, 1:]


@torch.no_grad()
def evaluate(module: LanguageModelLoss, batches: list[torch.Tensor], spec: TrainingRunSpec,
             env: D.DistEnv) -> float:
    module.eval()
    total = 0.0
    for batch in batches:
        batch = batch.to(env.device, non_blocking=True)
        with D.autocast(spec, env):
            total += float(module(*inputs_and_targets(batch)))
    module.train()
    return D.all_reduce_mean(total / len(batches), env)


def full_state_dict(module: LanguageModelLoss) -> dict[str, torch.Tensor]:
    """Unsharded fp32 weights of the inner model on CPU (collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix("model."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


@dataclass
class Parts:
    """What ``build`` makes: the model, the module FSDP shards (model + loss), the optimizer."""

    args: ModelArgs
    model: Transformer
    module: LanguageModelLoss
    optimizer: torch.optim.Optimizer
    parameters: int
    fingerprint: dict[str, Any]


def build(spec: TrainingRunSpec, vocab_size: int, env: D.DistEnv,
          loss_module: Callable[[Transformer], LanguageModelLoss] | None = None) -> Parts:
    """The model (seeded: identical on every rank), the loss module around it (default: plain
    next-token loss; an objective's ``loss_module``), parallelized, and the optimizer."""
    torch.manual_seed(spec.seed)  # identical initial weights on every rank
    args = model_args_from_spec(spec.model, vocab_size)
    model = Transformer(args).to(env.device)
    parameters = sum(p.numel() for p in model.parameters())
    fingerprint = parameter_fingerprint(model, spec.optimizer.type, architecture_of(args))
    module = (loss_module(model) if loss_module is not None
              else LanguageModelLoss(model, spec.label_smoothing, spec.loss_chunk_tokens))
    D.parallelize(model, spec, env, root=module)
    optimizer = build_optimizer(module, spec.optimizer, seed=spec.seed)
    return Parts(args, model, module, optimizer, parameters, fingerprint)


def train_step(parts: Parts, batch: torch.Tensor, plan: StepBatch, spec: TrainingRunSpec,
               env: D.DistEnv) -> tuple[float, float]:
    """Forward/backward over the micro-batches, reduce, clip: (loss, grad norm). No update yet."""
    module = parts.module
    step_loss = torch.zeros((), device=env.device)
    for i, (chunk, weight) in enumerate(zip(torch.split(batch, list(plan.sizes)), plan.weights(), strict=True)):
        D.set_gradient_sync(module, i == plan.accumulation - 1, spec, env)
        with D.autocast(spec, env):
            micro_loss = module(*inputs_and_targets(chunk))
        (micro_loss * weight).backward()
        step_loss += micro_loss.detach() * weight
    D.average_gradients(module, spec, env)
    grad_norm = _clip(module, spec.optimizer.grad_clip)
    return D.all_reduce_mean(float(step_loss), env), grad_norm


class Throughput:
    """Tokens/s since the last report and the ETA from the average since start."""

    def __init__(self, schedule: BatchSchedule, step: int, steps: int) -> None:
        self.schedule, self.steps = schedule, steps
        self.started = self.window_start = time.monotonic()
        self.tokens_at_start = schedule.tokens_until(step)
        self.window_tokens = 0

    def add(self, tokens: int) -> None:
        self.window_tokens += tokens

    def report(self, step: int) -> dict[str, float]:
        now = time.monotonic()
        tps = self.window_tokens / max(1e-9, now - self.window_start)
        self.window_start, self.window_tokens = now, 0
        done = self.schedule.tokens_until(step)
        rate = max(1, done - self.tokens_at_start) / max(1e-9, now - self.started)
        return {"tokens_per_second": tps, "tokens": done,
                "eta_seconds": (self.schedule.tokens_until(self.steps) - done) / rate}


def train(spec: TrainingRunSpec, run_dir: Path, objective: Objective, reporter: StatusReporter,
          env: D.DistEnv, run_name: str) -> TrainResult:
    """Train ``objective`` to ``spec.maxSteps``/``maxTokens``, resuming from the latest checkpoint."""
    T = spec.model.context_length
    vocab_size = objective.vocab_size
    # auto/bf16 -> the faster here, measured (components/precision.py); all below sees the concrete choice.
    spec = spec.model_copy(update={"precision": resolve_precision(
        spec.precision, env.device, env.world_size, model_args_from_spec(spec.model, vocab_size), run_dir, reporter)})
    parts = build(spec, vocab_size, env, lambda model: objective.loss_module(model, spec, env))
    objective.load_initial_weights(parts.module)
    module, optimizer = parts.module, parts.optimizer
    schedule = BatchSchedule(spec.batch, T, env.world_size)
    steps = total_steps(spec, schedule)
    sampler = objective.sampler(T, spec.seed)
    checkpoints = CheckpointManager(run_dir / "checkpoints", spec.checkpoint, env, parts.fingerprint)
    step, last_checkpoint = 0, None
    if (latest := checkpoints.latest()) is not None:
        state = checkpoints.load(latest, module, optimizer)
        step, last_checkpoint = int(state["step"]), str(latest)
        sampler.load_state_dict(state["sampler"])
        reporter.event("Resumed", f"resumed from {latest.name} (step {step})")
    cap_key = micro_batch_key(spec, env)
    cap = read_cap(run_dir, cap_key) if spec.batch.micro_batch_size is None else None
    micro = choose_micro_batch(spec, module, env, parts.parameters, schedule.final // env.world_size, cap)
    if cap is not None:
        reporter.event("MicroBatchCapped", f"micro-batch {micro}: an earlier out-of-memory capped it at {cap} "
                       f"(delete {run_dir / CAP_FILE} to probe again)")
    val_batches = objective.val_batches(micro, T, spec.eval_batches, env.rank, env.world_size)
    objective.on_start(module, val_batches, spec, env, reporter, parts.parameters)
    mfu = mfu_function(parts, T, env)
    sink = MetricsSink(run_dir, spec.monitoring, run_name, env.is_main, spec.model_dump(mode="json", by_alias=True))
    reporter.progress(totalSteps=steps, parameters=parts.parameters, step=step)
    meter = Throughput(schedule, step, steps)
    loss = val_loss = None

    def trainer_state() -> dict[str, Any]:  # besides weights and optimizer: what a resume needs
        return {"sampler": sampler.state_dict(), "tokens": schedule.tokens_until(step)}

    # SIGTERM waits for the end of the step: a checkpoint of a half-applied update would be wrong,
    # and under torchrun every rank must stop at the same step to save together.
    sigterm = hold_sigterm(SIGTERM_SAVE_BUDGET_SECONDS)
    try:
        while step < steps:
            if _over_ranks(int(sigterm.since() is not None), env, torch.distributed.ReduceOp.MAX):
                saved, done = checkpoints.save_on_sigterm(step, sigterm.since() or 0.0, module, optimizer,
                                                          trainer_state())
                last_checkpoint = str(saved) if saved else last_checkpoint
                reporter.event("Preempted", f"SIGTERM at step {step}: {done}")
                reporter.progress(step=step, lastCheckpoint=last_checkpoint)
                sigterm.stop()
            lr = spec.optimizer.lr * lr_multiplier(step, steps, spec.optimizer)
            for group in optimizer.param_groups:
                group["lr"] = lr
            plan = schedule.step_batch(step, micro)
            batch = sampler.next_batch(plan.global_sequences, env.rank, env.world_size).to(env.device)
            torch.manual_seed(spec.seed + 1_000_003 * (step + 1) + env.rank)  # dropout: stateless per step
            try:
                loss, grad_norm = train_step(parts, batch, plan, spec, env)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                if micro == 1:
                    raise OutOfMemoryAtSmallestBatch(f"step {step + 1}: {SMALLEST_BATCH_FIX}") from e
                micro //= 2
                write_cap(run_dir, cap_key, micro, step)
                if env.distributed:
                    # The other ranks are inside collectives with this one: only a restart of all
                    # of them (from the last checkpoint, at the new cap) can retry the step.
                    raise OutOfMemoryBackoff(
                        f"step {step + 1}: rank {env.rank} ran out of memory at micro-batch {micro * 2}; "
                        f"the next attempt uses {micro} (recorded in {run_dir / CAP_FILE}) and "
                        f"resumes from {last_checkpoint or 'the start'}"
                    ) from e
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                optimizer.zero_grad(set_to_none=True)
                sampler.consumed -= plan.global_sequences
                reporter.event("MicroBatchReduced", f"out of memory at step {step + 1}; micro-batch now {micro}")
                continue
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                raise NonFiniteLoss(
                    f"step {step + 1}: loss {loss}, gradient norm {grad_norm}; training stopped before the "
                    f"update. Last good checkpoint: {last_checkpoint or 'none'}. Lower spec.optimizer.lr, "
                    "raise spec.optimizer.warmupSteps or set spec.optimizer.gradClip, then run again"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            meter.add(plan.global_sequences * T)

            values: dict[str, Any] = {"loss": loss, "lr": lr, "grad_norm": grad_norm}
            values.update(objective.step_metrics(module, env))
            if spec.eval_every_steps and (step % spec.eval_every_steps == 0 or step == steps):
                val_loss = values["val_loss"] = evaluate(module, val_batches, spec, env)
            if checkpoints.due(step) or step == steps:
                last_checkpoint = str(checkpoints.save(step, module, optimizer, trainer_state()))
            if step % spec.monitoring.log_every_steps == 0 or step == steps or "val_loss" in values:
                values.update(meter.report(step))
                values["mfu"] = mfu(values["tokens_per_second"])
                sink.log(step, values)
                sink.print_progress(step, steps, values)
                reporter.progress(step=step, totalSteps=steps, loss=loss, valLoss=val_loss,
                                  tokensPerSecond=values["tokens_per_second"], tokens=values["tokens"],
                                  etaSeconds=values["eta_seconds"], mfu=values["mfu"],
                                  lastCheckpoint=last_checkpoint, parameters=parts.parameters)
        checkpoints.wait()
        sigterm.release()  # one that came during the last step stops the run here
        if val_loss is None:
            val_loss = evaluate(module, val_batches, spec, env)
        test = objective.test_batches(micro, T, spec.eval_batches, env.rank, env.world_size)
        test_loss = evaluate(module, test, spec, env) if test else None
        objective.on_end(module, val_loss, reporter, parts.parameters)
        weights = full_state_dict(module)
    finally:
        sigterm.close()
        sink.close()
    return TrainResult(step, schedule.tokens_until(step), loss, val_loss, test_loss, parts.parameters,
                       last_checkpoint, weights if env.is_main else None, parts.args)


def mfu_function(parts: Parts, context: int, env: D.DistEnv) -> Callable[[float], float | None]:
    """tokens/s -> model FLOPs utilisation of this job, or None where the peak is unknown (CPU)."""
    args = parts.args
    shared_extra = sum(p.numel() for p in parts.model.blocks.parameters()) * (args.layers / len(parts.model.blocks) - 1)
    flops = flops_per_token(int(parts.parameters + shared_extra), args.layers, args.hidden, context)
    peak = peak_flops(torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else None)
    return lambda tps: model_flops_utilization(tps, flops, peak, env.world_size)


def _clip(module: nn.Module, max_norm: float | None) -> float:
    norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm if max_norm else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
