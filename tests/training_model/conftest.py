"""Tiny shapes and a small real Hugging Face tokenizer for the model/numerics tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmfab.model.transformer import ModelArgs

VOCAB = 96


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny shapes; and a busy 2-core machine makes OpenMP barriers costly


def tiny_args(**overrides: object) -> ModelArgs:
    values: dict[str, object] = {"vocab_size": VOCAB, "layers": 3, "hidden": 32, "heads": 4, "kv_heads": 4,
                                 "intermediate": 64, "context_length": 16, "sharing_groups": 3}
    values.update(overrides)
    return ModelArgs(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A word-level tokenizer with VOCAB ids, saved the way the Dataset stage saves its HF files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    words = [f"w{i}" for i in range(VOCAB - len(specials))]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    out = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(str(out))
    return out
