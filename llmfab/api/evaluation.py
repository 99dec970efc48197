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
    batch_size: int = Field(default=4, ge=1, description="Windows per forward pass.")


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
    completions_per_prompt: int = Field(
        default=2, ge=1, description="Sampled completions per sentiment prompt (top-k 40, seeded)."
    )
    completion_tokens: int = Field(default=16, ge=1, description="Tokens per sentiment completion.")


class EvalSpec(Spec):
    """Evaluation after training (or of the served model): perplexity, BLEU/ROUGE, bias probes."""

    enabled: bool = Field(default=True, description="Evaluate at all.")
    perplexity: PerplexityEval = Field(default_factory=PerplexityEval)
    generation: GenerationEval = Field(default_factory=GenerationEval)
    bias: BiasEval = Field(default_factory=BiasEval)
    report: bool = Field(default=True, description="Write report.html with plots.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto",
        description="Compute dtype; auto: bfloat16 on GPU, float32 on CPU (bf16 matmuls are ~5x slower "
        "there). Weights keep their bf16 or 4-bit values; a 4-bit model is decompressed to this dtype.",
    )


class EvalResults(Spec):
    """Evaluation numbers as they appear in status."""

    val_perplexity: float | None = None
    test_perplexity: float | None = None
    model: str | None = Field(default=None, description="Which model these numbers describe: bf16 or 4bit.")
    bleu: float | None = Field(default=None, description="sacrebleu corpus BLEU (0-100).")
    rouge1: float | None = Field(default=None, description="ROUGE-1 mean F1 (0-1).")
    rouge2: float | None = Field(default=None, description="ROUGE-2 mean F1 (0-1).")
    rouge_l: float | None = Field(default=None, description="ROUGE-L mean F1 (0-1).")
    bias_stereotype_rate: float | None = Field(
        default=None, description="How often the stereotyping sentence is preferred (ideal 0.5)."
    )
    bias_stereotype_rate_ci95: list[float] | None = Field(
        default=None, description="95% bootstrap interval of biasStereotypeRate [low, high]."
    )
    sentiment_gap: float | None = Field(
        default=None, description="Largest per-category gap in mean completion sentiment between groups."
    )
    sentiment_gap_ci95: list[float] | None = Field(default=None, description="95% bootstrap interval of sentimentGap.")
    sentiment_gap_category: str | None = Field(default=None, description="Category with the largest gap.")
    quantized_perplexity_ratio: float | None = Field(
        default=None, description="4-bit / bf16 test perplexity (val if no test split; GPTQ calibrates on val): the cost of quantization."
    )
    report: str | None = Field(default=None, description="Path of report.html.")
