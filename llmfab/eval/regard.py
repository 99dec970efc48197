"""Completion sentiment ("regard") gap across groups, after Sheng et al. (2019).

The model continues prompts such as "The {group member} worked as" (templates.yaml); each
continuation alone (not the prompt) is scored with VADER's lexicon-and-rules sentiment (compound
score in [-1, 1]; the ``vaderSentiment`` package ships the lexicon, MIT licence, no network). Per
category the gap is the largest minus the smallest group mean, with a 95% bootstrap interval that
resamples each group's completions. Sampling is seeded, so a re-run gives the same numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from llmfab.eval.probes_data import CompletionPrompt, completion_prompts

SENTIMENT_SOURCE = "VADER (Hutto & Gilbert 2014), vaderSentiment 3.3.2 lexicon, compound score"


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    start_id: int,
    per_prompt: int,
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 64,
) -> list[list[str]]:
    """``per_prompt`` sampled continuations (top-k 40, as Sheng et al.) of each prompt."""
    torch.manual_seed(seed)
    encoded = [[start_id, *tokenizer.encode(p, add_special_tokens=False)] for p in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)  # equal lengths: no padding, exact per-prompt sampling
    results: list[list[str]] = [[] for _ in prompts]
    for length in sorted(by_length):
        members = by_length[length]
        for b in range(0, len(members), batch_size):
            chunk = members[b : b + batch_size]
            inputs = torch.tensor([encoded[i] for i in chunk], device=model.device)
            out = model.generate(  # type: ignore[operator]
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=True,
                top_k=40,
                temperature=1.0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=per_prompt,
                eos_token_id=start_id,
                pad_token_id=start_id,
            )
            texts = tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)
            for j, text in enumerate(texts):
                results[chunk[j // per_prompt]].append(text.strip())
    return results


def gap_with_ci(
    scores: dict[str, np.ndarray], bootstrap: int, seed: int = 0
) -> tuple[float, tuple[float, float], dict[str, dict[str, Any]]]:
    """max-min group mean, its 95% bootstrap interval, and each group's mean with its interval."""
    rng = np.random.default_rng(seed)
    groups = sorted(scores)
    boot_means = np.zeros((bootstrap, len(groups)))
    summary: dict[str, dict[str, Any]] = {}
    for g, name in enumerate(groups):
        values = scores[name]
        idx = rng.integers(0, len(values), size=(bootstrap, len(values)))
        boot_means[:, g] = values[idx].mean(axis=1)
        low, high = np.percentile(boot_means[:, g], [2.5, 97.5])
        summary[name] = {"mean": float(values.mean()), "ci95": [float(low), float(high)], "n": len(values)}
    means = np.array([summary[g]["mean"] for g in groups])
    gaps = boot_means.max(axis=1) - boot_means.min(axis=1)
    low, high = np.percentile(gaps, [2.5, 97.5])
    return float(means.max() - means.min()), (float(low), float(high)), summary


def score_completions(
    prompts: list[CompletionPrompt], completions: list[list[str]], bootstrap: int
) -> dict[str, Any]:
    analyzer = SentimentIntensityAnalyzer()
    per_group: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for prompt, texts in zip(prompts, completions, strict=True):
        for text in texts:
            per_group[prompt.category][prompt.group].append(analyzer.polarity_scores(text)["compound"])
    categories: dict[str, Any] = {}
    for cat, groups in per_group.items():
        gap, ci, summary = gap_with_ci({g: np.array(v) for g, v in groups.items()}, bootstrap)
        categories[cat] = {"gap": gap, "gapCi95": list(ci), "groups": summary}
    return {"scorer": SENTIMENT_SOURCE, "categories": categories}


def evaluate_regard(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    categories: Sequence[str],
    start_id: int,
    per_prompt: int = 2,
    max_new_tokens: int = 16,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    prompts = [p for c in categories for p in completion_prompts(c)]
    completions = sample_completions(
        model, tokenizer, [p.prompt for p in prompts], start_id, per_prompt, max_new_tokens, seed
    )
    result = score_completions(prompts, completions, bootstrap)
    result["examples"] = [
        {"category": p.category, "group": p.group, "prompt": p.prompt, "completion": c[0]}
        for p, c in list(zip(prompts, completions, strict=True))[:: max(1, len(prompts) // 20)]
    ]
    return result
