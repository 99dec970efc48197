"""Preference pairs for a RewardModel: read from JSONL, checked, split, tokenized, batched.

A pair is ``{prompt, chosen, rejected}`` (field names from ``spec.preferences``). The text a reward
model scores is the prompt and the response in the dialogue format of the exported chat template
(``model/reward_head.py``: ``reward_input_ids``), so the RL run scores its samples in the same format. A sequence longer than the context keeps its end (the scored token is
the last one), i.e. the prompt is cut from the left.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmfab.api.reward_model import Preferences
from llmfab.errors import DependencyNotReady, WorkloadError
from llmfab.model.reward_head import reward_input_ids
from llmfab.training.inputs.jsonl_rows import matching_files, read_rows

FIELDS = (("prompt", "promptField"), ("chosen", "chosenField"), ("rejected", "rejectedField"))


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    where: str  # "file:line", for messages


def preference_files(pattern: str, resolved: Path) -> list[Path]:
    """The JSONL files ``spec.preferences.path`` names (a file or a glob), sorted."""
    return matching_files("spec.preferences.path", pattern, resolved, "{prompt, chosen, rejected} pairs")


def read_pairs(files: list[Path], prefs: Preferences) -> list[PreferencePair]:
    """Every pair in ``files``; any bad line is an error naming the file, the line and the field."""
    names = {"prompt": prefs.prompt_field, "chosen": prefs.chosen_field, "rejected": prefs.rejected_field}
    pairs = [_pair(row, where, names) for where, row in read_rows("spec.preferences.path", files)]
    if len(pairs) < prefs.min_pairs:
        raise WorkloadError(
            f"spec.preferences.minPairs: found {len(pairs)} pairs in {', '.join(map(str, files))}, fewer than "
            f"minPairs {prefs.min_pairs}; add pairs or lower spec.preferences.minPairs"
        )
    return pairs


def _pair(row: dict[str, Any], where: str, names: dict[str, str]) -> PreferencePair:
    values: dict[str, str] = {}
    for role, spec_field in FIELDS:
        field = names[role]
        if field not in row:
            raise WorkloadError(
                f"spec.preferences.{spec_field}: {where} has no field {field!r} (fields: {sorted(row)}); "
                f"add it to the file or set spec.preferences.{spec_field} to the field that holds the {role} text"
            )
        value = row[field]
        if not isinstance(value, str) or not value.strip():
            raise WorkloadError(
                f"spec.preferences.{spec_field}: {where} field {field!r} is {'empty' if value in ('', None) else repr(value)}; "
                f"every pair needs a non-empty {role} string: fix or drop the line"
            )
        values[role] = value
    if values["chosen"].strip() == values["rejected"].strip():
        raise WorkloadError(
            f"spec.preferences.path: {where} has identical {names['chosen']!r} and {names['rejected']!r} "
            "texts, which carry no preference; fix or drop the line"
        )
    return PreferencePair(values["prompt"], values["chosen"], values["rejected"], where)


def feedback_pairs(store_path: Path, service: str, prefs: Preferences) -> list[PreferencePair]:
    """The A/B votes of an InferenceService's feedback app (ties skipped, an edit is the chosen
    text). Too few votes yet is a dependency that is not ready: the RewardModel waits for them."""
    from llmfab.serving.feedback_store import FeedbackReader, NotAFeedbackStore, preference_pairs

    pairs: list[PreferencePair] = []
    if store_path.is_file():  # read-only: the service's app is the store's one writer
        try:
            rows = list(preference_pairs(FeedbackReader(store_path)))
        except NotAFeedbackStore as e:
            raise WorkloadError(f"spec.preferences.inferenceService: InferenceService/{service}: {e}") from None
        for i, row in enumerate(rows, start=1):
            if row["chosen"].strip() and row["chosen"].strip() != row["rejected"].strip():
                pairs.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"], f"{store_path} vote {i}"))
    if len(pairs) < prefs.min_pairs:
        raise DependencyNotReady(
            f"spec.preferences.inferenceService: InferenceService/{service} has {len(pairs)} usable preference "
            f"votes in {store_path}, fewer than minPairs {prefs.min_pairs}; collect more on its feedback page "
            "(spec.feedback.enabled) or lower spec.preferences.minPairs"
        )
    return pairs


def split_pairs(pairs: list[PreferencePair], val_fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) after a seeded shuffle; at least one pair is held out when valFraction > 0."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    held = 0 if val_fraction == 0 else max(1, round(len(order) * val_fraction))
    if held >= len(order):
        raise WorkloadError(
            f"spec.preferences.valFraction: {val_fraction} holds out {held} of {len(order)} pairs and leaves none "
            "to train on; lower valFraction or add pairs"
        )
    return order[held:], order[:held]


@dataclass(frozen=True)
class EncodedPair:
    chosen: list[int]
    rejected: list[int]
    truncated: bool


def encode_pairs(pairs: list[PreferencePair], tokenizer: Any, context: int) -> list[EncodedPair]:
    """Token ids of each pair's two dialogues, cut to the last ``context`` tokens.

    Two different texts can still read the same to the reward model: the tokenizer maps both to the
    same ids (unknown characters, normalisation), or both are longer than the context and differ only
    in the part cut off. Such a pair has no preference the model can learn, so it is refused as
    identical texts are."""
    out = []
    for p in pairs:
        chosen, cut_chosen = reward_input_ids(tokenizer, p.prompt, p.chosen, context)
        rejected, cut_rejected = reward_input_ids(tokenizer, p.prompt, p.rejected, context)
        if chosen == rejected:
            why = (f"agree in their last {context} tokens (the base's contextLength), the only ones it reads; "
                   "shorten the responses so that they differ near their end, or use a base with a longer context"
                   if cut_chosen or cut_rejected else
                   "encode to the same token ids with the base's tokenizer; fix or drop the line")
            raise WorkloadError(f"spec.preferences.path: {p.where} has chosen and rejected texts that the reward "
                                f"model cannot tell apart: they {why}")
        out.append(EncodedPair(chosen, rejected, cut_chosen or cut_rejected))
    return out


def pad_batch(pairs: list[EncodedPair], pad_id: int) -> torch.Tensor:
    """[2B, T]: the chosen sequences then the rejected ones, right-padded with ``pad_id``."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    width = max(len(r) for r in rows)
    batch = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return batch


def batch_indices(step: int, pairs_per_step: int, count: int, seed: int) -> list[int]:
    """The train pairs of optimizer step ``step``: consecutive slices of one seeded permutation per
    epoch, so the order depends only on (seed, step) and a resumed run sees the same batches."""
    indices: list[int] = []
    position = step * pairs_per_step
    while len(indices) < pairs_per_step:
        epoch, offset = divmod(position, count)
        order = list(range(count))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = min(pairs_per_step - len(indices), count - offset)
        indices.extend(order[offset : offset + take])
        position += take
    return indices
