"""Session fixtures for the eval tests: a tiny SentencePiece tokenizer (converted to HF), a Dataset
artifact written by ``llmfab.data.shards``, and a tiny random LlamaForCausalLM. Built once, ~2 s."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer, PreTrainedTokenizerBase

from llmfab.data.shards import token_dtype, write_split
from llmfab.eval.probes_data import CATEGORIES, completion_prompts, minimal_pairs
from llmfab.store import write_manifest

NOUNS = ["cat", "dog", "river", "garden", "teacher", "city", "boat", "song", "window", "farmer", "market"]
VERBS = ["sees", "follows", "paints", "finds", "likes", "crosses", "builds", "remembers"]
ADJECTIVES = ["green", "quiet", "old", "bright", "small", "happy", "cold", "wide"]


def random_document(rng: random.Random, sentences: int) -> str:
    out = []
    for _ in range(sentences):
        out.append(
            f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}."
        )
    return " ".join(out)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run ~20x faster on one thread than on two on a busy 2-core machine (no spin
    contention); restored afterwards so other test directories keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class EvalFixture:
    root: Path
    dataset_dir: Path
    model_dir: Path
    tokenizer: PreTrainedTokenizerBase
    eos_id: int


def build_tokenizer(work: Path, rng: random.Random) -> Path:
    lines = [random_document(rng, 3) for _ in range(300)]
    for c in CATEGORIES:
        lines += [p.stereotyping for p in minimal_pairs(c)] + [p.prompt for p in completion_prompts(c)]
    (work / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"),
        model_prefix=str(work / "tokenizer"),
        vocab_size=512,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        max_sentence_length=100_000,
        minloglevel=2,
        num_threads=1,
    )
    sp_dir = work / "sp"
    sp_dir.mkdir()
    (work / "tokenizer.model").rename(sp_dir / "tokenizer.model")
    hf_dir = work / "hf-tokenizer"
    LlamaTokenizer.from_pretrained(str(sp_dir), legacy=False, add_bos_token=False).save_pretrained(hf_dir)
    return hf_dir


@pytest.fixture(scope="session")
def eval_fixture(tmp_path_factory: pytest.TempPathFactory) -> EvalFixture:
    torch.manual_seed(0)
    rng = random.Random(0)
    work = tmp_path_factory.mktemp("eval-fixture")
    hf_tok_dir = build_tokenizer(work, rng)
    tokenizer = LlamaTokenizer.from_pretrained(str(hf_tok_dir))
    eos = int(tokenizer.eos_token_id)

    root = work / "artifacts"
    dataset_dir = root / "datasets" / "tiny"
    dataset_dir.mkdir(parents=True)
    tokenizer.save_pretrained(dataset_dir / "tokenizer")
    splits = {}
    for split, count, length in (("train", 20, 6), ("val", 12, 6), ("test", 12, 8)):
        docs = [
            tokenizer.encode(random_document(rng, length), add_special_tokens=False) for _ in range(count)
        ]
        splits[split] = write_split(dataset_dir, split, docs, token_dtype(len(tokenizer)), eos)
    write_manifest(
        dataset_dir,
        {
            "kind": "Dataset",
            "name": "tiny",
            "vocabSize": len(tokenizer),
            "dtype": "uint16",
            "bosId": 1,
            "eosId": eos,
            "padId": 3,
            "unkId": 0,
            "tokenizer": "tokenizer.model",
            "hfTokenizer": "tokenizer",
            "splits": splits,
        },
        "hash",
    )

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=eos,
        pad_token_id=3,
    )
    model = LlamaForCausalLM(config)
    model_dir = work / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return EvalFixture(root, dataset_dir, model_dir, tokenizer, eos)
