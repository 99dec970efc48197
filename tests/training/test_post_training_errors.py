"""Bad post-training input that the other test files do not reach: a distillation teacher whose
vocabulary has the student Dataset's size but other tokens is refused, naming ``spec.distill.teacher``
and the first token id that differs; a teacher of the same tokenizer passes the same check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llmfab.api.training_run import TrainingRunSpec
from llmfab.training.objectives.distill import check_teacher
from llmfab.workload import run_stage

STUDENT = {"layers": 1, "hidden": 32, "heads": 2, "contextLength": 32}


def _teacher(home: Path, swap: tuple[int, int] | None) -> Path:
    """runs/teacher: a complete TrainingRun whose export has the Dataset's tokenizer.json, with the
    tokens of ids ``swap`` exchanged (same size, another vocabulary). No weights: the check reads none."""
    run = home / "runs" / "teacher"
    model = run / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"vocab_size": 300, "max_position_embeddings": 32}))
    tokenizer = json.loads((home / "datasets" / "tiny" / "tokenizer" / "tokenizer.json").read_text())
    if swap is not None:
        vocab = tokenizer["model"]["vocab"]
        by_id = {i: t for t, i in vocab.items()}
        a, b = swap
        vocab[by_id[a]], vocab[by_id[b]] = b, a
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    (run / "manifest.json").write_text(json.dumps({"kind": "TrainingRun", "name": "teacher"}))
    return run


def test_a_teacher_with_the_same_vocabulary_size_but_other_tokens_is_refused(
    home: Path, write_spec: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _teacher(home, swap=(40, 41))
    by_id = {i: t for t, i in json.loads(
        (home / "datasets" / "tiny" / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"].items()}
    spec = write_spec("student", model=STUDENT, objective="distill", distill={"teacher": "teacher"})
    assert run_stage("train", spec) == 1
    err = capsys.readouterr().err
    assert (f"spec.distill.teacher: TrainingRun/teacher has vocabulary size 300 like Dataset/tiny, but another "
            f"vocabulary (token id 40 is {by_id[41]!r} in the teacher's tokenizer.json and {by_id[40]!r} in the "
            "Dataset's)") in err
    assert "Traceback" not in err and not (home / "runs" / "student" / "manifest.json").exists()


def test_a_teacher_of_the_students_tokenizer_passes_the_vocabulary_check(
    home: Path, write_spec: Callable[..., Path]
) -> None:
    teacher = _teacher(home, swap=None)
    spec = TrainingRunSpec.model_validate(yaml.safe_load(
        write_spec("student", model=STUDENT, objective="distill", distill={"teacher": "teacher"}).read_text())["spec"])
    check_teacher(teacher, spec, 300)  # raises on any mismatch
