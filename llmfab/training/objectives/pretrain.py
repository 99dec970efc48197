"""``objective: pretrain``: next-token prediction on a Dataset's token windows.

    Dataset (shards + tokenizer, checked) -> windows of contextLength + 1 tokens -> the loop
    export model/ with the Dataset's tokenizer (pruned first where spec.pruning asks) -> manifest last

The distill objective is this one with a teacher (``distill.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from llmfab.api.training_run import TrainingRunSpec
from llmfab.cards import CardFacts
from llmfab.cards import stage as model_card
from llmfab.cards.facts import dataset_facts
from llmfab.data.shards import DatasetInfo
from llmfab.errors import StageNotSupported, WorkloadError
from llmfab.store import MANIFEST, write_manifest
from llmfab.training.loop.launcher import train_or_launch
from llmfab.training.loop.objective import Objective, Sampler, TrainResult
from llmfab.workload import WorkloadContext

if TYPE_CHECKING:
    import torch


def refuse_unsupported(spec: TrainingRunSpec) -> None:
    if spec.init_from is not None:
        raise StageNotSupported(
            f"spec.initFrom: starting objective {spec.objective} from another model's weights is not "
            "implemented yet; remove spec.initFrom (objectives sft and rl use it)"
        )


def run(ctx: WorkloadContext, spec: TrainingRunSpec) -> None:
    train_or_launch(ctx, spec, prepare(ctx, spec))


def prepare(ctx: WorkloadContext, spec: TrainingRunSpec) -> Pretrain:
    """The objective, after every input check that can fail before training: the Dataset, and a
    pruned size that cannot be built (it fails now, not after training)."""
    model_card.release(spec.release, None, None)  # a licence nobody stated fails now, not after training
    dataset_dir = ctx.dependency("Dataset", spec.dataset_name)
    data = check_dataset(dataset_dir, spec)
    if spec.pruning.enabled:
        from llmfab.compress.post_training_pruning import check_pruning

        check_pruning(spec, data.vocab_size)
    return Pretrain(data, dataset_dir)


class Pretrain(Objective):
    def __init__(self, data: DatasetInfo, dataset_dir: Path) -> None:
        self.data, self.dataset_dir, self.vocab_size = data, dataset_dir, data.vocab_size

    def sampler(self, context: int, seed: int) -> Sampler:
        from llmfab.data.token_windows import WindowSampler

        return WindowSampler(self.data.split("train"), context, seed)

    def val_batches(self, micro_batch: int, context: int, batches: int, rank: int, world: int) -> list[torch.Tensor]:
        from llmfab.data.token_windows import validation_batches

        return validation_batches(self.data.split("val"), context, micro_batch, batches, rank, world)

    def test_batches(self, micro_batch: int, context: int, batches: int, rank: int,
                     world: int) -> list[torch.Tensor] | None:
        if "test" not in self.data.manifest.get("splits", {}):
            return None
        from llmfab.data.token_windows import validation_batches

        return validation_batches(self.data.split("test"), context, micro_batch, batches, rank, world)

    def publish(self, ctx: WorkloadContext, spec: TrainingRunSpec, result: TrainResult) -> None:
        publish(ctx, spec, result, self.dataset_dir)


def check_dataset(dataset_dir: Path, spec: TrainingRunSpec) -> DatasetInfo:
    """The Dataset's shards are readable and its vocabulary agrees with its tokenizers."""
    from llmfab.data.shards import DataFormatError

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


def card_facts(ctx: WorkloadContext, spec: TrainingRunSpec, result: TrainResult, dataset_dir: Path,
               perplexity: dict[str, float | None]) -> CardFacts:
    """The model card's facts: this run on its Dataset; a distilled run names its teacher, a pruned
    one what pruning cost (both as its status has them)."""
    status = ctx.reporter.current()
    details = {k: status[k] for k in ("distill", "pruning") if isinstance(status.get(k), dict)}
    teacher = [ctx.root / "runs" / spec.distill.teacher / "model"] if spec.distill is not None else []
    return model_card.facts(
        ctx, spec.release, "distill" if spec.objective == "distill" else "pretrain", steps=result.steps,
        tokens=result.tokens, precision=spec.precision, world_size=spec.parallelism.nodes * spec.parallelism.processes_per_node,
        data=[dataset_facts(dataset_dir, "pretraining text")],
        figures={f"eval.{k}": v for k, v in perplexity.items() if v is not None},
        related=teacher, details=details, dataset=spec.dataset_name)


def publish(ctx: WorkloadContext, spec: TrainingRunSpec, result: TrainResult, dataset_dir: Path) -> None:
    """Export ``model/`` in Hugging Face format, report the final numbers, then the manifest."""
    from llmfab.model.hf import export_hf

    model_dir = ctx.out_dir / "model"
    assert result.state_dict is not None  # publish runs on rank 0, which holds the full weights
    state, args = result.state_dict, result.args
    if spec.pruning.enabled:  # the export is the pruned (and recovered) model: compress/post_training_pruning.py
        from llmfab.compress.post_training_pruning import prune_trained

        state, args, pruned = prune_trained(state, args, spec, DatasetInfo.load(dataset_dir))
        ctx.reporter.progress(pruning=pruned)
    perplexity = {
        "valPerplexity": math.exp(result.val_loss) if result.val_loss is not None else None,
        "testPerplexity": math.exp(result.test_loss) if result.test_loss is not None else None,
    }
    export_hf(state, args, dataset_dir / "tokenizer", model_dir,
              dtype="float32" if spec.precision == "fp32" else "bfloat16",
              card=card_facts(ctx, spec, result, dataset_dir, perplexity))
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
