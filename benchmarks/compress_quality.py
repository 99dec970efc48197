"""Perplexity vs parameters of the ways llmfab makes a model smaller, in one run on the quickstart corpus.

Rows, all scored on the same validation windows of the same Dataset:

  (a) teacher            the full model, pretrained ``--steps`` steps
  (b) student, scratch   the smaller shape pretrained from scratch on the same tokens (the peer baseline)
  (c) student, distill   the same shape, ``objective: distill`` from (a) on the same tokens
  (d) width-pruned       (a) with half its heads and the MLP cut to about (b)'s size (``structure: width``,
                         activation importance, ``targetParameters`` = (b)'s parameters), no recovery
  (e) ... + recovery     (d) after ``--recovery-steps`` steps of distillation from (a)
  (f) mlp-pruned, activation / (g) mlp-pruned, magnitude: MLP channels only, to the same size, each
      without and with the recovery (the magnitude criterion is the one-line peer of the activation one)

(a)-(c) run through ``llmfab train run`` (the workload); (d)-(g) call the pruning path the workload
calls after training (``post_training_pruning.prune_trained``) on (a)'s export. The pruned rows
inherit (a)'s training: their token count is (a)'s plus the recovery's.

    .venv/bin/python benchmarks/compress_quality.py                  # ~ a few CPU minutes
    .venv/bin/python benchmarks/compress_quality.py --steps 400 --recovery-steps 100 --home /tmp/compress
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from llmfab.api.training_run import PruningSpec, TrainingRunSpec  # noqa: E402
from llmfab.compress.post_training_pruning import parameters, prune_trained, validation_loss  # noqa: E402
from llmfab.data.shards import DatasetInfo  # noqa: E402
from llmfab.data.token_windows import validation_batches  # noqa: E402
from llmfab.model.hf import load_hf  # noqa: E402
from llmfab.workload import run_stage  # noqa: E402

CONTEXT = 128
TEACHER = {"layers": 4, "hidden": 128, "heads": 4, "intermediate": 384, "contextLength": CONTEXT}
STUDENT = {**TEACHER, "intermediate": 128}
TOKENS_PER_STEP = 2048


def write(path: Path, kind: str, name: str, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": kind,
                                    "metadata": {"name": name}, "spec": spec}))
    return path


def training_spec(model: dict[str, Any], steps: int, **extra: Any) -> dict[str, Any]:
    return {
        "dataset": {"name": "books"}, "release": {"license": "apache-2.0"}, "model": model, "maxSteps": steps,
        "seed": 0, "precision": "fp32",
        "batch": {"globalTokens": TOKENS_PER_STEP}, "optimizer": {"lr": 2e-3, "warmupSteps": 10},
        "checkpoint": {"everySteps": steps}, "evalEverySteps": steps, "evalBatches": 2,
        "monitoring": {"prometheusPort": None, "tensorboard": False, "logEverySteps": 50}, **extra,
    }


def train(home: Path, name: str, spec: dict[str, Any]) -> float:
    start = time.perf_counter()
    if run_stage("train", write(home / f"{name}.yaml", "TrainingRun", name, spec)) != 0:
        raise SystemExit(f"training {name} failed: see {home}/runs/{name}.status.json")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="pretraining steps of teacher and students")
    parser.add_argument("--recovery-steps", type=int, default=40)
    parser.add_argument("--eval-batches", type=int, default=8, help="validation batches of 8 × 128 tokens")
    parser.add_argument("--home", type=Path, default=None, help="artifact root to reuse (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=2)
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    home = a.home or Path(tempfile.mkdtemp(prefix="llmfab-compress-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["LLMFAB_HOME"] = str(home)
    dataset = {"sources": [{"name": "quickstart", "path": str(REPO / "examples" / "data" / "*.txt"),
                            "documentPer": "paragraph", "paragraphsPerDocument": 8}],
               "tokenizer": {"type": "unigram", "vocabSize": 2048},
               "split": {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0}}
    if run_stage("data", write(home / "books.yaml", "Dataset", "books", dataset)) != 0:
        raise SystemExit("the Dataset stage failed")
    seconds = {"teacher": train(home, "teacher", training_spec(TEACHER, a.steps))}
    seconds["scratch"] = train(home, "student-scratch", training_spec(STUDENT, a.steps))
    seconds["distill"] = train(home, "student-distill", training_spec(
        STUDENT, a.steps, objective="distill", distill={"teacher": "teacher", "temperature": 1.0, "alpha": 0.5}))

    data = DatasetInfo.load(home / "datasets" / "books")
    batches = validation_batches(data.split("val"), CONTEXT, 8, a.eval_batches, 0, 1)
    tokens = a.steps * TOKENS_PER_STEP
    rows: list[tuple[str, int, int, float]] = []
    teacher, teacher_args = load_hf(home / "runs" / "teacher" / "model")
    base = TrainingRunSpec.model_validate(training_spec(TEACHER, a.steps) | {"evalBatches": a.eval_batches})
    for label, run in (("(a) teacher", "teacher"), ("(b) student, scratch", "student-scratch"),
                       ("(c) student, distill", "student-distill")):
        model, args = load_hf(home / "runs" / run / "model")
        rows.append((label, parameters(args), tokens, math.exp(validation_loss(model.state_dict(), args, batches, base))))
    target = rows[1][1]
    state = teacher.state_dict()
    variants = [("(d/e) width-pruned, activation", {"structure": "width", "heads": 2}),
                ("(f) mlp-pruned, activation", {"structure": "mlp"}),
                ("(g) mlp-pruned, magnitude", {"structure": "mlp", "method": "magnitude"})]
    for label, pruning in variants:
        start = time.perf_counter()
        spec = base.model_copy(update={"pruning": PruningSpec.model_validate(
            {"enabled": True, "targetParameters": target, "recoverySteps": a.recovery_steps, **pruning})})
        _, args, report = prune_trained(state, teacher_args, spec, data)
        seconds[label] = time.perf_counter() - start
        shape = f"heads {args.heads}, intermediate {args.intermediate}"
        rows.append((f"{label} ({shape})", report["parametersAfter"], tokens, report["valPerplexityPruned"]))
        rows.append((f"{label} + {a.recovery_steps} recovery steps", report["parametersAfter"],
                     tokens + a.recovery_steps * TOKENS_PER_STEP, report["valPerplexityAfter"]))

    load = os.getloadavg()
    print(f"\n{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}  torch {torch.__version__}, {a.threads} threads")
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print(next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?"))
    print(f"teacher {TEACHER}; student {STUDENT}; {a.steps} steps × {TOKENS_PER_STEP} tokens; val: {a.eval_batches} × 8 × {CONTEXT}")
    print("\n| model | parameters | training tokens | val perplexity |\n|---|---:|---:|---:|")
    for label, params, seen, ppl in rows:
        print(f"| {label} | {params:,} | {seen:,} | {ppl:.2f} |")
    scratch = rows[1][3]
    print("\nval perplexity / scratch student's (lower is better):")
    for label, _, _, ppl in rows[2:]:
        print(f"  {label}: {ppl / scratch:.3f}")
    print("seconds:", {k: round(v, 1) for k, v in seconds.items()})


if __name__ == "__main__":
    main()
