"""``llmfab train run --spec FILE``: one TrainingRun, on one process or under torchrun.

When the spec asks for more than one process and this process was not started by torchrun (no
``LOCAL_RANK``), it starts torchrun on itself. Environment variables read for that, so the same
command works locally and in a cluster pod:

- ``LLMFAB_RDZV_ENDPOINT`` (``host:port``) — the c10d rendezvous; else ``MASTER_ADDR:MASTER_PORT``
  (port default 29500); else, for one node, ``127.0.0.1`` and a free port.
- ``LLMFAB_NODE_RANK``, else ``JOB_COMPLETION_INDEX`` (Indexed Job), else ``NODE_RANK``, else 0.

Inside the workers torchrun sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``
(``training/distributed.py``). ``LLMFAB_CPU_BF16=force|off`` overrides the probe that picks bf16 or
fp32 on CPUs for ``precision: auto|bf16`` (``training/precision.py``).

A worker that runs out of memory under torchrun records a halved micro-batch in the run's
``micro-batch.json`` and fails (``training/batching.py``); on one node this launcher then restarts
torchrun, and the workers resume from the last checkpoint at the smaller size. Across nodes,
``parallelism.maxRestarts`` (torchrun ``--max-restarts``) restarts every node's workers together.

The run directory is not staged as a whole: checkpoints must survive a crash so the next attempt
resumes. Each checkpoint and the ``model/`` export are atomic, and ``manifest.json`` — what marks
the run complete — is written last, by rank 0, after the export.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llmfab.api.training_run import TrainingRun, TrainingRunSpec
from llmfab.errors import DependencyNotReady, StageNotSupported, WorkloadError
from llmfab.signals import die_with_parent, signal_of
from llmfab.stages import write_spec_file
from llmfab.status import FileStatusReporter
from llmfab.store import MANIFEST, write_manifest
from llmfab.workload import WorkloadContext

LAUNCH_SPEC = ".launch-spec.yaml"
MAX_OOM_RELAUNCHES = 8  # each halves the micro-batch: 8 cover 256 -> 1


def run(ctx: WorkloadContext) -> None:
    resource = ctx.resource
    assert isinstance(resource, TrainingRun)
    spec = resource.spec
    refuse_unsupported(spec)
    if spec.objective == "sft":  # instruction examples instead of the Dataset (training/sft_workload.py)
        from llmfab.training.sft_workload import run as run_sft

        run_sft(ctx, spec)
        return
    if spec.objective == "rl":  # rollouts scored by a RewardModel, GRPO (training/rl_workload.py)
        from llmfab.training.rl_workload import run as run_rl

        run_rl(ctx, spec)
        return
    dataset_dir = ctx.dependency("Dataset", spec.dataset_name)
    data = check_dataset(dataset_dir, spec)
    if spec.objective == "distill" and spec.distill is not None:
        from llmfab.training.distill import check_teacher

        check_teacher(ctx.dependency("TrainingRun", spec.distill.teacher), spec, data.vocab_size)
    if spec.pruning.enabled:  # a pruned size that cannot be built fails now, not after training
        from llmfab.training.post_training_pruning import check_pruning

        check_pruning(spec, data.vocab_size)
    world = spec.parallelism.nodes * spec.parallelism.processes_per_node
    if world > 1 and "LOCAL_RANK" not in os.environ:
        launch_torchrun(ctx, spec)
        return
    train_here(ctx, spec, data, dataset_dir)


def refuse_unsupported(spec: TrainingRunSpec) -> None:
    """Fields that validate but that this trainer cannot honour yet are refused, never ignored."""
    if spec.objective not in ("pretrain", "distill", "sft", "rl"):
        raise StageNotSupported(
            f"spec.objective: {spec.objective!r} is not implemented by this trainer yet; use pretrain, distill, sft or rl"
        )
    if spec.init_from is not None and spec.objective in ("pretrain", "distill"):
        raise StageNotSupported(
            f"spec.initFrom: starting objective {spec.objective} from another model's weights is not "
            "implemented yet; remove spec.initFrom (objectives sft and rl use it)"
        )
    if spec.pruning.enabled and spec.objective in ("sft", "rl"):
        raise StageNotSupported(
            f"spec.pruning.enabled: pruning is not implemented for objective {spec.objective} yet; "
            "prune the base TrainingRun instead, or set enabled: false"
        )
    if spec.objective == "rl":
        from llmfab.training.rl_workload import refuse_unsupported as refuse_rl

        refuse_rl(spec)


def check_dataset(dataset_dir: Path, spec: TrainingRunSpec) -> Any:
    """The Dataset's shards are readable and its vocabulary agrees with its tokenizers."""
    from llmfab.data.shards import DataFormatError, DatasetInfo

    name = f"Dataset/{spec.dataset_name}"
    try:
        data = DatasetInfo.load(dataset_dir)
        for split in ("train", "val"):
            data.split(split)
    except (DataFormatError, KeyError, OSError) as e:
        raise WorkloadError(f"spec.dataset.name: {name} is not a usable token Dataset ({e}); rebuild it") from e
    vocab = data.vocab_size
    found: dict[str, int] = {}
    sp_file = dataset_dir / data.manifest.get("tokenizer", "tokenizer.model")
    if sp_file.is_file():
        import sentencepiece as spm

        found[sp_file.name] = spm.SentencePieceProcessor(model_file=str(sp_file)).vocab_size()
    hf_json = dataset_dir / data.manifest.get("hfTokenizer", "tokenizer") / "tokenizer.json"
    if hf_json.is_file():
        from tokenizers import Tokenizer

        found["tokenizer/tokenizer.json"] = Tokenizer.from_file(str(hf_json)).get_vocab_size(with_added_tokens=False)
    if not found:
        raise WorkloadError(f"spec.dataset.name: {name} has no tokenizer files in {dataset_dir}; rebuild it")
    for file, size in found.items():
        if size != vocab:
            raise WorkloadError(
                f"spec.dataset.name: {name} manifest says vocabSize {vocab} but its {file} has {size} "
                "tokens; the shards and tokenizer come from different builds: rebuild the Dataset (--force)"
            )
    sample = data.split("train").read(0, min(1 << 20, data.split("train").num_tokens))
    if sample.size and int(np.max(sample)) >= vocab:
        raise WorkloadError(
            f"spec.dataset.name: {name} has token id {int(np.max(sample))} >= vocabSize {vocab}; rebuild the Dataset"
        )
    return data


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
    from llmfab.training.batching import read_cap  # torch: only where this process trains or reads a cap

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


