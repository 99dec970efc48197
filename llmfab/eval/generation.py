"""Continuation task from the test split, scored with BLEU (sacrebleu) and ROUGE-1/2/L (rouge-score).

Each sample is a held-out test document long enough to hold ``prompt_tokens + max_new_tokens``
tokens: the model sees its first ``prompt_tokens`` tokens and greedily decodes ``max_new_tokens``;
the reference is the document's true next ``max_new_tokens`` tokens, decoded with the same tokenizer.
Samples are spread evenly over the eligible documents (deterministic, no seed). All prompts have the
same token length, so batches need no padding and greedy decoding is exactly per-sample greedy.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llmfab.store import write_text_atomic


@dataclass
class GenerationSample:
    document: int
    prompt: str
    reference: str
    hypothesis: str


@dataclass
class GenerationResult:
    bleu: float
    bleu_signature: str
    rouge1: float
    rouge2: float
    rouge_l: float
    samples: list[GenerationSample] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "bleu": self.bleu,
            "bleuSignature": self.bleu_signature,
            "rouge1": self.rouge1,
            "rouge2": self.rouge2,
            "rougeL": self.rouge_l,
            "samples": len(self.samples),
            "seconds": round(self.seconds, 2),
        }


def select_documents(documents: list[np.ndarray], needed: int, samples: int) -> list[int]:
    """Indices of up to ``samples`` documents with at least ``needed`` tokens, spread evenly."""
    eligible = [i for i, d in enumerate(documents) if len(d) >= needed]
    if not eligible:
        longest = max((len(d) for d in documents), default=0)
        raise ValueError(
            f"spec.eval.generation: no test document has promptTokens + maxNewTokens = {needed} tokens "
            f"(longest: {longest}); lower promptTokens/maxNewTokens"
        )
    if len(eligible) <= samples:
        return eligible
    picks = np.linspace(0, len(eligible) - 1, samples).round().astype(int)
    return [eligible[i] for i in picks]


def score(hypotheses: list[str], references: list[str]) -> tuple[float, str, float, float, float]:
    """Corpus BLEU with its signature, and mean ROUGE-1/2/L F1 (0-1, stemmed)."""
    bleu = BLEU()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(hypotheses, references, strict=True):
        for key, value in scorer.score(ref, hyp).items():
            totals[key] += value.fmeasure
    n = max(len(hypotheses), 1)
    return (
        float(bleu_score.score),
        str(bleu.get_signature()),
        totals["rouge1"] / n,
        totals["rouge2"] / n,
        totals["rougeL"] / n,
    )


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text if isinstance(text, str) else "".join(text)


@torch.no_grad()
def greedy_continuations(
    model: PreTrainedModel, prompts: torch.Tensor, max_new_tokens: int, eos_id: int | None
) -> list[list[int]]:
    """Greedy continuations of equal-length prompts ``[B, T]``, each cut at its first EOS."""
    out = model.generate(  # type: ignore[operator]
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=False,
        num_beams=1,
        eos_token_id=eos_id,
        pad_token_id=eos_id if eos_id is not None else 0,
    )
    results: list[list[int]] = []
    for row in out[:, prompts.shape[1] :].tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        results.append(row)
    return results


def evaluate_generation(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    documents: list[np.ndarray],
    samples: int,
    prompt_tokens: int,
    max_new_tokens: int,
    eos_id: int | None,
    context: int,
    batch_size: int = 8,
) -> GenerationResult:
    if prompt_tokens + max_new_tokens > context:
        raise ValueError(
            f"spec.eval.generation: promptTokens + maxNewTokens = {prompt_tokens + max_new_tokens} exceeds "
            f"the model context ({context}); lower them"
        )
    start = time.perf_counter()
    chosen = select_documents(documents, prompt_tokens + max_new_tokens, samples)
    results: list[GenerationSample] = []
    for i in range(0, len(chosen), batch_size):
        batch = chosen[i : i + batch_size]
        prompts = torch.from_numpy(np.stack([documents[d][:prompt_tokens] for d in batch])).to(model.device)
        continuations = greedy_continuations(model, prompts, max_new_tokens, eos_id)
        for doc, prompt, cont in zip(batch, prompts.tolist(), continuations, strict=True):
            ref_ids = documents[doc][prompt_tokens : prompt_tokens + max_new_tokens].tolist()
            results.append(
                GenerationSample(
                    document=doc,
                    prompt=_decode(tokenizer, prompt),
                    reference=_decode(tokenizer, ref_ids),
                    hypothesis=_decode(tokenizer, cont),
                )
            )
    bleu, signature, r1, r2, rl = score([s.hypothesis for s in results], [s.reference for s in results])
    return GenerationResult(bleu, signature, r1, r2, rl, results, time.perf_counter() - start)


def write_samples_jsonl(path: Path, samples: list[GenerationSample]) -> None:
    """References and hypotheses, one JSON object per line, written atomically."""
    lines = [json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in samples]
    write_text_atomic(path, "".join(lines))
