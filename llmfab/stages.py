"""What a resource runs and how: the orchestration rules ``llmfab up`` and the operator share.

Each rule is written once here and read by both the local runner (``llmfab/local/runner.py``) and
the operator's builders and handlers, so the cluster path and the local path cannot disagree on:

- which stages a kind runs, in which order (:func:`stages_for`);
- whether a stage's failure fails the resource (:func:`owns_phase`);
- the workload command of a stage (:func:`stage_command`: ``llmfab <stage> run --spec FILE``);
- where the one-resource spec file lives and how it is written (:func:`spec_file_path`,
  :func:`write_spec_file`, atomically).

Nothing here imports torch, rich or kopf.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmfab.api import KINDS
from llmfab.api.common import Resource
from llmfab.api.inference_service import InferenceService
from llmfab.api.loading import dump_resource
from llmfab.api.training_run import TrainingRun
from llmfab.store import write_text_atomic


@dataclass(frozen=True)
class Stage:
    """One workload entrypoint: ``llmfab <name> run --spec FILE``."""

    name: str
    module: str  # implements ``run(ctx)``
    kinds: tuple[str, ...]  # the kinds it accepts
    summary: str  # the CLI's help line


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("data", "llmfab.data.workload", ("Dataset",), "Dataset workload: collect, clean, dedup, filter, tokenize, split."),
        Stage("train", "llmfab.training.workload", ("TrainingRun",), "TrainingRun workload (re-launches itself under torchrun for several processes)."),
        Stage("reward", "llmfab.training.objectives.reward.objective", ("RewardModel",), "RewardModel workload: train on preference pairs."),
        Stage("eval", "llmfab.eval.workload", ("TrainingRun", "InferenceService"), "Evaluation: perplexity, BLEU/ROUGE, bias probes, report.html."),
        Stage("quantize", "llmfab.compress.quantize_workload", ("InferenceService",), "4-bit weight-only quantization (compressed-tensors)."),
        Stage("serve", "llmfab.serving.workload", ("InferenceService",), "Serve with vLLM's OpenAI server."),
    )
}

SPEC_SUFFIX = ".spec.yaml"


def stages_for(res: Resource) -> list[str]:
    """The workload stages that make up one resource, in order; its own stage (``res.STAGE``) is
    the one that produces its artifact, the others (eval, quantize) run around it."""
    if isinstance(res, TrainingRun):
        return ["train", *(["eval"] if res.spec.eval.enabled else [])]
    if isinstance(res, InferenceService):
        quantize = ["quantize"] if res.spec.quantization.method != "none" else []
        return [*quantize, *(["eval"] if res.spec.eval.enabled else []), "serve"]
    return [res.STAGE]


def is_primary(stage: str, kind: str) -> bool:
    """Whether ``stage`` produces the artifact of a resource of ``kind``."""
    return KINDS[kind].STAGE == stage


def owns_phase(stage: str, kind: str) -> bool:
    """Whether the stage moves the resource's phase, so that its failure fails the resource.

    A resource's own stage always does. Around it, an InferenceService's quantize/eval do too (a
    service that cannot quantize cannot serve), while a TrainingRun's failed evaluation only posts
    a warning event: its trained model stays usable by the resources that reference it.
    """
    return is_primary(stage, kind) or kind == InferenceService.KIND


def stage_available(stage: str) -> bool:
    """Whether this installation has the stage's code (an image may ship only some stages)."""
    return importlib.util.find_spec(STAGES[stage].module) is not None


def stage_command(stage: str, spec_file: Path | str, force: bool = False, python: str = "python") -> list[str]:
    """The workload command, the same in a pod and under ``llmfab up``."""
    return [python, "-m", "llmfab", stage, "run", "--spec", str(spec_file), *(["--force"] if force else [])]


def spec_file_path(kind_dir: str, name: str, root: Path) -> Path:
    """``<root>/<kind dir>/<name>.spec.yaml``: the one-resource YAML a workload reads."""
    return root / kind_dir / f"{name}{SPEC_SUFFIX}"


def render_spec(res: Resource) -> str:
    """The YAML of one resource as a workload reads it (explicit nulls kept: ``prometheusPort:
    null`` means off, not the default)."""
    return yaml.safe_dump(dump_resource(res), sort_keys=False, allow_unicode=True)


def write_spec_file(res: Resource, path: Path) -> Path:
    """Write :func:`render_spec` to ``path`` atomically (what the operator puts in a ConfigMap)."""
    write_text_atomic(path, render_spec(res))
    return path
