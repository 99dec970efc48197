"""``llmfab reward run --spec FILE``: one RewardModel, on one process.

    base TrainingRun's model/ -> Transformer + scalar head (``model/reward_head.py``)
    preference pairs (``training/objectives/reward/pairs.py``) -> train / held-out split
    for each step: lr; the step's pairs; micro-batches (forward chosen+rejected, Bradley-Terry
                   loss, backward); clip; stop on NaN/inf; optimizer step; log; checkpoint
    held-out pairwise accuracy -> status; export LlamaForSequenceClassification; manifest last

It is the TrainingRun trainer's objective, composed from the same components: the optimizer
(``optim.build_optimizer``, ``lr_multiplier``), precision (``distributed.autocast``), resumable
checkpoints (``checkpoint.CheckpointManager``) and metrics (``metrics.MetricsSink``). The step loop
is its own: the pretraining loop samples token windows and calls a language-model loss, where this
one batches pairs. One process only: ``spec.parallelism`` above one process and ``spec.batch.ramp``
are refused, as is ``spec.preferences.inferenceService`` (the feedback store is not read yet).

Batch: ``spec.batch.globalTokens`` counts each pair as 2 × contextLength tokens (chosen + rejected);
``microBatchSize`` is pairs per forward (default: the whole step, up to ``maxMicroBatchSize``).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, cast

import yaml

from llmfab.api.inference_service import InferenceService
from llmfab.api.reward_model import RewardModel, RewardModelSpec
from llmfab.cards import refresh_card
from llmfab.cards import stage as model_card
from llmfab.cards.facts import DataFacts, file_facts
from llmfab.errors import StageNotSupported, WorkloadError
from llmfab.serving.feedback_store import FILENAME as FEEDBACK_STORE
from llmfab.store import MANIFEST, artifact_dir, write_manifest
from llmfab.workload import WorkloadContext


def run(ctx: WorkloadContext) -> None:
    resource = ctx.resource
    assert isinstance(resource, RewardModel)
    spec = resource.spec
    refuse_unsupported(spec)
    base_dir = ctx.dependency("TrainingRun", spec.base.training_run)
    model_dir = base_dir / "model"
    if not (model_dir / "config.json").is_file():
        raise WorkloadError(f"spec.base.trainingRun: TrainingRun/{spec.base.training_run} has no exported model "
                            f"in {model_dir}; rerun it with --force")
    from llmfab.training.objectives.reward.pairs import (
        feedback_pairs,
        preference_files,
        read_pairs,
        split_pairs,
    )

    model_card.release(spec.release, model_dir, f"TrainingRun/{spec.base.training_run}")  # before training
    prefs = spec.preferences
    if prefs.inference_service is not None:  # the feedback app's votes (exactly one source: API rule)
        store = artifact_dir(InferenceService.ARTIFACT_DIR, prefs.inference_service, ctx.root) / FEEDBACK_STORE
        pairs = feedback_pairs(store, prefs.inference_service, prefs)
        data = [DataFacts(kind="file", name=f"the feedback app of InferenceService/{prefs.inference_service}",
                          role="preference pairs", rows=len(pairs))]
    else:
        assert prefs.path is not None
        files = preference_files(prefs.path, ctx.resolve(prefs.path))
        pairs = read_pairs(files, prefs)
        data = [file_facts(Path(f), "preference pairs", len(pairs) if len(files) == 1 else None) for f in files]
    train_pairs, held_out = split_pairs(pairs, spec.preferences.val_fraction, spec.seed)
    with contextlib.suppress(FileNotFoundError):
        (ctx.out_dir / MANIFEST).unlink()  # stale: the spec changed or --force; not complete now
    train_reward_model(ctx, spec, model_dir, base_dir, train_pairs, held_out, data)


def refuse_unsupported(spec: RewardModelSpec) -> None:
    """Fields that validate but that this stage cannot honour yet are refused, never ignored."""
    if spec.parallelism.nodes * spec.parallelism.processes_per_node > 1:
        raise StageNotSupported(
            "spec.parallelism: reward training runs on one process; set nodes: 1 and processesPerNode: 1"
        )
    if spec.batch.ramp is not None:
        raise StageNotSupported("spec.batch.ramp: batch-size warm-up is not implemented for RewardModel; remove it")


def load_base(model_dir: Path, name: str) -> tuple[Any, Any, Any, dict[str, int | None]]:
    """(Transformer, ModelArgs, tokenizer, special ids) of the base TrainingRun's export."""
    from transformers import AutoTokenizer

    from llmfab.model.hf import load_hf

    field = f"spec.base.trainingRun: TrainingRun/{name}"
    try:
        model, args = load_hf(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError) as e:
        raise WorkloadError(f"{field} has no loadable model in {model_dir} ({e}); rerun it with --force") from e
    if len(tokenizer) > args.vocab_size:
        raise WorkloadError(f"{field}: its tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
                            f"{args.vocab_size}; the model and tokenizer come from different builds: rerun it")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise WorkloadError(f"{field}: its tokenizer has neither a pad nor an eos token to pad pairs with")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}
    return model, args, tokenizer, ids


