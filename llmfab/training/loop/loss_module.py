"""The module the loop trains and FSDP shards: the model and its loss as one ``nn.Module``."""

from __future__ import annotations

import torch
from torch import nn

from llmfab.model import losses
from llmfab.model.transformer import Transformer


class LanguageModelLoss(nn.Module):
    """Model + chunked loss as one module, so FSDP2's root unshards the head weight for the loss."""

    def __init__(self, model: Transformer, label_smoothing: float, chunk_tokens: int) -> None:
        super().__init__()
        self.model, self.label_smoothing, self.chunk_tokens = model, label_smoothing, chunk_tokens

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = self.model(tokens)
        return losses.chunked_cross_entropy(
            hidden, self.model.output.weight, targets,
            label_smoothing=self.label_smoothing, chunk_tokens=self.chunk_tokens,
        )
