"""Instruction examples for SFT: read from JSONL, rendered with the chat template, tokenized, batched.

A row is ``{prompt, response}`` (field names from ``spec.sft``) or ``{messages: [{role, content}]}``;
a prompt/response row is the chat ``[user: prompt, assistant: response]``. The text trained on is the
chat rendered by the base tokenizer's chat template, the one the export stores, so vLLM's
``/v1/chat/completions`` formats a request as training did. Labels are the token ids on assistant
turns, up to and including the ``eos_token`` the template ends a turn with, and ``-100`` elsewhere
(``lossOnPrompt``: every token up to the last EOS).

No packing: one example per row of ``contextLength + 1`` tokens, right-padded. The model's attention
is causal, so no real token attends to the padding after it, and padded positions carry label -100:
padding changes neither the loss nor any real token's output, and no example sees another.
A batch is ``[B, 2, contextLength + 1]``: row 0 the token ids, row 1 the labels (see
``trainer.inputs_and_targets``). The sampler has the pretraining sampler's interface and resume state
(sequences consumed; each epoch a seeded permutation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmfab.api.training_run import SftSpec
from llmfab.errors import WorkloadError
from llmfab.training.inputs.jsonl_rows import matching_files, read_rows

IGNORE = -100
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    ids: list[int]
    labels: list[int]
    truncated: bool


def instruction_files(pattern: str, resolved: Path) -> list[Path]:
    return matching_files("spec.sft.path", pattern, resolved, "{prompt, response} or {messages} rows")


def read_chats(files: list[Path], sft: SftSpec) -> list[tuple[str, list[dict[str, str]]]]:
    """(``file:line``, chat) for every row; a bad row is an error naming the line and the spec field."""
    chats = [(where, _chat(row, where, sft)) for where, row in read_rows("spec.sft.path", files)]
    if not chats:
        raise WorkloadError(f"spec.sft.path: {', '.join(map(str, files))} holds no examples; add JSONL rows")
    return chats


def _chat(row: dict[str, Any], where: str, sft: SftSpec) -> list[dict[str, str]]:
    if sft.messages_field in row:
        messages = row[sft.messages_field]
        fix = f"spec.sft.messagesField: {where} field {sft.messages_field!r} must be a list of {{role, content}} " \
              f"with roles {'/'.join(ROLES)} and at least one non-empty assistant turn"
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages
        ) or not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise WorkloadError(fix)
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    chat = []
    for role, field, spec_field in (("user", sft.prompt_field, "promptField"),
                                    ("assistant", sft.response_field, "responseField")):
        if field not in row:
            raise WorkloadError(
                f"spec.sft.{spec_field}: {where} has no field {field!r} (fields: {sorted(row)}) and no "
                f"{sft.messages_field!r}; set spec.sft.{spec_field} to the JSONL field that holds it"
            )
        value = row[field]
        if not isinstance(value, str) or not value.strip():
            raise WorkloadError(f"spec.sft.{spec_field}: {where} field {field!r} is empty or not a string; "
                                "every example needs a non-empty prompt and response")
        chat.append({"role": role, "content": value})
    return chat


def render(tokenizer: Any, chat: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The chat template's text of ``chat`` and the character spans trained on (assistant turns, to
    the end of their EOS)."""
    text: str = tokenizer.apply_chat_template(chat, tokenize=False)
    spans = []
    for i, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        before: str = tokenizer.apply_chat_template(chat[:i], tokenize=False, add_generation_prompt=True)
        upto: str = tokenizer.apply_chat_template(chat[: i + 1], tokenize=False)
        if not (text.startswith(upto) and upto.startswith(before)):
            raise WorkloadError("spec.initFrom: the base tokenizer's chat template does not render a chat as the "
                                "concatenation of its turns, so assistant turns cannot be located; fix its chat_template")
        end = upto.rfind(tokenizer.eos_token, len(before))
        spans.append((len(before), end + len(tokenizer.eos_token) if end >= 0 else len(upto)))
    return text, spans


def encode(tokenizer: Any, chat: list[dict[str, str]], context: int, loss_on_prompt: bool) -> Example:
    text, spans = render(tokenizer, chat)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    if loss_on_prompt:
        spans = [(0, spans[-1][1])]
    labels = [t if any(lo <= start < hi for lo, hi in spans) else IGNORE
              for t, (start, _) in zip(ids, enc["offset_mapping"], strict=True)]
    if tokenizer.eos_token not in text[spans[-1][0]:spans[-1][1]]:  # a template without EOS: end the turn
        ids, labels = [*ids, tokenizer.eos_token_id], [*labels, tokenizer.eos_token_id]
    window = context + 1
    return Example(ids[:window], labels[:window], len(ids) > window)


def split_examples(chats: list[Any], val_fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Seeded (train, held-out); at least one of each."""
    if len(chats) < 2:
        raise WorkloadError(f"spec.sft.path: {len(chats)} example; at least 2 are needed (one is held out "
                            "for spec.sft.valFraction)")
    order = list(range(len(chats)))
    random.Random(seed).shuffle(order)
    held = min(len(chats) - 1, max(1, round(len(chats) * val_fraction)))
    return [chats[i] for i in order[held:]], [chats[i] for i in order[:held]]


def to_rows(examples: list[Example], context: int, pad_id: int) -> torch.Tensor:
    """``[N, 2, context + 1]``: ids right-padded with ``pad_id``, labels with -100."""
    out = np.full((len(examples), 2, context + 1), IGNORE, dtype=np.int64)
    out[:, 0] = pad_id
    for i, ex in enumerate(examples):
        out[i, 0, : len(ex.ids)] = ex.ids
        out[i, 1, : len(ex.labels)] = ex.labels
    return torch.from_numpy(out)


class ExampleSampler:
    """Seeded epochs over the training examples; state = sequences consumed (as ``WindowSampler``)."""

    def __init__(self, rows: torch.Tensor, seed: int) -> None:
        self.rows, self.seed, self.consumed = rows, seed, 0

    @lru_cache(maxsize=2)  # noqa: B019 - one sampler per run; the cache is the point
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def _index(self, i: int) -> int:
        epoch, position = divmod(i, len(self.rows))
        return int(self._order(epoch)[position])

    def next_batch(self, global_sequences: int, rank: int, world: int) -> torch.Tensor:
        local = global_sequences // world
        first = self.consumed + rank * local
        self.consumed += global_sequences
        return self.rows[[self._index(i) for i in range(first, first + local)]]

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "seed": self.seed, "examples": len(self.rows)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = int(state["consumed"])


def held_out_batches(rows: torch.Tensor, batch_size: int, rank: int, world: int) -> list[torch.Tensor]:
    """Every held-out example once, in batches split across ranks (a short last round wraps around,
    so every rank evaluates the same number of batches)."""
    per_round = batch_size * world
    rounds = -(-len(rows) // per_round)
    return [rows[[((b * world + rank) * batch_size + j) % len(rows) for j in range(batch_size)]]
            for b in range(rounds)]
