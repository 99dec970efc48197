"""Knowledge distillation (``objective: distill``): the model of ``spec.distill.teacher`` teaches the student.

Pretraining on the same Dataset (``pretrain.Pretrain``) with another loss module: the student's
logits are pulled towards the teacher's temperature-softened ones as well as the targets
(``llmfab.model.distillation_loss``: α · T² · KL + (1 − α) · CE, fused with both output heads).
Before the first step the teacher's validation loss is measured; status reports both models'
validation perplexity and their size ratio.

The teacher is its run's Hugging Face export (``runs/<teacher>/model``) rebuilt as a llmfab
Transformer in eval mode without gradients, in bf16 where the run computes in bf16
(``distributed.uses_bf16``), else fp32. It is replicated on every rank and kept out of the module
tree, so FSDP does not shard it and checkpoints hold only the student.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from llmfab.api.training_run import TrainingRunSpec
from llmfab.errors import WorkloadError
from llmfab.model import losses
from llmfab.model.distillation_loss import distillation_loss
from llmfab.model.transformer import Transformer
from llmfab.status import StatusReporter
from llmfab.training.components import distributed as D
from llmfab.training.loop.launcher import train_or_launch
from llmfab.training.loop.loss_module import LanguageModelLoss
from llmfab.training.objectives import pretrain
from llmfab.workload import WorkloadContext


def refuse_unsupported(spec: TrainingRunSpec) -> None:
    pretrain.refuse_unsupported(spec)  # the API requires spec.distill


def run(ctx: WorkloadContext, spec: TrainingRunSpec) -> None:
    """Pretraining's checks, then the teacher's: a teacher the student cannot learn from fails now."""
    base = pretrain.prepare(ctx, spec)
    assert spec.distill is not None
    check_teacher(ctx.dependency("TrainingRun", spec.distill.teacher), spec, base.vocab_size)
    train_or_launch(ctx, spec, Distill(base, ctx.out_dir))


class Distill(pretrain.Pretrain):
    """Pretraining's data, tests and export; the teacher in the loss, and its numbers in status."""

    def __init__(self, base: pretrain.Pretrain, run_dir: Path) -> None:
        super().__init__(base.data, base.dataset_dir)
        self.run_dir = run_dir

    def loss_module(self, model: Transformer, spec: TrainingRunSpec, env: D.DistEnv) -> LanguageModelLoss:
        return DistillationLoss(model, load_teacher(spec, self.run_dir, env), spec)

    def on_start(self, module: LanguageModelLoss, val_batches: list[torch.Tensor], spec: TrainingRunSpec,
                 env: D.DistEnv, reporter: StatusReporter, parameters: int) -> None:
        report_start(module, val_batches, spec, env, reporter, parameters)

    def step_metrics(self, module: LanguageModelLoss, env: D.DistEnv) -> dict[str, float]:
        return step_metrics(module, env)

    def on_end(self, module: LanguageModelLoss, val_loss: float, reporter: StatusReporter, parameters: int) -> None:
        report_final(module, val_loss, reporter, parameters)


def teacher_model_dir(run_dir: Path, spec: TrainingRunSpec) -> Path:
    """``runs/<teacher>/model``: the teacher is a sibling of this run in the artifact layout."""
    assert spec.distill is not None
    return run_dir.parent / spec.distill.teacher / "model"


def check_teacher(teacher_dir: Path, spec: TrainingRunSpec, vocab_size: int) -> None:
    """Refuse a teacher the student cannot learn from: another vocabulary, or a shorter context."""
    assert spec.distill is not None
    name = f"TrainingRun/{spec.distill.teacher}"
    config_file = teacher_dir / "model" / "config.json"
    if not config_file.is_file():
        raise WorkloadError(f"spec.distill.teacher: {name} has no exported model ({config_file} is missing); "
                            "train it to completion first")
    config = json.loads(config_file.read_text())
    if config.get("vocab_size") != vocab_size:
        raise WorkloadError(
            f"spec.distill.teacher: {name} has vocabulary size {config.get('vocab_size')} but "
            f"Dataset/{spec.dataset_name} has {vocab_size}; a teacher must be trained on the student's "
            "Dataset (the same tokenizer): pick such a teacher or change spec.dataset.name"
        )
    # Same size is not same vocabulary: a teacher of another Dataset's tokenizer of that size would
    # put its probability for token i on another string. runs/<teacher> sits in the artifact root.
    from llmfab.data.shards import DatasetInfo

    dataset_dir = teacher_dir.parent.parent / "datasets" / spec.dataset_name
    ours = _vocabulary(DatasetInfo.load(dataset_dir).hf_tokenizer_dir / "tokenizer.json")
    theirs = _vocabulary(teacher_dir / "model" / "tokenizer.json")
    if ours is not None and theirs is not None and ours != theirs:
        i = min(i for i in set(ours) | set(theirs) if ours.get(i) != theirs.get(i))
        raise WorkloadError(
            f"spec.distill.teacher: {name} has vocabulary size {vocab_size} like Dataset/{spec.dataset_name}, but "
            f"another vocabulary (token id {i} is {theirs.get(i)!r} in the teacher's tokenizer.json and "
            f"{ours.get(i)!r} in the Dataset's); a teacher must be trained on the student's Dataset (the same "
            "tokenizer): pick such a teacher or change spec.dataset.name"
        )
    if config.get("max_position_embeddings", 0) < spec.model.context_length:
        raise WorkloadError(
            f"spec.model.contextLength: {spec.model.context_length} is longer than the context of the teacher "
            f"{name} ({config.get('max_position_embeddings')}); set it to at most that"
        )


