"""A scalar reward head on llmfab's Transformer, its Bradley-Terry loss, and its Hugging Face format.

The reward of a sequence is ``score(h_last)``: a bias-free Linear(hidden, 1) on the final-normalised
hidden state of the last non-pad token (the rightmost token that is not ``pad_id``), which is how
Hugging Face's ``LlamaForSequenceClassification`` pools. The export is therefore that class
(``num_labels=1``, ``pad_token_id`` set): ``model.*`` weights as in ``model/hf.py``, no
``lm_head``, plus ``score.weight``; ``AutoModelForSequenceClassification`` loads it, and
:func:`load_reward_model` loads it back into llmfab (what the RL run uses).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from llmfab.cards import CardFacts
from llmfab.model.hf import hf_config, load_hf, to_hf_state_dict, with_model_card
from llmfab.model.transformer import ModelArgs, Transformer
from llmfab.store import staged_directory, write_json_atomic, write_manifest

ARCHITECTURE = "LlamaForSequenceClassification"
_MODEL_FILES = ("config.json", "generation_config.json", "manifest.json", "model.safetensors.index.json", "README.md")


def dialogue_text(prompt: str, response: str) -> str:
    """What the reward model reads: the chat template's user and assistant turns."""
    return f"User: {prompt}\nAssistant: {response}"


def reward_input_ids(tokenizer: Any, prompt: str, response: str, context: int) -> tuple[list[int], bool]:
    """(token ids the reward model scores, whether they were cut): the dialogue text encoded as in
    training, cut to its last ``context`` tokens. The RL run encodes its samples with this too, so a
    score means the same in RL as on the held-out pairs."""
    ids: list[int] = tokenizer(dialogue_text(prompt, response))["input_ids"]
    return ids[-context:], len(ids) > context


class RewardScorer(nn.Module):
    """Transformer + scalar head: tokens [B, T] (right-padded with ``pad_id``) -> rewards [B]."""

    def __init__(self, model: Transformer, pad_id: int) -> None:
        super().__init__()
        self.model, self.pad_id = model, pad_id
        self.score = nn.Linear(model.args.hidden, 1, bias=False)
        nn.init.normal_(self.score.weight, 0.0, model.args.init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.model(tokens)  # [B, T, hidden]
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        last = ((tokens != self.pad_id) * positions).argmax(-1)  # rightmost non-pad token, [B]
        pooled = hidden[torch.arange(tokens.shape[0], device=tokens.device), last]  # [B, hidden]
        rewards: torch.Tensor = self.score(pooled).squeeze(-1).float()
        return rewards


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Mean ``-log sigmoid(r_chosen - r_rejected - margin)``: the negative log-likelihood that the
    chosen answer wins under the Bradley-Terry model (the margin asks it to win by that much)."""
    return -F.logsigmoid(chosen - rejected - margin).mean()


def tokenizer_sha256(model_dir: Path) -> str | None:
    """Hash of ``tokenizer.json``: the RL run compares it with its policy's before using the scores."""
    file = Path(model_dir) / "tokenizer.json"
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else None


def copy_tokenizer_files(model_dir: Path, out: Path) -> None:
    """The tokenizer files of an exported model directory (its weights and configs left out), byte
    for byte, so :func:`tokenizer_sha256` of the reward model equals that of its base."""
    for f in Path(model_dir).iterdir():
        if f.is_file() and f.name not in _MODEL_FILES and f.suffix != ".safetensors":
            shutil.copy2(f, out / f.name)


def export_reward_hf(state: dict[str, torch.Tensor], args: ModelArgs, pad_id: int, tokenizer_dir: Path,
                     out_dir: Path, *, dtype: str, special_ids: dict[str, int | None],
                     manifest: dict[str, Any] | None = None, card: CardFacts | None = None) -> Path:
    """Write ``out_dir`` atomically as a ``LlamaForSequenceClassification`` directory.

    ``state``: the :class:`RewardScorer`'s full state dict (``model.*`` and ``score.weight``);
    ``tokenizer_dir``: the base model's exported directory, whose tokenizer files are copied.
    """
    backbone = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    weights = {k: v for k, v in to_hf_state_dict(backbone, args).items() if k != "lm_head.weight"}
    weights["score.weight"] = state["score.weight"].detach().to("cpu").clone().contiguous()
    weights = {k: v.to(getattr(torch, dtype)) for k, v in weights.items()}
    config = hf_config(args, dtype, {**special_ids, "pad_token_id": pad_id})
    config.update(architectures=[ARCHITECTURE], id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                  tie_word_embeddings=False)
    with staged_directory(Path(out_dir)) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json_atomic(tmp / "config.json", config)
        copy_tokenizer_files(tokenizer_dir, tmp)
        parameters = sum(v.numel() for v in weights.values())
        body = {"kind": "HFModel", "architecture": ARCHITECTURE, "dtype": dtype, "padTokenId": pad_id,
                "parameters": parameters, **(manifest or {})}
        if card is not None:
            body.update(with_model_card(tmp, card, parameters))
        write_manifest(tmp, body)
    return Path(out_dir)


def load_reward_model(model_dir: Path) -> RewardScorer:
    """A :class:`RewardScorer` (fp32) from an exported RewardModel directory."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if ARCHITECTURE not in config.get("architectures", []):
        raise ValueError(f"{model_dir}/config.json: architectures {config.get('architectures')} has no "
                         f"{ARCHITECTURE}; this is not a RewardModel export")
    model, _ = load_hf(model_dir)  # the backbone (its output head falls back to the embedding)
    scorer = RewardScorer(model, int(config["pad_token_id"]))
    scorer.score.weight.data.copy_(load_file(str(model_dir / "model.safetensors"))["score.weight"].float())
    return scorer