def up_to_date(ctx: WorkloadContext) -> None:
    """A finished RewardModel with an unchanged spec: its card is written again, with ``spec.release`` as it is now."""
    assert isinstance(ctx.resource, RewardModel)
    refresh_card(ctx.out_dir / "model", ctx.reporter.current(), release=ctx.resource.spec.release)


def train_reward_model(ctx: WorkloadContext, spec: RewardModelSpec, model_dir: Path, base_dir: Path,
                       train_pairs: list[Any], held_out: list[Any], data: list[DataFacts] | None = None) -> None:
    import torch

    from llmfab.model.reward_head import RewardScorer, bradley_terry_loss
    from llmfab.training.components import distributed as D
    from llmfab.training.components.checkpoint import (
        CheckpointIOError,
        CheckpointManager,
        IncompatibleCheckpoint,
        architecture_of,
        parameter_fingerprint,
    )
    from llmfab.training.components.metrics import MetricsSink
    from llmfab.training.components.optim import build_optimizer, lr_multiplier
    from llmfab.training.components.precision import resolve as resolve_precision
    from llmfab.training.objectives.reward.pairs import batch_indices, encode_pairs, pad_batch

    env = D.init_distributed(spec)  # reads spec.parallelism, as a TrainingRun's
    torch.manual_seed(spec.seed)
    model, args, tokenizer, ids = load_base(model_dir, spec.base.training_run)
    pad_id = int(cast(int, ids["pad_token_id"]))
    scorer = RewardScorer(model, pad_id).to(env.device)
    scorer.train()
    train_set = encode_pairs(train_pairs, tokenizer, args.context_length)
    val_set = encode_pairs(held_out, tokenizer, args.context_length)
    if truncated := sum(p.truncated for p in train_set + val_set):
        ctx.reporter.event("PairsTruncated", f"{truncated} pairs are longer than contextLength "
                           f"{args.context_length}; their prompts are cut from the left", "Warning")
    spec = spec.model_copy(update={"precision": resolve_precision(
        spec.precision, env.device, env.world_size, args, ctx.out_dir, ctx.reporter)})
    optimizer = build_optimizer(scorer, spec.optimizer, seed=spec.seed)
    fingerprint = parameter_fingerprint(scorer, spec.optimizer.type, architecture_of(args))
    checkpoints = CheckpointManager(ctx.out_dir / "checkpoints", spec.checkpoint, env, fingerprint)
    step, loss, accuracy = 0, None, None
    try:
        if (latest := checkpoints.latest()) is not None:
            state = checkpoints.load(latest, scorer, optimizer)
            step, loss = int(state["step"]), state.get("loss")
            ctx.reporter.event("Resumed", f"resumed from {latest.name} (step {step})")
    except (CheckpointIOError, IncompatibleCheckpoint) as e:
        raise WorkloadError(str(e).replace("TrainingRun", "RewardModel")) from e
    pairs_per_step = max(1, spec.batch.global_tokens // (2 * args.context_length))
    micro = min(spec.batch.micro_batch_size or spec.batch.max_micro_batch_size, pairs_per_step)
    steps = spec.max_steps
    sink = MetricsSink(ctx.out_dir, spec.monitoring, ctx.resource.name, True,
                       spec.model_dump(mode="json", by_alias=True))
    ctx.reporter.progress(step=step, totalSteps=steps, pairs=len(train_set))

    def accuracy_on(encoded: list[Any]) -> float | None:
        if not encoded:
            return None
        scorer.eval()
        right = 0
        with torch.no_grad(), D.autocast(spec, env):
            for i in range(0, len(encoded), micro):
                rewards = scorer(pad_batch(encoded[i : i + micro], pad_id).to(env.device))
                half = rewards.shape[0] // 2
                right += int((rewards[:half] > rewards[half:]).sum())
        scorer.train()
        return right / len(encoded)

    try:
        while step < steps:
            lr = spec.optimizer.lr * lr_multiplier(step, steps, spec.optimizer)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chosen_idx = batch_indices(step, pairs_per_step, len(train_set), spec.seed)
            step_loss, wins = 0.0, 0
            for i in range(0, pairs_per_step, micro):
                chunk = [train_set[j] for j in chosen_idx[i : i + micro]]
                with D.autocast(spec, env):
                    rewards = scorer(pad_batch(chunk, pad_id).to(env.device))
                half = rewards.shape[0] // 2
                micro_loss = bradley_terry_loss(rewards[:half], rewards[half:], spec.margin)
                (micro_loss * len(chunk) / pairs_per_step).backward()
                step_loss += float(micro_loss.detach()) * len(chunk) / pairs_per_step
                wins += int((rewards[:half] > rewards[half:]).sum())
            norm = float(torch.nn.utils.clip_grad_norm_(scorer.parameters(), spec.optimizer.grad_clip or math.inf))
            if not (math.isfinite(step_loss) and math.isfinite(norm)):
                raise WorkloadError(
                    f"step {step + 1}: loss {step_loss}, gradient norm {norm}; training stopped before the update. "
                    "Lower spec.optimizer.lr, raise spec.optimizer.warmupSteps or set spec.optimizer.gradClip"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = step_loss
            values: dict[str, Any] = {"loss": loss, "lr": lr, "grad_norm": norm, "train_accuracy": wins / pairs_per_step}
            if checkpoints.due(step) or step == steps:
                try:
                    checkpoints.save(step, scorer, optimizer, {"loss": loss})
                except CheckpointIOError as e:
                    raise WorkloadError(str(e)) from e
                accuracy = values["accuracy"] = accuracy_on(val_set)
            if step % spec.monitoring.log_every_steps == 0 or step == steps or "accuracy" in values:
                sink.log(step, values)
                sink.print_progress(step, steps, values)
                ctx.reporter.progress(step=step, totalSteps=steps, loss=loss, accuracy=accuracy)
        checkpoints.wait()
        if accuracy is None:  # resumed at the last step: nothing trained in this process
            accuracy = accuracy_on(val_set)
    finally:
        sink.close()
    if not held_out:
        ctx.reporter.event("NoHeldOutPairs", "spec.preferences.valFraction is 0: no accuracy is measured")
    publish(ctx, spec, scorer, args, ids, model_dir, base_dir, data or [],
            {"steps": step, "loss": loss, "accuracy": accuracy, "pairs": len(train_set), "heldOutPairs": len(held_out)})


def publish(ctx: WorkloadContext, spec: RewardModelSpec, scorer: Any, args: Any, ids: dict[str, int | None],
            base_model_dir: Path, base_dir: Path, data: list[DataFacts], numbers: dict[str, Any]) -> None:
    """Export ``model/`` (LlamaForSequenceClassification), report the final numbers, then the manifest."""
    from llmfab.model.reward_head import export_reward_hf, tokenizer_sha256

    out = ctx.out_dir / "model"
    state = {k: v.detach().float().cpu() for k, v in scorer.state_dict().items()}
    card = model_card.facts(
        ctx, spec.release, "reward", steps=numbers["steps"], tokens=None, precision=spec.precision,
        world_size=spec.parallelism.nodes * spec.parallelism.processes_per_node, data=data,
        figures={"accuracy": float(numbers["accuracy"])} if numbers.get("accuracy") is not None else {},
        parent_dir=base_model_dir, parent_label=f"TrainingRun/{spec.base.training_run}")
    export_reward_hf(state, args, scorer.pad_id, base_model_dir, out,
                     dtype="float32" if spec.precision == "fp32" else "bfloat16", special_ids=ids, card=card)
    model_path = str(out.relative_to(ctx.root)) if out.is_relative_to(ctx.root) else str(out)
    ctx.reporter.progress(step=numbers["steps"], loss=numbers["loss"], accuracy=numbers["accuracy"],
                          pairs=numbers["pairs"], modelPath=model_path)
    base_manifest = yaml.safe_load((base_dir / MANIFEST).read_text())
    write_manifest(ctx.out_dir, {
        "kind": "RewardModel", "name": ctx.resource.name, **numbers, "margin": spec.margin,
        "model": "model", "architecture": "LlamaForSequenceClassification",
        "tokenizerSha256": tokenizer_sha256(out),
        "base": {"trainingRun": spec.base.training_run, "specHash": base_manifest.get("specHash")},
    }, ctx.spec_hash)
