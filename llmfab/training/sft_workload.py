"""``objective: sft``: the TrainingRun trainer on instruction examples instead of token windows.

    initFrom (a TrainingRun's model/ or an HF model directory) -> weights, shape, tokenizer
    spec.sft.path (JSONL) -> chats -> chat template -> (ids, labels with the prompt at -100)
    the pretraining loop (``trainer.train``) with this batch source; the held-out examples' loss
    export model/ with the base tokenizer and its chat template; manifest last

Everything else is the pretraining run's: torchrun/FSDP2, checkpoints and resume, status, metrics.
The model's shape is the base model's (``spec.model`` may only repeat it, or set ``dropout``), and
training does not read ``spec.dataset`` (optional for sft and rl): the instructions are the data. A
given Dataset is what the evaluation stage scores the tuned model on, so its tokenizer should be the
base's (a warning event says when it is not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmfab.api.training_run import ModelSpec, TrainingRunSpec
from llmfab.errors import WorkloadError
from llmfab.store import MANIFEST, write_manifest
from llmfab.workload import WorkloadContext


@dataclass
class InstructionSource:
    """What ``trainer.train`` takes instead of a Dataset's token windows."""

    vocab_size: int
    initial_state: dict[str, Any]
    sampler: Any  # sft_data.ExampleSampler
    val_rows: Any  # [N, 2, context + 1]
    model_dir: Path  # the base export: tokenizer and chat template for ours
    base: dict[str, Any]  # for the manifest
    examples: int

    def load_initial_weights(self, module: Any) -> None:
        """The base weights into the trainer's (possibly FSDP-sharded) model + loss module."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, {f"model.{k}": v for k, v in self.initial_state.items()},
                             options=StateDictOptions(full_state_dict=True))

    def publish(self, ctx: WorkloadContext, spec: TrainingRunSpec, result: Any) -> None:
        publish(ctx, spec, result, self)

    def val_batches(self, batch_size: int, rank: int, world: int) -> list[Any]:
        from llmfab.training.sft_data import held_out_batches

        return held_out_batches(self.val_rows, batch_size, rank, world)


def base_model_dir(ctx: WorkloadContext, spec: TrainingRunSpec) -> tuple[Path, str, dict[str, Any]]:
    """(model directory, spec field naming it, base record for the manifest)."""
    init = spec.init_from
    assert init is not None  # API rule: sft needs initFrom
    if init.training_run:
        run_dir = ctx.dependency("TrainingRun", init.training_run)
        manifest = yaml.safe_load((run_dir / MANIFEST).read_text()) or {}
        return (run_dir / str(manifest.get("model", "model")), f"spec.initFrom.trainingRun: TrainingRun/{init.training_run}",
                {"trainingRun": init.training_run, "specHash": manifest.get("specHash")})
    if init.path:
        return ctx.resolve(init.path), f"spec.initFrom.path: {init.path!r}", {"path": init.path}
    raise WorkloadError("spec.initFrom: objective sft needs initFrom.trainingRun or initFrom.path (an HF model directory)")


def load_base(ctx: WorkloadContext, spec: TrainingRunSpec, objective: str) -> tuple[Path, str, dict[str, Any], Any, Any, Any]:
    """(model dir, spec field naming it, base record, model, model args, tokenizer) of the model a
    post-training objective starts from; its tokenizer gets the default chat template if it has none
    (the export writes the same)."""
    from transformers import AutoTokenizer

    from llmfab.training.export import CHAT_TEMPLATE, load_hf

    model_dir, field, base = base_model_dir(ctx, spec)
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise WorkloadError(f"{field} has no tokenizer in {model_dir} (tokenizer.json / tokenizer_config.json); "
                            f"{objective} tokenizes with the base model's tokenizer: export it with one")
    try:
        model, args = load_hf(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError) as e:
        raise WorkloadError(f"{field} has no loadable model in {model_dir} ({e}); rerun it with --force") from e
    if tokenizer.eos_token is None or len(tokenizer) > args.vocab_size:
        raise WorkloadError(f"{field}: its tokenizer ({len(tokenizer)} tokens, eos {tokenizer.eos_token!r}) needs an "
                            f"eos token and at most the model's {args.vocab_size} tokens; rerun it")
    tokenizer.chat_template = tokenizer.chat_template or CHAT_TEMPLATE
    warn_if_dataset_tokenizer_differs(ctx, spec, model_dir, field)
    return model_dir, field, base, model, args, tokenizer


def warn_if_dataset_tokenizer_differs(ctx: WorkloadContext, spec: TrainingRunSpec, model_dir: Path, field: str) -> None:
    """``spec.dataset`` of a post-training run is what the evaluation after training scores the model
    on; a Dataset tokenized otherwise than the base would give meaningless numbers, so say so now."""
    from llmfab.store import artifact_dir, read_manifest
    from llmfab.training.reward_head import tokenizer_sha256

    if spec.dataset is None:
        return
    dataset_dir = artifact_dir("datasets", spec.dataset.name, ctx.root)
    theirs, ours = tokenizer_sha256(dataset_dir / "tokenizer"), tokenizer_sha256(model_dir)
    if read_manifest(dataset_dir) is not None and theirs and ours and theirs != ours:
        ctx.reporter.event(
            "DatasetTokenizerDiffers",
            f"spec.dataset.name: Dataset/{spec.dataset.name} has another tokenizer than the base model ({field}); "
            "the evaluation after training would score this model on tokens it does not read. Remove spec.dataset "
            "or name the Dataset the base model was trained on", "Warning")


def shape_of(args: Any, user: ModelSpec, objective: str = "SFT") -> ModelSpec:
    """The base model's shape as ``spec.model``; a field the spec sets to another value is an error.

    A field at its API default counts as not set: a spec rendered for torchrun or a pod (``render_spec``)
    carries every default, so the default cannot mean "chosen"."""
    derived = ModelSpec(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                        intermediate=args.intermediate, context_length=args.context_length,
                        rope_theta=args.rope_theta, norm_eps=args.norm_eps, tie_embeddings=args.tie_embeddings,
                        init_std=args.init_std, dropout=user.dropout)
    for name in sorted(user.model_fields_set - {"dropout", "preset"}):
        mine, theirs = getattr(user, name), getattr(derived, name)
        if mine != theirs and mine != ModelSpec.model_fields[name].get_default(call_default_factory=True):
            alias = ModelSpec.model_fields[name].alias or name
            raise WorkloadError(f"spec.model.{alias}: {mine!r} differs from the base model's {theirs!r}; {objective} "
                                f"keeps the base's shape: remove spec.model.{alias}")
    return derived


def prepare(ctx: WorkloadContext, spec: TrainingRunSpec) -> tuple[TrainingRunSpec, InstructionSource]:
    """The spec with the base's shape, and the batch source; every bad input is a WorkloadError."""

    from llmfab.training.sft_data import (
        ExampleSampler,
        encode,
        instruction_files,
        read_chats,
        split_examples,
        to_rows,
    )

    model_dir, _, base, model, args, tokenizer = load_base(ctx, spec, "SFT")
    sft = spec.sft
    assert sft is not None  # API rule
    chats = read_chats(instruction_files(sft.path, ctx.resolve(sft.path)), sft)
    train_chats, held_out = split_examples(chats, sft.val_fraction, spec.seed)
    context = args.context_length
    train_set = [encode(tokenizer, chat, context, sft.loss_on_prompt) for _, chat in train_chats]
    val_set = [encode(tokenizer, chat, context, sft.loss_on_prompt) for _, chat in held_out]
    if truncated := sum(e.truncated for e in train_set + val_set):
        ctx.reporter.event("ExamplesTruncated", f"{truncated} examples are longer than the base model's context "
                           f"{context} + 1 tokens; their ends are cut", "Warning")
    for (where, _), ex in zip(train_chats + held_out, train_set + val_set, strict=True):
        if all(label < 0 for label in ex.labels[1:]):  # the first token is never a target
            raise WorkloadError(f"spec.sft.responseField: {where} has no response token within the context "
                                f"({context}); shorten its prompt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    source = InstructionSource(
        vocab_size=args.vocab_size, initial_state=model.state_dict(),
        sampler=ExampleSampler(to_rows(train_set, context, pad), spec.seed), val_rows=to_rows(val_set, context, pad),
        model_dir=model_dir, base=base, examples=len(train_set))
    return spec.model_copy(update={"model": shape_of(args, spec.model)}), source


