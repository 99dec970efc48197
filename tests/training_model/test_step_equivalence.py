"""Speed work must not change the numbers: a fixed-seed fp32 run of the trainer's real step
(``trainer.build`` + ``trainer.train_step`` + the optimizer step, micro-batches, chunked loss,
clipping) gives the losses of the plain pre-change math in ``reference_step.py`` within 1e-5.

Both run on the machine under test from the same initial weights, so the comparison holds on AVX2
and AVX-512 CPUs alike (only float summation order differs, ~1e-7 here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmfab.api.training_run import TrainingRunSpec
from llmfab.training.components.batching import BatchSchedule
from llmfab.training.components.distributed import DistEnv
from llmfab.training.components.optim import lr_multiplier
from llmfab.training.loop import trainer
from tests.training_model.reference_step import RefTransformer, ref_optimizer, ref_step

REPO = Path(__file__).resolve().parents[2]
ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
VOCAB, CONTEXT, STEPS = 211, 32, 6

CASES = {
    "plain": {"model": {"layers": 3, "hidden": 64, "heads": 4}},
    "gqa-shared-smoothed": {"model": {"layers": 4, "hidden": 64, "heads": 4, "kvHeads": 2,
                                      "sharing": {"groups": 2}}, "labelSmoothing": 0.1},
}


def _spec(case: dict) -> TrainingRunSpec:
    model = {**case["model"], "contextLength": CONTEXT}
    return TrainingRunSpec.model_validate({
        **case, "dataset": {"name": "tiny"}, "release": {"license": "apache-2.0"}, "model": model, "precision": "fp32",
        "seed": 3,
        "lossChunkTokens": 64,  # 4 × 32 tokens per micro-batch: two chunks
        "batch": {"globalTokens": 8 * CONTEXT, "microBatchSize": 4},  # two micro-batches per step
        "optimizer": {"lr": 3e-3, "warmupSteps": 2, "gradClip": 0.5},  # clipping active from step 1
    })


def _batch(schedule: BatchSchedule, gen: torch.Generator) -> torch.Tensor:
    """Learnable: each token follows from the previous one; only the starts are random."""
    starts = torch.randint(0, VOCAB, (schedule.final, 1), generator=gen)
    return (starts + 17 * torch.arange(CONTEXT + 1)) % VOCAB


@pytest.mark.parametrize("name", list(CASES))
def test_trainer_step_losses_equal_the_pre_change_math(name: str) -> None:
    spec = _spec(CASES[name])
    parts = trainer.build(spec, VOCAB, ENV)
    ref = RefTransformer(parts.args)
    ref.load_state_dict(parts.model.state_dict())
    o = spec.optimizer
    ref_opt = ref_optimizer(ref, o.lr, (o.beta1, o.beta2), o.eps, o.weight_decay)
    schedule = BatchSchedule(spec.batch, CONTEXT, 1)
    gen = torch.Generator().manual_seed(7)
    ours, theirs = [], []
    for step in range(STEPS):
        batch = _batch(schedule, gen)
        lr = o.lr * lr_multiplier(step, STEPS, o)
        for opt in (parts.optimizer, ref_opt):
            for group in opt.param_groups:
                group["lr"] = lr
        plan = schedule.step_batch(step, 4)
        ours.append(trainer.train_step(parts, batch, plan, spec, ENV))
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        theirs.append(ref_step(ref, ref_opt, batch, 4, o.grad_clip, spec.label_smoothing))
    assert all(norm > o.grad_clip for _, norm in theirs[:2]), "the case must exercise clipping"
    assert theirs[-1][0] < theirs[0][0] - 0.05, "the case must actually train"
    for step, ((loss, norm), (ref_loss, ref_norm)) in enumerate(zip(ours, theirs, strict=True)):
        assert loss == pytest.approx(ref_loss, abs=1e-5), f"step {step}: loss"
        assert norm == pytest.approx(ref_norm, rel=1e-4), f"step {step}: grad norm"


def _eager_and_compiled_losses() -> dict[bool, list[float]]:
    losses: dict[bool, list[float]] = {}
    for compiled in (False, True):
        spec = _spec(CASES["plain"]).model_copy(update={"compile": compiled})
        parts = trainer.build(spec, VOCAB, ENV)
        assert all((block._compiled_call_impl is not None) == compiled for block in parts.model.blocks)
        schedule = BatchSchedule(spec.batch, CONTEXT, 1)
        gen = torch.Generator().manual_seed(7)
        losses[compiled] = []
        for step in range(3):
            batch = _batch(schedule, gen)
            losses[compiled].append(trainer.train_step(parts, batch, schedule.step_batch(step, 4), spec, ENV)[0])
            parts.optimizer.step()
            parts.optimizer.zero_grad(set_to_none=True)
    return losses


def test_compiled_blocks_on_cpu_give_the_same_losses(tmp_path: Path) -> None:
    """``compile: true`` is honoured on CPU (inductor's C++ kernels, the plain formulation of
    ``model/kernels.py``): the same fixed-seed steps as the eager trainer within 1e-5.

    Compiled in a fresh process with its own inductor cache, as a trainer compiles: inside the
    suite's long-lived process, after hundreds of other tests, inductor twice emitted AVX-512
    kernels but compiled them without the ISA's macro against a shared precompiled header
    (``'at::vec' has not been declared``), which it never did alone.
    """
    code = ("import json; from tests.training_model.test_step_equivalence import _eager_and_compiled_losses as f; "
            "print(json.dumps(f()))")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    losses = json.loads(done.stdout.strip().splitlines()[-1])
    assert losses["true"] == pytest.approx(losses["false"], abs=1e-5)
