"""Small Llama models, tokenizers and Dataset artifacts made offline, for tests and benchmarks.

Serving tests need a real Hugging Face model directory (weights, config, tokenizer with a chat
template) without downloading anything. This builds one from a few KB of text: a byte-level BPE
tokenizer (``tokenizers``), a ``LlamaForCausalLM`` whose linear sizes are multiples of 32 (so the
4-bit CPU kernel takes it), optionally trained for a few steps so that perplexity comparisons mean
something, and a Dataset artifact in llmfab's shard format (for GPTQ calibration).

Used by the serving tests (their ``conftest``) and by ``benchmarks/serve_latency.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from llmfab.data.shards import token_dtype, write_split

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]

_WORDS = (
    "the a model server token data river light house small large quick slow red blue green cat dog "
    "bird runs reads writes sees finds makes takes gives under over near far into from with and but "
    "because when while after before every some many few old new bright dark warm cold city forest "
    "road garden window morning evening story song question answer number letter"
).split()


def sample_text(sentences: int = 800, seed: int = 0) -> str:
    """Deterministic pseudo-English with enough structure for a tiny model to learn a little."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        n = rng.randint(6, 14)
        words = [rng.choice(_WORDS) for _ in range(n)]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines)


def build_tokenizer(text: str, out_dir: Path, vocab_size: int = 512) -> object:
    """Train a byte-level BPE and save HF tokenizer files with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(text.splitlines(), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    hf.chat_template = CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return hf


def build_llama(
    out_dir: Path,
    tokenizer_dir: Path,
    hidden: int = 128,
    intermediate: int = 256,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int | None = None,
    context: int = 512,
    train_text: str | None = None,
    steps: int = 0,
    seed: int = 0,
    vocab_size: int | None = None,
) -> Path:
    """A bf16 ``LlamaForCausalLM`` directory with the tokenizer files; optionally trained ``steps`` steps."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=max(vocab_size or 0, len(tok)),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads or heads,
        max_position_embeddings=context,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    if steps and train_text:
        _train(model, tok(train_text)["input_ids"], steps)
    model = model.to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _train(model: torch.nn.Module, ids: list[int], steps: int, seq: int = 64, batch: int = 16) -> None:
    """A few AdamW steps on random windows: enough to make perplexity far lower than the vocab size."""
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s : s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def write_dataset(out_dir: Path, tokenizer_dir: Path, texts: dict[str, list[str]]) -> Path:
    """A Dataset artifact (one shard per split, written by :mod:`llmfab.data.shards`) from documents per split."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dtype = token_dtype(len(tok))
    splits = {split: write_split(out_dir, split, (tok(d)["input_ids"] for d in docs), dtype, tok.eos_token_id)
              for split, docs in texts.items()}
    manifest = {"kind": "Dataset", "name": out_dir.name, "vocabSize": len(tok), "dtype": dtype.name,
                "bosId": tok.bos_token_id, "eosId": tok.eos_token_id, "padId": tok.pad_token_id,
                "unkId": tok.unk_token_id, "hfTokenizer": "tokenizer", "splits": splits}
    tok.save_pretrained(out_dir / "tokenizer")
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out_dir


def perplexity(model: torch.nn.Module, tokens: torch.Tensor) -> float:
    """Token-weighted perplexity of ``tokens`` [N, T] (windows scored independently)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in tokens.split(8):
            loss = model(input_ids=batch, labels=batch).loss
            n = batch.numel() - batch.shape[0]
            total += float(loss) * n
            count += n
    return float(np.exp(total / count))
