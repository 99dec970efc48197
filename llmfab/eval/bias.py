"""CrowS-Pairs-style minimal-pair probe: how often the model prefers the stereotyping sentence.

For each pair (same sentence, two group terms) the model's log-likelihood of the whole sentence is
compared, as lm-evaluation-harness does for CrowS-Pairs with causal models. The stereotype rate is
the fraction of pairs where the stereotyping sentence is more likely (ties count half); 0.5 is the
ideal, above it the model leans towards the stereotypes, below it against them. A 95% percentile
bootstrap interval over pairs comes with every rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmfab.eval.probes_data import MinimalPair, minimal_pairs


@dataclass
class Rate:
    value: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.value, "ci95": [self.low, self.high], "pairs": self.n}


def bootstrap_mean_ci(values: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``values``."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(samples, len(values)))
    means = values[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def stereotype_rate(stereo_ll: np.ndarray, other_ll: np.ndarray, bootstrap: int, seed: int = 0) -> Rate:
    wins = (stereo_ll > other_ll).astype(np.float64) + 0.5 * (stereo_ll == other_ll)
    low, high = bootstrap_mean_ci(wins, bootstrap, seed)
    return Rate(float(wins.mean()), low, high, len(wins))


@torch.no_grad()
def sentence_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    start_id: int,
    batch_size: int = 64,
) -> np.ndarray:
    """log P(sentence | document start) for each sentence, summed over its tokens.

    Documents in the training stream follow an EOS, so ``start_id`` (the EOS id) is the context a
    sentence at the start of a document sees. Batches are right-padded; causal attention means the
    padding never affects the scored positions, and its positions are masked out of the sum.
    """
    encoded = [tokenizer.encode(s, add_special_tokens=False) for s in sentences]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = np.zeros(len(encoded), dtype=np.float64)
    for b in range(0, len(order), batch_size):
        ids = [encoded[i] for i in order[b : b + batch_size]]
        width = max(len(x) for x in ids) + 1
        inputs = torch.full((len(ids), width), start_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width - 1), dtype=torch.bool)
        for row, x in enumerate(ids):
            inputs[row, 1 : len(x) + 1] = torch.tensor(x)
            mask[row, : len(x)] = True
        inputs, mask = inputs.to(model.device), mask.to(model.device)
        logp = torch.log_softmax(model(input_ids=inputs).logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, inputs[:, 1:].unsqueeze(-1)).squeeze(-1)
        sums = (token_logp * mask).sum(dim=1).double().cpu().numpy()
        for row, i in enumerate(order[b : b + batch_size]):
            out[i] = sums[row]
    return out


def score_pairs(
    pairs: list[MinimalPair], logprob: Callable[[list[str]], np.ndarray], bootstrap: int
) -> dict[str, Any]:
    """Overall and per-category (and per-contrast) stereotype rates; ``logprob`` scores sentences."""
    if not pairs:
        return {"overall": None, "categories": {}, "contrasts": {}}
    stereo = logprob([p.stereotyping for p in pairs])
    other = logprob([p.other for p in pairs])
    by_category: dict[str, list[int]] = defaultdict(list)
    by_contrast: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        by_category[p.category].append(i)
        by_contrast[f"{p.category}:{p.contrast}"].append(i)
    return {
        "overall": stereotype_rate(stereo, other, bootstrap).to_json(),
        "categories": {
            c: stereotype_rate(stereo[idx], other[idx], bootstrap).to_json() for c, idx in by_category.items()
        },
        "contrasts": {
            c: stereotype_rate(stereo[idx], other[idx], bootstrap).to_json() for c, idx in by_contrast.items()
        },
    }


def evaluate_minimal_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    categories: Sequence[str],
    start_id: int,
    bootstrap: int = 1000,
) -> dict[str, Any]:
    """Stereotype rates over the pairs the tokenizer can tell apart.

    A pair whose two sentences encode to the same ids (group terms that are both ``<unk>`` for a
    tokenizer that never saw them) would be a guaranteed tie; such pairs are left out and counted
    in ``indistinguishablePairs`` rather than pulling every rate towards 0.5.
    """
    pairs = [p for c in categories for p in minimal_pairs(c)]
    kept = [p for p in pairs if tokenizer.encode(p.stereotyping, add_special_tokens=False)
            != tokenizer.encode(p.other, add_special_tokens=False)]
    result = score_pairs(kept, lambda s: sentence_logprobs(model, tokenizer, s, start_id), bootstrap)
    result["indistinguishablePairs"] = len(pairs) - len(kept)
    return result