def run(ctx: WorkloadContext, spec: TrainingRunSpec) -> None:
    """As the pretraining ``workload.run``: this process trains, or it starts torchrun on itself."""
    import os

    from llmfab.training.workload import launch_torchrun, train_here

    spec, source = prepare(ctx, spec)  # in the launcher too: bad input fails before torchrun starts
    if spec.parallelism.nodes * spec.parallelism.processes_per_node > 1 and "LOCAL_RANK" not in os.environ:
        launch_torchrun(ctx, spec)
        return
    train_here(ctx, spec, None, None, source)


def publish(ctx: WorkloadContext, spec: TrainingRunSpec, result: Any, source: InstructionSource) -> None:
    """Export ``model/`` with the base tokenizer and chat template, report the final numbers, then the manifest."""
    from llmfab.training.export import export_hf

    model_dir = ctx.out_dir / "model"
    # export_hf takes only the tokenizer files (and one chat template) of the base's directory.
    export_hf(result.state_dict, result.args, source.model_dir, model_dir,
              dtype="float32" if spec.precision == "fp32" else "bfloat16")
    model_path = str(model_dir.relative_to(ctx.root)) if model_dir.is_relative_to(ctx.root) else str(model_dir)
    perplexity = {"valPerplexity": math.exp(result.val_loss)} if result.val_loss is not None else {}
    ctx.reporter.progress(modelPath=model_path, valLoss=result.val_loss, lastCheckpoint=result.last_checkpoint,
                          eval=perplexity)
    write_manifest(ctx.out_dir, {
        "kind": "TrainingRun", "name": ctx.resource.name, "objective": "sft",
        "steps": result.steps, "tokens": result.tokens, "parameters": result.parameters,
        "loss": result.loss, "valLoss": result.val_loss, **perplexity, "examples": source.examples,
        "heldOutExamples": len(source.val_rows), "model": "model", "lastCheckpoint": result.last_checkpoint,
        "base": source.base,
    }, ctx.spec_hash)