def train_here(ctx: WorkloadContext, spec: TrainingRunSpec, data: Any, dataset_dir: Path | None,
               source: Any = None) -> None:
    """This process's part of the run (every torchrun rank runs it); ``source``: objective sft's examples."""
    from llmfab.data.shards import DataFormatError
    from llmfab.training import distributed as D
    from llmfab.training.batching import BatchConfigError, OutOfMemoryAtSmallestBatch, OutOfMemoryBackoff
    from llmfab.training.checkpoint import CheckpointIOError, IncompatibleCheckpoint
    from llmfab.training.trainer import NonFiniteLoss, train

    env = D.init_distributed(spec)
    failed = True
    try:
        if env.is_main:
            with contextlib.suppress(FileNotFoundError):
                (ctx.out_dir / MANIFEST).unlink()  # stale: the spec changed or --force; not complete now
        try:
            result = train(spec, ctx.out_dir, data, ctx.reporter, env, ctx.resource.name, source)
        except (BatchConfigError, CheckpointIOError, DataFormatError, IncompatibleCheckpoint, NonFiniteLoss,
                OutOfMemoryAtSmallestBatch, OutOfMemoryBackoff) as e:
            raise WorkloadError(str(e)) from e
        if env.is_main and source is not None:
            source.publish(ctx, spec, result)
        elif env.is_main and dataset_dir is not None:
            publish(ctx, spec, result, dataset_dir)
        failed = False
    finally:
        D.teardown(env, failed)


def publish(ctx: WorkloadContext, spec: TrainingRunSpec, result: Any, dataset_dir: Path) -> None:
    """Export ``model/`` in Hugging Face format, report the final numbers, then the manifest."""
    from llmfab.training.export import export_hf

    model_dir = ctx.out_dir / "model"
    state, args = result.state_dict, result.args
    if spec.pruning.enabled:  # the export is the pruned (and recovered) model: training/post_training_pruning.py
        from llmfab.data.shards import DatasetInfo
        from llmfab.training.post_training_pruning import prune_trained

        state, args, pruned = prune_trained(state, args, spec, DatasetInfo.load(dataset_dir))
        ctx.reporter.progress(pruning=pruned)
    export_hf(state, args, dataset_dir / "tokenizer", model_dir,
              dtype="float32" if spec.precision == "fp32" else "bfloat16")
    perplexity = {
        "valPerplexity": math.exp(result.val_loss) if result.val_loss is not None else None,
        "testPerplexity": math.exp(result.test_loss) if result.test_loss is not None else None,
    }
    model_path = str(model_dir.relative_to(ctx.root)) if model_dir.is_relative_to(ctx.root) else str(model_dir)
    ctx.reporter.progress(modelPath=model_path, valLoss=result.val_loss, lastCheckpoint=result.last_checkpoint,
                          eval={k: v for k, v in perplexity.items() if v is not None})
    dataset_manifest = (dataset_dir / MANIFEST).read_text()
    write_manifest(ctx.out_dir, {
        "kind": "TrainingRun", "name": ctx.resource.name, "objective": spec.objective,
        "steps": result.steps, "tokens": result.tokens, "parameters": result.parameters,
        "loss": result.loss, "valLoss": result.val_loss, "testLoss": result.test_loss, **perplexity,
        "model": "model", "lastCheckpoint": result.last_checkpoint,
        "dataset": {"name": spec.dataset_name, "specHash": yaml.safe_load(dataset_manifest).get("specHash")},
    }, ctx.spec_hash)
