"""The process group and everything applied to the model from outside it (torchtitan's
``parallelize``): activation checkpointing, ``torch.compile`` and FSDP2 sharding.

The model never knows about any of this. torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; without them the process is a world of one and no process group
is created. Backend: NCCL on CUDA, gloo on CPU (``parallelism.backend`` overrides).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from llmfab.api.training_run import ParallelismSpec, TrainingRunSpec
from llmfab.training.components.host_memory import keep_freed_memory


class ComputeSpec(Protocol):
    """The part of a spec the process group and precision helpers read: a TrainingRun's and a
    RewardModel's both have it, with the same types."""

    @property
    def precision(self) -> str: ...

    @property
    def parallelism(self) -> ParallelismSpec: ...


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(spec: ComputeSpec) -> DistEnv:
    """Join the torchrun job (or be a world of one); pin this process's device and threads, and on CPU
    keep freed tensor memory in the process (``host_memory``)."""
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        keep_freed_memory()  # no page faults for the buffers every step frees and allocates again
        if "OMP_NUM_THREADS" not in os.environ:
            # Processes on one host share its cores; oversubscribing them is many times slower.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    if world > 1 and not dist.is_initialized():
        backend = spec.parallelism.backend
        if backend == "auto":
            backend = "nccl" if cuda else "gloo"
        dist.init_process_group(
            backend, timeout=datetime.timedelta(minutes=30), device_id=device if cuda else None
        )
    return DistEnv(rank, local_rank, world, device)


def teardown(env: DistEnv, failed: bool = False) -> None:
    """Leave the process group cleanly: without the barrier and destroy, gloo processes abort at exit.

    After a failure nothing collective is safe: the other ranks may be blocked inside any
    collective (an all-gather of the step this rank abandoned), and a barrier or even
    ``destroy_process_group`` can then wait for them forever. A failed rank leaves the group as it
    is; its entrypoint reports and then ends the process at once (``exit_worker``), which closes
    its connections, so the peers fail fast and torchrun stops them.
    """
    if failed or not (env.distributed and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()


def exit_worker(code: int) -> None:
    """End a failed torchrun worker now: interpreter shutdown would run the process group's
    destructors, which can block on peers that are waiting in a collective."""
    if code == 0 or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_initialized():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def all_reduce_mean(value: float, env: DistEnv) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def broadcast_flag(flag: bool, env: DistEnv) -> bool:
    """Rank 0's decision, for choices that every rank must take together (e.g. time-based saves)."""
    if not env.distributed:
        return flag
    t = torch.tensor([int(flag)], device=env.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def uses_fsdp(spec: ComputeSpec, env: DistEnv) -> bool:
    return env.distributed and spec.parallelism.fsdp


def uses_bf16(spec: ComputeSpec, env: DistEnv) -> bool:
    """Whether this run computes in bf16. ``spec.precision`` must be the concrete choice that
    ``components.precision.resolve`` made (auto and bf16 become whichever is faster here)."""
    if spec.precision not in ("bf16", "fp32"):
        raise ValueError(f"spec.precision: {spec.precision!r} is not resolved yet; components.precision.resolve "
                         "turns it into bf16 or fp32 before the model is built")
    return spec.precision == "bf16"


def autocast(spec: ComputeSpec, env: DistEnv) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast for the forward. Under FSDP2 the mixed-precision policy already casts parameters
    to bf16, so autocast stays off there (as in torchtitan)."""
    if not uses_bf16(spec, env) or uses_fsdp(spec, env):
        return contextlib.nullcontext()
    return torch.autocast(env.device.type, dtype=torch.bfloat16)


def checkpointed_block_indices(spec: TrainingRunSpec, blocks: int) -> list[int]:
    ac = spec.activation_checkpointing
    if ac.mode == "full":
        return list(range(blocks))
    if ac.mode == "selective":
        return [i for i in range(blocks) if i % ac.every == 0]
    return []


def parallelize(model: nn.Module, spec: TrainingRunSpec, env: DistEnv, root: nn.Module | None = None) -> nn.Module:
    """Apply activation checkpointing, compile and FSDP2 to ``model.blocks`` in place, then shard
    ``root`` (default: the model; the trainer passes the module that wraps model and loss).

    With ALBERT-style sharing a block runs several times per forward; per-block FSDP units would
    reshard and reduce between uses, so then only the root is sharded.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    blocks: nn.ModuleList = model.blocks  # type: ignore[assignment]
    for i in checkpointed_block_indices(spec, len(blocks)):
        blocks[i] = checkpoint_wrapper(blocks[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    if spec.compile:  # CUDA, and CPU where asked (inductor's C++ kernels; RESULTS.md, issue 13)
        for block in blocks:
            block.compile()  # in place: parameter names (and checkpoints) stay those of the eager model
    if uses_fsdp(spec, env):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        bf16 = uses_bf16(spec, env)
        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32
        )
        if len(blocks) == spec.model.layers:
            for i, block in enumerate(blocks):
                # The last block's parameters are gathered again at once by backward: keep them.
                fully_shard(block, mp_policy=policy, reshard_after_forward=i < len(blocks) - 1)
        fully_shard(root if root is not None else model, mp_policy=policy)
    return root if root is not None else model


def set_gradient_sync(model: nn.Module, syncing: bool, spec: ComputeSpec, env: DistEnv) -> None:
    """FSDP2 reduce-scatters only on the last micro-batch of a step; the others accumulate locally."""
    if uses_fsdp(spec, env):
        model.set_requires_gradient_sync(syncing)  # type: ignore[operator]


def average_gradients(model: nn.Module, spec: ComputeSpec, env: DistEnv) -> None:
    """Data parallelism without FSDP (``parallelism.fsdp: false``): one flat all-reduce of all grads."""
    if not env.distributed or uses_fsdp(spec, env):
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= env.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
