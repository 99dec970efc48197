"""``objective: sft``: the TrainingRun trainer on instruction examples instead of token windows.

    initFrom (a TrainingRun's model/ or an HF model directory) -> weights, shape, tokenizer
    spec.sft.path (JSONL) -> chats -> chat template -> (ids, labels with the prompt at -100)
    the pretraining loop (``loop.trainer.train``) with this objective; the held-out examples' loss
    export model/ with the base tokenizer and its chat template; manifest last

Everything else is the pretraining run's: torchrun/FSDP2, checkpoints and resume, status, metrics.
The model's shape is the base model's (``spec.model`` may only repeat it, or set ``dropout``), and
training does not read ``spec.dataset`` (optional for sft and rl): the instructions are the data. A
given Dataset is what the evaluation stage scores the tuned model on, so its tokenizer should be the
base's (a warning event says when it is not).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmfab.api.training_run import TrainingRunSpec
from llmfab.cards import stage as model_card
from llmfab.cards.facts import file_facts
from llmfab.errors import WorkloadError
from llmfab.store import write_manifest
from llmfab.training.inputs.base_model import base_label, load_base, refuse_pruning, shape_of
from llmfab.training.loop.launcher import train_or_launch
from llmfab.training.loop.objective import Objective, Sampler, TrainResult
from llmfab.workload import WorkloadContext


def refuse_unsupported(spec: TrainingRunSpec) -> None:
    refuse_pruning(spec)


class Sft(Objective):
    """Instruction examples instead of token windows, from the base model's weights."""

    def __init__(self, vocab_size: int, initial_state: dict[str, Any], sampler: Any, val_rows: Any,
                 model_dir: Path, base: dict[str, Any], examples: int) -> None:
        self.vocab_size, self.initial_state, self.example_sampler = vocab_size, initial_state, sampler
        self.val_rows = val_rows  # [N, 2, context + 1]
        self.model_dir, self.base, self.examples = model_dir, base, examples  # base export: tokenizer, chat template
        self.files: list[Path] = []  # the instruction files read, for the model card

    def load_initial_weights(self, module: Any) -> None:
        """The base weights into the trainer's (possibly FSDP-sharded) model + loss module."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(module, {f"model.{k}": v for k, v in self.initial_state.items()},
                             options=StateDictOptions(full_state_dict=True))

    def sampler(self, context: int, seed: int) -> Sampler:
        return self.example_sampler  # type: ignore[no-any-return]

    def val_batches(self, micro_batch: int, context: int, batches: int, rank: int, world: int) -> list[Any]:
        from llmfab.training.objectives.sft.examples import held_out_batches

        return held_out_batches(self.val_rows, micro_batch, rank, world)

    def publish(self, ctx: WorkloadContext, spec: TrainingRunSpec, result: TrainResult) -> None:
        publish(ctx, spec, result, self)


def prepare(ctx: WorkloadContext, spec: TrainingRunSpec) -> tuple[TrainingRunSpec, Sft]:
    """The spec with the base's shape, and the batch source; every bad input is a WorkloadError."""

    from llmfab.training.objectives.sft.examples import (
        ExampleSampler,
        encode,
        instruction_files,
        read_chats,
        split_examples,
        to_rows,
    )

    model_dir, _, base, model, args, tokenizer = load_base(ctx, spec, "SFT")
    model_card.release(spec.release, model_dir, base_label(base))  # no licence: fail before training
    sft = spec.sft
    assert sft is not None  # API rule
    files = instruction_files(sft.path, ctx.resolve(sft.path))
    chats = read_chats(files, sft)
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
    source = Sft(
        vocab_size=args.vocab_size, initial_state=model.state_dict(),
        sampler=ExampleSampler(to_rows(train_set, context, pad), spec.seed), val_rows=to_rows(val_set, context, pad),
        model_dir=model_dir, base=base, examples=len(train_set))
    source.files = [Path(f) for f in files]
    return spec.model_copy(update={"model": shape_of(args, spec.model)}), source


def run(ctx: WorkloadContext, spec: TrainingRunSpec) -> None:
    """As pretraining: this process trains, or it starts torchrun on itself."""
    spec, objective = prepare(ctx, spec)  # in the launcher too: bad input fails before torchrun starts
    train_or_launch(ctx, spec, objective)


def publish(ctx: WorkloadContext, spec: TrainingRunSpec, result: TrainResult, source: Sft) -> None:
    """Export ``model/`` with the base tokenizer and chat template, report the final numbers, then the manifest."""
    from llmfab.model.hf import export_hf

    model_dir = ctx.out_dir / "model"
    assert result.state_dict is not None  # publish runs on rank 0, which holds the full weights
    # export_hf takes only the tokenizer files (and one chat template) of the base's directory.
    perplexity = {"valPerplexity": math.exp(result.val_loss)} if result.val_loss is not None else {}
    card = model_card.facts(
        ctx, spec.release, "sft", steps=result.steps, tokens=result.tokens, precision=spec.precision,
        world_size=spec.parallelism.nodes * spec.parallelism.processes_per_node,
        data=[file_facts(f, "SFT examples", source.examples + len(source.val_rows) if len(source.files) == 1 else None)
              for f in source.files],
        figures={f"eval.{k}": v for k, v in perplexity.items()}, parent_dir=source.model_dir,
        parent_label=base_label(source.base), dataset=spec.dataset.name if spec.dataset else None)
    export_hf(result.state_dict, result.args, source.model_dir, model_dir,
              dtype="float32" if spec.precision == "fp32" else "bfloat16", card=card)
    model_path = str(model_dir.relative_to(ctx.root)) if model_dir.is_relative_to(ctx.root) else str(model_dir)
    ctx.reporter.progress(modelPath=model_path, valLoss=result.val_loss, lastCheckpoint=result.last_checkpoint,
                          eval=perplexity)
    write_manifest(ctx.out_dir, {
        "kind": "TrainingRun", "name": ctx.resource.name, "objective": "sft",
        "steps": result.steps, "tokens": result.tokens, "parameters": result.parameters,
        "loss": result.loss, "valLoss": result.val_loss, **perplexity, "examples": source.examples,
        "heldOutExamples": len(source.val_rows), "model": "model", "lastCheckpoint": result.last_checkpoint,
        "base": source.base,
    }, ctx.spec_hash)
