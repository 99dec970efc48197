"""What the training loop knows of what it trains for: one small interface (torchtitan's
``TrainSpec``, narrowed to what varies between llmfab's language-model objectives).

The loop (``trainer.train``) builds the model and everything around it from components and asks an
:class:`Objective` only for: the vocabulary size, the module that computes the loss, the initial
weights, the training batches, the validation and test batches, metrics of its own per step, what
to report before and after training, and how to publish the result. It imports no objective; each
objective (``llmfab.training.objectives``) subclasses :class:`Objective` and overrides what
differs from plain next-token prediction. Adding one touches neither the loop nor another objective.
This module imports no torch at run time, so a launcher that only starts torchrun stays light.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from llmfab.api.training_run import TrainingRunSpec
    from llmfab.model.transformer import ModelArgs, Transformer
    from llmfab.status import StatusReporter
    from llmfab.training.components.distributed import DistEnv
    from llmfab.training.loop.loss_module import LanguageModelLoss
    from llmfab.workload import WorkloadContext


class Sampler(Protocol):
    """The training batches: rows of ``[T + 1]`` token windows or ``[2, T + 1]`` ids and labels, in an
    order that a checkpoint's ``state_dict`` restores exactly."""

    consumed: int

    def next_batch(self, sequences: int, rank: int, world: int) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    steps: int
    tokens: int
    loss: float | None
    val_loss: float | None
    test_loss: float | None
    parameters: int
    last_checkpoint: str | None
    state_dict: dict[str, torch.Tensor] | None  # full weights on rank 0, for the export
    args: ModelArgs


class Objective(ABC):
    """One objective of a TrainingRun, as the loop sees it. The defaults are plain next-token
    prediction with no extra reports; ``sampler``, ``val_batches`` and ``publish`` say where the
    data comes from and where the model goes, so every objective has its own."""

    #: the model's vocabulary: the Dataset's, or the base model's for post-training
    vocab_size: int

    def loss_module(self, model: Transformer, spec: TrainingRunSpec, env: DistEnv) -> LanguageModelLoss:
        """The module FSDP shards and the loop calls as ``module(inputs, targets) -> loss``. Called
        once ``spec.precision`` is concrete (bf16 or fp32)."""
        from llmfab.training.loop.loss_module import LanguageModelLoss

        return LanguageModelLoss(model, spec.label_smoothing, spec.loss_chunk_tokens)

    def load_initial_weights(self, module: LanguageModelLoss) -> None:
        """Weights to start from before any checkpoint is resumed; default: the seeded initialisation."""
        return None

    @abstractmethod
    def sampler(self, context: int, seed: int) -> Sampler: ...

    @abstractmethod
    def val_batches(self, micro_batch: int, context: int, batches: int, rank: int, world: int) -> list[torch.Tensor]:
        """Held-out batches (each rank its share), scored every ``evalEverySteps`` and at the end."""

    def test_batches(self, micro_batch: int, context: int, batches: int, rank: int,
                     world: int) -> list[torch.Tensor] | None:
        """Batches scored once after training (``testLoss``); None where there is no test split."""
        return None

    def on_start(self, module: LanguageModelLoss, val_batches: list[torch.Tensor], spec: TrainingRunSpec,
                 env: DistEnv, reporter: StatusReporter, parameters: int) -> None:
        """Before the first step (after the micro-batch probe): anything to measure or report."""
        return None

    def step_metrics(self, module: LanguageModelLoss, env: DistEnv) -> dict[str, float]:
        """This objective's own numbers for the step just taken (collective under torchrun)."""
        return {}

    def on_end(self, module: LanguageModelLoss, val_loss: float, reporter: StatusReporter, parameters: int) -> None:
        """After the last step and the final validation: anything to report."""
        return None

    @abstractmethod
    def publish(self, ctx: WorkloadContext, spec: TrainingRunSpec, result: TrainResult) -> None:
        """On rank 0 after training: export ``model/``, report the final numbers, write the manifest last."""

