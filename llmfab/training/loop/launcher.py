"""How a TrainingRun trains: in this process, or by starting torchrun on itself.

When the spec asks for more than one process and this process was not started by torchrun (no
``LOCAL_RANK``), it starts torchrun on itself. Environment variables read for that, so the same
command works locally and in a cluster pod:

- ``LLMFAB_RDZV_ENDPOINT`` (``host:port``) — the c10d rendezvous; else ``MASTER_ADDR:MASTER_PORT``
  (port default 29500); else, for one node, ``127.0.0.1`` and a free port.
- ``LLMFAB_NODE_RANK``, else ``JOB_COMPLETION_INDEX`` (Indexed Job), else ``NODE_RANK``, else 0.

Inside the workers torchrun sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
(``training/components/distributed.py``). ``LLMFAB_CPU_BF16=force|off`` overrides the probe that picks bf16 or
fp32 on CPUs for ``precision: auto|bf16`` (``training/components/precision.py``).

A worker that runs out of memory under torchrun records a halved micro-batch in the run's
``micro-batch.json`` and fails (``training/components/batching.py``); on one node this launcher then restarts
torchrun, and the workers resume from the last checkpoint at the smaller size. Across nodes,
``parallelism.maxRestarts`` (torchrun ``--max-restarts``) restarts every node's workers together.

The run directory is not staged as a whole: checkpoints must survive a crash so the next attempt
resumes. Each checkpoint and the ``model/`` export are atomic, and ``manifest.json`` — what marks
the run complete — is written last, by rank 0, after the export.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from llmfab.api.training_run import TrainingRunSpec
from llmfab.errors import DependencyNotReady, WorkloadError
from llmfab.signals import die_with_parent, signal_of
from llmfab.stages import write_spec_file
from llmfab.status import FileStatusReporter
from llmfab.store import MANIFEST
from llmfab.workload import WorkloadContext

if TYPE_CHECKING:
    from llmfab.training.loop.objective import Objective

LAUNCH_SPEC = ".launch-spec.yaml"
MAX_OOM_RELAUNCHES = 8  # each halves the micro-batch: 8 cover 256 -> 1


def train_or_launch(ctx: WorkloadContext, spec: TrainingRunSpec, objective: Objective) -> None:
    """Train ``objective`` here, or, when the spec asks for more processes than this one and torchrun
    did not start it, start torchrun on this same stage and wait. The objective was built (and so its
    inputs checked) in the launcher too: bad input fails before torchrun starts."""
    if spec.parallelism.nodes * spec.parallelism.processes_per_node > 1 and "LOCAL_RANK" not in os.environ:
        launch_torchrun(ctx, spec)
        return
    train_here(ctx, spec, objective)


def rendezvous(spec: TrainingRunSpec) -> tuple[str, int]:
    """(endpoint, node rank) from the environment (see the module docstring)."""
    node_rank = int(os.environ.get("LLMFAB_NODE_RANK", os.environ.get("JOB_COMPLETION_INDEX",
                                                                      os.environ.get("NODE_RANK", "0"))))
    endpoint = os.environ.get("LLMFAB_RDZV_ENDPOINT")
    if endpoint is None and "MASTER_ADDR" in os.environ:
        endpoint = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29500')}"
    if endpoint is None:
        if spec.parallelism.nodes > 1:
            raise WorkloadError(
                f"spec.parallelism.nodes: {spec.parallelism.nodes} nodes need a rendezvous address; set "
                "LLMFAB_RDZV_ENDPOINT=host:port (node 0) or MASTER_ADDR/MASTER_PORT in every pod"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    return endpoint, node_rank


def torchrun_command(spec: TrainingRunSpec, spec_file: Path, endpoint: str, node_rank: int,
                     force: bool) -> list[str]:
    p = spec.parallelism
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", str(p.nodes), "--nproc-per-node", str(p.processes_per_node),
        "--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
        "--max-restarts", str(p.max_restarts),
        "-m", "llmfab.training.launch", "--spec", str(spec_file), *(["--force"] if force else []),
    ]


def launch_torchrun(ctx: WorkloadContext, spec: TrainingRunSpec) -> None:
    """Run this same stage under torchrun and wait; a failed worker fails the run (resume on rerun)."""
    from llmfab.training.components.batching import (
        read_cap,  # torch: only where this process trains or reads a cap
    )

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    spec_file = write_spec_file(ctx.resource, ctx.out_dir / LAUNCH_SPEC)
    for attempt in range(MAX_OOM_RELAUNCHES + 1):
        endpoint, node_rank = rendezvous(spec)
        cmd = torchrun_command(spec, spec_file, endpoint, node_rank, ctx.force)
        ctx.reporter.event("Launching", " ".join(cmd[1:]))
        cap_before = read_cap(ctx.out_dir, None)  # any key: the workers check theirs
        # Its own process group: a signal to ours (Ctrl-C, `llmfab up`) reaches torchrun once, forwarded.
        code = _wait_forwarding_signals(subprocess.Popen(cmd, preexec_fn=die_with_parent, process_group=0))
        if code == 0:
            return
        cap_after = read_cap(ctx.out_dir, None)
        lowered = cap_after is not None and (cap_before is None or cap_after < cap_before)
        if not lowered or spec.parallelism.nodes > 1 or attempt == MAX_OOM_RELAUNCHES:
            break
        # A rank ran out of memory and recorded a halved micro-batch: restart every worker from the
        # last checkpoint at that size. (Across nodes, torchrun --max-restarts does this instead.)
        ctx.reporter.event("MicroBatchReduced", f"a worker ran out of memory; restarting torchrun with "
                           f"micro-batch {cap_after}", "Warning")
    message = ""
    if isinstance(ctx.reporter, FileStatusReporter):
        status = ctx.reporter.read()
        message = status.get("message", "") if status.get("phase") != "Running" else ""
    if code == 3:
        raise DependencyNotReady(message or "a dependency is not ready")
    raise WorkloadError(
        message or f"torchrun exited with code {code} (a worker failed or was killed); run again to "
        "resume from the last checkpoint"
    )


def _wait_forwarding_signals(proc: subprocess.Popen[bytes]) -> int:
    """Wait for torchrun. A stop (Ctrl-C, or SIGTERM as ``signals.Terminated``: pod deletion) is
    forwarded to it, and through it to the workers, which stop as one process would (SIGTERM: at a
    step boundary, with a checkpoint); once torchrun is done the stop goes on to ``run_stage``.
    torchrun bounds the wait: it SIGKILLs workers 30 s after forwarding."""
    try:
        return proc.wait()
    except KeyboardInterrupt as stop:
        proc.send_signal(signal_of(stop))
        proc.wait()
        raise


def train_here(ctx: WorkloadContext, spec: TrainingRunSpec, objective: Objective) -> None:
    """This process's part of the run (every torchrun rank runs it); rank 0 publishes the result."""
    from llmfab.data.shards import DataFormatError
    from llmfab.training.components import distributed as D
    from llmfab.training.components.batching import (
        BatchConfigError,
        OutOfMemoryAtSmallestBatch,
        OutOfMemoryBackoff,
    )
    from llmfab.training.components.checkpoint import CheckpointIOError, IncompatibleCheckpoint
    from llmfab.training.loop.trainer import NonFiniteLoss, train

    env = D.init_distributed(spec)
    failed = True
    try:
        if env.is_main:
            with contextlib.suppress(FileNotFoundError):
                (ctx.out_dir / MANIFEST).unlink()  # stale: the spec changed or --force; not complete now
        try:
            result = train(spec, ctx.out_dir, objective, ctx.reporter, env, ctx.resource.name)
        except (BatchConfigError, CheckpointIOError, DataFormatError, IncompatibleCheckpoint, NonFiniteLoss,
                OutOfMemoryAtSmallestBatch, OutOfMemoryBackoff) as e:
            raise WorkloadError(str(e)) from e
        if env.is_main:
            objective.publish(ctx, spec, result)
        failed = False
    finally:
        D.teardown(env, failed)
