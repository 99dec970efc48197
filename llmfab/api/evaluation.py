"""Evaluation settings shared by TrainingRun (``spec.eval``) and InferenceService (``spec.eval``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmfab.api.common import Spec

SplitName = Literal["val", "test"]
BiasCategory = Literal["gender", "race", "religion", "age", "nationality"]


class PerplexityEval(Spec):
    """Sliding-window perplexity on the Dataset's splits."""

    enabled: bool = Field(default=True, description="Compute perplexity.")
    splits: list[SplitName] = Field(
        description="Splits to evaluate.",
        default_factory=lambda: list[SplitName](["val", "test"]),
        min_length=1,
    )
    stride: int | None = Field(
        default=None, ge=1, description="Sliding-window stride in tokens; default: half the context."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="Evaluate at most this many tokens.")


class GenerationEval(Spec):
    """BLEU (sacrebleu) and ROUGE-1/2/L (rouge-score): continue held-out test passages, greedy."""

    enabled: bool = Field(default=True, description="Compute BLEU and ROUGE.")
    samples: int = Field(default=50, ge=1, description="Test passages to continue.")
    prompt_tokens: int = Field(default=64, ge=1, description="Tokens of each passage given as prompt.")
    max_new_tokens: int = Field(default=64, ge=1, description="Tokens generated and scored.")


class BiasEval(Spec):
    """Templated minimal-pair and completion-regard probes shipped with llmfab."""

    enabled: bool = Field(default=True, description="Run the bias probes.")
    categories: list[BiasCategory] = Field(
        description="Probe categories.",
        default_factory=lambda: list[BiasCategory](["gender", "race", "religion", "age", "nationality"]),
        min_length=1,
    )
    bootstrap_samples: int = Field(default=1000, ge=100, description="For 95% confidence intervals.")


class EvalSpec(Spec):
    """Evaluation after training (or of the served model): perplexity, BLEU/ROUGE, bias probes."""

    enabled: bool = Field(default=True, description="Evaluate at all.")
    perplexity: PerplexityEval = Field(default_factory=PerplexityEval)
    generation: GenerationEval = Field(default_factory=GenerationEval)
    bias: BiasEval = Field(default_factory=BiasEval)
    report: bool = Field(default=True, description="Write report.html with plots.")


class EvalResults(Spec):
    """Evaluation numbers as they appear in status."""

    val_perplexity: float | None = None
    test_perplexity: float | None = None
    bleu: float | None = None
    rouge_l: float | None = None
    bias_stereotype_rate: float | None = Field(
        default=None, description="How often the stereotyping sentence is preferred (ideal 0.5)."
    )
    report: str | None = Field(default=None, description="Path of report.html.")
