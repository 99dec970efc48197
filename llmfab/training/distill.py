"""Knowledge distillation (``objective: distill``): the model of ``spec.distill.teacher`` teaches the student.

    loss = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(z_s, targets)

(Hinton et al., 2015, "Distilling the Knowledge in a Neural Network": forward KL on
temperature-softened logits; T² keeps the soft term's gradient scale independent of T), averaged
over target tokens. As in ``losses.chunked_cross_entropy``, both output heads are projected
``chunk_tokens`` rows at a time and the student's gradients are computed while a chunk's logits
are alive: the extra memory is a few ``chunk_tokens × V`` fp32 buffers, never the full logits of
either model.

The teacher is its run's Hugging Face export (``runs/<teacher>/model``) rebuilt as a llmfab
Transformer in eval mode without gradients, in bf16 where the run computes in bf16
(``distributed.uses_bf16``), else fp32. It is replicated on every rank and kept out of the module
tree, so FSDP does not shard it and checkpoints hold only the student.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from llmfab.api.training_run import TrainingRunSpec
from llmfab.errors import WorkloadError
from llmfab.status import StatusReporter
from llmfab.training import distributed as D
from llmfab.training import losses
from llmfab.training.model import Transformer
from llmfab.training.trainer import LanguageModelLoss


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
    from llmfab.training.export import load_hf

    teacher, _ = load_hf(teacher_model_dir(run_dir, spec))
    dtype = torch.bfloat16 if D.uses_bf16(spec, env) else torch.float32
    teacher.to(device=env.device, dtype=dtype).eval()
    teacher.requires_grad_(False)
    return teacher


def _chunk(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor,
           temperature: float, alpha: float, smoothing: float,
           with_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One chunk (fp32 logits [n, V]): summed loss, summed T²·KL, and d(summed loss)/d logits."""
    ce, lse = losses._chunk_losses(logits, targets, valid, smoothing)
    log_student = torch.log_softmax(logits / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher_logits / temperature, dim=-1)
    teacher_probs = log_teacher.exp()
    kl_rows = (teacher_probs * (log_teacher - log_student)).sum(dim=-1)
    soft = temperature * temperature * torch.where(valid, kl_rows, 0.0).sum()
    loss = alpha * soft + (1.0 - alpha) * ce
    if not with_grad:
        return loss, soft, None
    # CE: softmax − ((1 − ε)·onehot + ε/V); T²·KL: T·(softmax(z_s/T) − softmax(z_t/T)).
    grad = (1.0 - alpha) * (logits - lse.unsqueeze(1)).exp()
    grad.scatter_add_(1, targets.clamp_min(0).unsqueeze(1),
                      torch.full((targets.shape[0], 1), (1.0 - alpha) * (smoothing - 1.0), device=grad.device))
    if smoothing:
        grad.sub_((1.0 - alpha) * smoothing / logits.shape[1])
    grad.add_(alpha * temperature * (log_student.exp() - teacher_probs))
    return loss, soft, grad


class _LinearDistillation(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, teacher_hidden: torch.Tensor,
                teacher_weight: torch.Tensor, targets: torch.Tensor, temperature: float, alpha: float,
                smoothing: float, chunk_tokens: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = losses._matmul_dtype(hidden)
        w = weight.to(dtype)
        tw = teacher_weight.to(teacher_hidden.dtype)
        valid_all = targets != ignore_index
        inv_count = 1.0 / valid_all.sum().clamp_min(1).float()
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        soft_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            h = hidden[rows].to(dtype)
            logits = torch.mm(h, w.t()).float()
            teacher_logits = torch.mm(teacher_hidden[rows], tw.t()).float()
            loss, soft, g = _chunk(logits, teacher_logits, targets[rows], valid_all[rows],
                                   temperature, alpha, smoothing, with_grad=True)
            total += loss
            soft_total += soft
            assert g is not None
            row_scale = torch.where(valid_all[rows], inv_count, 0.0).unsqueeze(1)
            g = g.to(dtype)
            grad_hidden[rows] = torch.mm(g, w) * row_scale
            grad_weight.add_(torch.mm(g.t(), (h * row_scale).to(dtype)).float())
        ctx.grads = (grad_hidden, grad_weight.to(weight.dtype))
        soft_mean = soft_total * inv_count
        ctx.mark_non_differentiable(soft_mean)
        return total * inv_count, soft_mean

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, _grad_soft: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.grads
        del ctx.grads
        return grad_hidden * grad_out, grad_weight * grad_out, *([None] * 8)


def distillation_loss(hidden: torch.Tensor, head_weight: torch.Tensor, teacher_hidden: torch.Tensor,
                      teacher_head_weight: torch.Tensor, targets: torch.Tensor, temperature: float = 2.0,
                      alpha: float = 0.5, label_smoothing: float = 0.0, chunk_tokens: int = 4096,
                      ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(mixed loss, T²·KL term) of student ``hidden @ head_weight.T`` against the teacher's logits.

    hidden [..., H], teacher_hidden [..., H_t], head weights [V, H] and [V, H_t], targets [...].
    Gradients flow to the student's ``hidden`` and ``head_weight`` only.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    th = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    t = targets.reshape(-1)
    tw = teacher_head_weight.detach()
    if torch.is_grad_enabled() and (h.requires_grad or head_weight.requires_grad):
        loss, soft = _LinearDistillation.apply(  # type: ignore[no-untyped-call]
            h, head_weight, th, tw, t, temperature, alpha, label_smoothing, chunk_tokens, ignore_index)
        return loss, soft
    dtype = losses._matmul_dtype(h)
    valid = t != ignore_index
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    soft_total = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, h.shape[0], chunk_tokens):
        rows = slice(start, start + chunk_tokens)
        logits = torch.mm(h[rows].to(dtype), head_weight.to(dtype).t()).float()
        teacher_logits = torch.mm(th[rows], tw.to(th.dtype).t()).float()
        loss, soft, _ = _chunk(logits, teacher_logits, t[rows], valid[rows], temperature, alpha,
                               label_smoothing, with_grad=False)
        total += loss
        soft_total += soft
    count = valid.sum().clamp_min(1).float()
    return total / count, soft_total / count


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