def _vocabulary(tokenizer_json: Path) -> dict[int, str] | None:
    """id -> token of a Hugging Face ``tokenizer.json`` (model vocabulary and added tokens); None without one."""
    if not tokenizer_json.is_file():
        return None
    data = json.loads(tokenizer_json.read_text())
    vocab = data.get("model", {}).get("vocab") or {}
    pairs = enumerate(piece for piece, _ in vocab) if isinstance(vocab, list) else ((i, t) for t, i in vocab.items())
    return {**dict(pairs), **{int(t["id"]): t["content"] for t in data.get("added_tokens", [])}}


def load_teacher(spec: TrainingRunSpec, run_dir: Path, env: D.DistEnv) -> Transformer:
    from llmfab.model.hf import load_hf

    teacher, _ = load_hf(teacher_model_dir(run_dir, spec))
    dtype = torch.bfloat16 if D.uses_bf16(spec, env) else torch.float32
    teacher.to(device=env.device, dtype=dtype).eval()
    teacher.requires_grad_(False)
    return teacher


class DistillationLoss(LanguageModelLoss):
    """Student + teacher + chunked distillation loss. In eval mode it returns the student's own
    cross-entropy, so ``valLoss`` means the same as in a pretraining run."""

    def __init__(self, model: Transformer, teacher: Transformer, spec: TrainingRunSpec) -> None:
        super().__init__(model, spec.label_smoothing, spec.loss_chunk_tokens)
        assert spec.distill is not None
        self.temperature, self.alpha = spec.distill.temperature, spec.distill.alpha
        self.teacher_ref = (teacher,)  # a tuple, not a submodule: FSDP and checkpoints leave it alone
        self.soft_terms: list[torch.Tensor] = []
        self.teacher_val_loss: float | None = None
        self.last_distill_loss: float | None = None

    @property
    def teacher(self) -> Transformer:
        return self.teacher_ref[0]

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(tokens, targets)
        hidden = self.model(tokens)
        with torch.no_grad():
            teacher_hidden = self.teacher(tokens)
        loss, soft = distillation_loss(hidden, self.model.output.weight, teacher_hidden, self.teacher.output.weight,
                                       targets, self.temperature, self.alpha, self.label_smoothing,
                                       self.chunk_tokens)
        self.soft_terms.append(soft.detach())
        return loss


@torch.no_grad()
def teacher_loss(module: DistillationLoss, batches: list[torch.Tensor], spec: TrainingRunSpec,
                 env: D.DistEnv) -> float:
    """The teacher's cross-entropy on the student's validation batches."""
    total = 0.0
    for batch in batches:
        batch = batch.to(env.device, non_blocking=True)
        with D.autocast(spec, env):
            hidden = module.teacher(batch[:, :-1])
            total += float(losses.chunked_cross_entropy(hidden, module.teacher.output.weight, batch[:, 1:],
                                                        label_smoothing=spec.label_smoothing,
                                                        chunk_tokens=spec.loss_chunk_tokens))
    return D.all_reduce_mean(total / len(batches), env)


def _teacher_parameters(module: DistillationLoss) -> int:
    return module.teacher.num_parameters()


def report_start(module: LanguageModelLoss, batches: list[torch.Tensor], spec: TrainingRunSpec, env: D.DistEnv,
                 reporter: StatusReporter, student_parameters: int) -> None:
    """Before the first step: the teacher's validation loss and the size ratio, in status."""
    if not isinstance(module, DistillationLoss):
        return
    module.soft_terms.clear()  # from the micro-batch probe, not from training
    module.teacher_val_loss = teacher_loss(module, batches, spec, env)
    teacher_parameters = _teacher_parameters(module)
    reporter.progress(distill={
        "teacherValLoss": module.teacher_val_loss, "teacherValPerplexity": math.exp(module.teacher_val_loss),
        "teacherParameters": teacher_parameters, "studentParameters": student_parameters,
        "parameterRatio": student_parameters / teacher_parameters,
    })


def step_metrics(module: LanguageModelLoss, env: D.DistEnv) -> dict[str, float]:
    """``distill_loss`` (T²·KL, mean over this step's micro-batches) and ``teacher_val_loss`` for the metrics."""
    if not isinstance(module, DistillationLoss) or not module.soft_terms:
        return {}
    soft = float(torch.stack(module.soft_terms).mean())
    module.soft_terms.clear()
    module.last_distill_loss = D.all_reduce_mean(soft, env)
    out = {"distill_loss": module.last_distill_loss}
    if module.teacher_val_loss is not None:
        out["teacher_val_loss"] = module.teacher_val_loss
    return out


def report_final(module: LanguageModelLoss, val_loss: float, reporter: StatusReporter,
                 student_parameters: int) -> None:
    """Student vs teacher validation perplexity and the size ratio, in status."""
    if not isinstance(module, DistillationLoss) or module.teacher_val_loss is None:
        return
    teacher_parameters = _teacher_parameters(module)
    reporter.progress(distill={
        "distillLoss": module.last_distill_loss,
        "teacherValLoss": module.teacher_val_loss, "studentValLoss": val_loss,
        "teacherValPerplexity": math.exp(module.teacher_val_loss), "studentValPerplexity": math.exp(val_loss),
        "teacherParameters": teacher_parameters, "studentParameters": student_parameters,
        "parameterRatio": student_parameters / teacher_parameters,
    })
