"""Sliding-window perplexity over a Dataset split, token-weighted (HF "Perplexity of fixed-length models").

The split is one token stream (documents, each followed by EOS), as training saw it. Every token but
the first is scored exactly once, with as much context as the model's window allows: the first window
scores tokens 1..L-1 from a full prefix; each later window is a full window of L tokens that ends
``stride`` tokens further on and scores only those new tokens, so each gets at least ``L - stride``
tokens of context. Perplexity = exp(sum of token NLLs / tokens scored), never an average of
per-window averages (which would over-weight a short last window).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel


@dataclass(frozen=True)
class Window:
    begin: int  # first input token
    end: int  # one past the last input (and last target) token
    first_target: int  # first token scored in this window


@dataclass
class PerplexityResult:
    split: str
    perplexity: float
    mean_nll: float
    tokens_scored: int
    windows: int
    context: int
    stride: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_scored / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokensPerSecond"] = round(self.tokens_per_second, 1)
        return {_camel(k): v for k, v in data.items()}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def plan_windows(n_tokens: int, context: int, stride: int) -> list[Window]:
    """Windows covering tokens 1..n-1 once each; every window has length min(context, n_tokens)."""
    if context < 2:
        raise ValueError(f"context: {context} is too small; a window needs at least 2 tokens")
    if not 1 <= stride < context:
        raise ValueError(
            f"stride: {stride} must be between 1 and the model context minus one ({context - 1}); "
            "lower spec.eval.perplexity.stride (default: half the context)"
        )
    if n_tokens < 2:
        return []
    end = min(context, n_tokens)
    windows = [Window(0, end, 1)]
    while end < n_tokens:
        new_end = min(end + stride, n_tokens)
        windows.append(Window(new_end - context, new_end, end))
        end = new_end
    return windows


@torch.no_grad()
def _window_nll(model: PreTrainedModel, tokens: np.ndarray, batch: list[Window]) -> tuple[float, int]:
    """Sum of NLL (float64) and count of scored tokens over a batch of equal-length windows."""
    inputs = torch.from_numpy(np.stack([tokens[w.begin : w.end] for w in batch])).to(model.device)
    logits = model(input_ids=inputs).logits[:, :-1].float()
    targets = inputs[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = nll.view(targets.shape)
    # Position j predicts token begin+j+1; score it only if that token is new in this window.
    positions = torch.arange(targets.shape[1], device=targets.device).unsqueeze(0)
    first = torch.tensor([w.first_target - w.begin - 1 for w in batch], device=targets.device).unsqueeze(1)
    mask = positions >= first
    return float(nll[mask].double().sum()), int(mask.sum())


def perplexity(
    model: PreTrainedModel,
    tokens: np.ndarray,
    context: int,
    stride: int | None = None,
    batch_size: int = 4,
    split: str = "",
) -> PerplexityResult:
    """Token-weighted sliding-window perplexity of ``tokens`` (a 1-D id array)."""
    stride = stride if stride is not None else max(1, context // 2)
    start = time.perf_counter()
    windows = plan_windows(len(tokens), context, stride)
    if not windows:
        raise ValueError(f"split {split!r}: {len(tokens)} tokens; perplexity needs at least 2")
    total_nll, total = 0.0, 0
    for i in range(0, len(windows), batch_size):
        nll, count = _window_nll(model, tokens, windows[i : i + batch_size])
        total_nll += nll
        total += count
    mean = total_nll / total
    return PerplexityResult(
        split=split,
        perplexity=math.exp(mean),
        mean_nll=mean,
        tokens_scored=total,
        windows=len(windows),
        context=context,
        stride=stride,
        seconds=time.perf_counter() - start,
    )
