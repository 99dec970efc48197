"""RewardModel: a scalar-head model trained on preference pairs (chosen vs rejected), Bradley-Terry loss."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from llmfab.api.common import (
    DELETION_POLICY_DESCRIPTION,
    DNS1123_LABEL,
    CelRule,
    DeletionPolicy,
    Resource,
    Scheduling,
    Spec,
    StatusBase,
)
from llmfab.api.pod import PodSettings, Storage
from llmfab.api.release import RELEASE_DESCRIPTION, Release
from llmfab.api.training_run import (
    BatchSpec,
    CheckpointSpec,
    MonitoringSpec,
    OptimizerSpec,
    ParallelismSpec,
)


class RewardBase(Spec):
    """The backbone the reward head sits on."""

    training_run: str = Field(pattern=DNS1123_LABEL, description="TrainingRun whose model is the backbone.")


def _one_preference_source(p: Any) -> str | None:
    given = [x for x in (p.path, p.inference_service) if x is not None]
    if len(given) != 1:
        return "spec.preferences: give exactly one of path (JSONL pairs) or inferenceService (its feedback)"
    return None


class Preferences(Spec):
    """Where preference pairs come from: JSONL files of {prompt, chosen, rejected}, or the feedback
    store of an InferenceService's human-feedback app."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="has(self.path) != has(self.inferenceService)",
            message="give exactly one of path or inferenceService",
            check=_one_preference_source,
        ),
    )

    path: str | None = Field(default=None, description="JSONL file or glob of preference pairs.")
    inference_service: str | None = Field(
        default=None, pattern=DNS1123_LABEL, description="Read pairs from this InferenceService's feedback."
    )
    prompt_field: str = Field(default="prompt", description="JSONL field with the prompt.")
    chosen_field: str = Field(default="chosen", description="JSONL field with the preferred answer.")
    rejected_field: str = Field(default="rejected", description="JSONL field with the rejected answer.")
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="Held out for accuracy.")
    min_pairs: int = Field(default=8, ge=1, description="Wait (feedback) or fail (files) below this many.")


class RewardModelSpec(Spec):
    base: RewardBase
    preferences: Preferences
    max_steps: int = Field(description="Optimizer steps.", default=500, ge=1)
    margin: float = Field(
        default=0.0, ge=0,
        description="Bradley-Terry margin: the loss is -log sigmoid(r_chosen - r_rejected - margin).",
    )
    seed: int = Field(default=0, description="Seed for init and data order.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto", description="As TrainingRun's: auto (bf16 where measured faster), bf16 autocast, or fp32.")
    optimizer: OptimizerSpec = Field(default_factory=lambda: OptimizerSpec(lr=1e-5, warmup_steps=20))
    batch: BatchSpec = Field(default_factory=lambda: BatchSpec(global_tokens=16_384))
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    release: Release = Field(default_factory=Release, description=RELEASE_DESCRIPTION)
    storage: Storage = Field(default_factory=Storage)
    pod: PodSettings = Field(default_factory=PodSettings)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    deletion_policy: DeletionPolicy = Field(default="Retain", description=DELETION_POLICY_DESCRIPTION)


class RewardModelStatus(StatusBase):
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    accuracy: float | None = Field(default=None, description="Held-out pairs ranked correctly.")
    pairs: int | None = Field(default=None, description="Preference pairs trained on.")
    model_path: str | None = None


class RewardModel(Resource):
    """RewardModel: a scalar-head model trained on preference pairs (chosen vs rejected)."""

    KIND: ClassVar[str] = "RewardModel"
    PLURAL: ClassVar[str] = "rewardmodels"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("lrm",)
    STAGE: ClassVar[str] = "reward"
    ARTIFACT_DIR: ClassVar[str] = "rewardmodels"
    PRINTER_COLUMNS: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "Accuracy", "type": "number", "jsonPath": ".status.accuracy"},
        {"name": "Pairs", "type": "integer", "jsonPath": ".status.pairs"},
    )

    kind: Literal["RewardModel"] = "RewardModel"
    spec: RewardModelSpec
    status: RewardModelStatus | None = None

    def references(self) -> list[tuple[str, str]]:
        refs = [("TrainingRun", self.spec.base.training_run)]
        if self.spec.preferences.inference_service:
            refs.append(("InferenceService", self.spec.preferences.inference_service))
        return refs

    def spec_hash_input(self) -> dict[str, Any]:
        data: dict[str, Any] = self.spec.model_dump(mode="json", by_alias=True, exclude={"pod", "monitoring", "release"})
        return data
