"""objective distill: the chunked loss equals torch's reference, a student learns its teacher, bad teachers are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmfab.data.shards import DatasetInfo
from llmfab.data.token_windows import validation_batches
from llmfab.model.hf import load_hf
from llmfab.training.objectives.distill import distillation_loss
from llmfab.workload import run_stage

from .conftest import read_metrics

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

TEACHER = {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32}
STUDENT = {"layers": 1, "hidden": 32, "heads": 2, "contextLength": 32}


def _status(home: Path, name: str) -> dict:
    return json.loads((home / "runs" / f"{name}.status.json").read_text())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_distillation_loss_equals_torch_kl_div_and_cross_entropy_in_value_and_gradient(smoothing: float) -> None:
    torch.manual_seed(0)
    n, h, ht, vocab, temperature, alpha = 37, 16, 24, 50, 2.5, 0.3
    hidden = torch.randn(n, h, dtype=torch.float64).float().requires_grad_()
    weight = (torch.randn(vocab, h) * 0.5).requires_grad_()
    teacher_hidden, teacher_weight = torch.randn(n, ht), torch.randn(vocab, ht) * 0.5
    targets = torch.randint(0, vocab, (n,))
    targets[[3, 10, 11]] = -100

    loss, soft = distillation_loss(hidden, weight, teacher_hidden, teacher_weight, targets, temperature, alpha,
                                   smoothing, chunk_tokens=8)
    loss.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    valid = targets != -100
    logits, teacher_logits = hidden @ weight.t(), teacher_hidden @ teacher_weight.t()
    reference_kl = temperature**2 * F.kl_div(F.log_softmax(logits[valid] / temperature, -1),
                                             F.log_softmax(teacher_logits[valid] / temperature, -1),
                                             log_target=True, reduction="batchmean")
    reference = alpha * reference_kl + (1 - alpha) * F.cross_entropy(logits, targets, label_smoothing=smoothing)
    reference.backward()
    assert soft.item() == pytest.approx(reference_kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # the evaluation path computes the same numbers without the gradients
        no_grad = distillation_loss(hidden, weight, teacher_hidden, teacher_weight, targets, temperature, alpha,
                                    smoothing, chunk_tokens=5)
    assert no_grad[0].item() == pytest.approx(loss.item(), rel=1e-5)


def _kl_to_teacher(student_dir: Path, teacher_dir: Path, dataset_dir: Path) -> float:
    """Mean KL(teacher ‖ student) per token (T = 1) on 4 validation batches."""
    student, _ = load_hf(student_dir)
    teacher, _ = load_hf(teacher_dir)
    batches = validation_batches(DatasetInfo.load(dataset_dir).split("val"), 32, 8, 4, 0, 1)
    with torch.no_grad():
        kls = [distillation_loss(student(b[:, :-1]), student.output.weight, teacher(b[:, :-1]),
                                 teacher.output.weight, b[:, 1:], 1.0, 1.0)[1] for b in batches]
    return float(torch.stack(kls).mean())


def test_a_student_distilled_from_a_teacher_is_closer_to_it_than_one_trained_alone(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    assert run_stage("train", write_spec("teacher", model=TEACHER, maxSteps=40)) == 0
    distill = {"teacher": "teacher", "temperature": 1.0, "alpha": 0.7}
    spec = write_spec("student", model=STUDENT, maxSteps=30, objective="distill", distill=distill)
    # The CLI, as a pod or `llmfab up` runs it.
    env = {**os.environ, "LLMFAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "llmfab", "train", "run", "--spec", str(spec)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert run_stage("train", write_spec("alone", model=STUDENT, maxSteps=30)) == 0

    metrics = read_metrics(home / "runs" / "student")
    assert metrics[30]["distill_loss"] < 0.5 * metrics[1]["distill_loss"]
    assert metrics[30]["teacher_val_loss"] == metrics[1]["teacher_val_loss"]
    status = _status(home, "student")
    assert status["phase"] == "Succeeded"
    d = status["distill"]
    teacher_status = _status(home, "teacher")
    assert d["teacherValLoss"] == pytest.approx(teacher_status["valLoss"], rel=1e-4)
    assert d["studentValLoss"] == pytest.approx(status["valLoss"])
    assert 1 < d["teacherValPerplexity"] < d["studentValPerplexity"] < 300
    assert d["studentParameters"] == status["parameters"] < d["teacherParameters"] == teacher_status["parameters"]
    assert d["parameterRatio"] == pytest.approx(d["studentParameters"] / d["teacherParameters"])
    assert d["distillLoss"] == pytest.approx(metrics[30]["distill_loss"])

    runs, dataset = home / "runs", home / "datasets" / "tiny"
    distilled = _kl_to_teacher(runs / "student" / "model", runs / "teacher" / "model", dataset)
    alone = _kl_to_teacher(runs / "alone" / "model", runs / "teacher" / "model", dataset)
    # Measured 0.300 vs 0.323 (seed 1, CPU). The students' validation losses are within 1% of each
    # other either way round at this size, so the KL, what distillation optimises, is the assertion.
    assert distilled < 0.95 * alone, (distilled, alone)
    from huggingface_hub import ModelCard

    card = ModelCard.load(runs / "student" / "model" / "README.md").text  # the card says what it came from
    assert "distilled from a teacher" in card and "Also used: TrainingRun `teacher` (pretrain" in card
    assert f"student val perplexity {d['studentValPerplexity']:,.4g} against the teacher's {d['teacherValPerplexity']:,.4g}" in card


def _fake_teacher(home: Path, vocab_size: int, context: int = 32) -> None:
    model = home / "runs" / "teacher" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"vocab_size": vocab_size, "max_position_embeddings": context}))
    (home / "runs" / "teacher" / "manifest.json").write_text(json.dumps({"kind": "TrainingRun", "name": "teacher"}))


def test_a_teacher_with_another_vocabulary_is_refused_naming_the_field(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    _fake_teacher(home, vocab_size=512)
    spec = write_spec("student", model=STUDENT, objective="distill", distill={"teacher": "teacher"})
    assert run_stage("train", spec) == 1
    message = _status(home, "student")["message"]
    assert "spec.distill.teacher: TrainingRun/teacher has vocabulary size 512 but Dataset/tiny has 300" in message


def test_a_teacher_with_a_shorter_context_is_refused_naming_the_field(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    _fake_teacher(home, vocab_size=300, context=16)
    spec = write_spec("student", model=STUDENT, objective="distill", distill={"teacher": "teacher"})
    assert run_stage("train", spec) == 1
    assert "spec.model.contextLength: 32 is longer than the context of the teacher" in _status(home, "student")["message"]


def test_a_missing_teacher_waits_for_it(home: Path, write_spec: Callable[..., Path]) -> None:
    spec = write_spec("student", model=STUDENT, objective="distill", distill={"teacher": "teacher"})
    assert run_stage("train", spec) == 3
    assert "waiting for TrainingRun/teacher" in _status(home, "student")["message"]


def _random_teacher(home: Path) -> None:
    """An exported (untrained) teacher: enough for checks that do not need a good one."""
    from llmfab.api.training_run import ModelSpec
    from llmfab.model.from_spec import model_args_from_spec
    from llmfab.model.hf import export_hf
    from llmfab.model.transformer import Transformer

    torch.manual_seed(7)
    args = model_args_from_spec(ModelSpec.model_validate(TEACHER), 300)
    export_hf(Transformer(args), args, home / "datasets" / "tiny" / "tokenizer", home / "runs" / "teacher" / "model",
              dtype="float32")
    (home / "runs" / "teacher" / "manifest.json").write_text(json.dumps({"kind": "TrainingRun", "name": "teacher"}))


def test_two_process_fsdp_distillation_computes_the_loss_of_one_process(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    _random_teacher(home)
    distill = {"teacher": "teacher", "temperature": 2.0, "alpha": 0.5}
    assert run_stage("train", write_spec("one", model=STUDENT, maxSteps=4, objective="distill", distill=distill)) == 0
    spec = write_spec("two", model=STUDENT, maxSteps=4, objective="distill", distill=distill,
                      parallelism={"processesPerNode": 2})
    env = {**os.environ, "LLMFAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "llmfab.training.launch", "--spec", str(spec)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    one, two = read_metrics(home / "runs" / "one"), read_metrics(home / "runs" / "two")
    assert two[1]["distill_loss"] == pytest.approx(one[1]["distill_loss"], rel=1e-4)
    assert two[1]["loss"] == pytest.approx(one[1]["loss"], rel=1e-4)
    assert _status(home, "two")["distill"]["teacherValLoss"] == pytest.approx(
        _status(home, "one")["distill"]["teacherValLoss"], rel=1e-4)
