"""A tiny Dataset artifact in the documented shard format, and TrainingRun specs that train on it.

The Dataset is built here with SentencePiece and the shard writer of ``llmfab.data.shards`` (not
through the data stage) so these tests only depend on that format: uint16 shards, each document
followed by EOS, an index of document starts, a SentencePiece model and a Hugging Face tokenizer
directory.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmfab.data.shards import token_dtype, write_split

VOCAB = 300
WORDS = (
    "the quick brown fox jumps over a lazy dog and the cat runs far away while small birds "
    "sing in tall green trees near the old river bank every morning"
).split()


def _corpus(seed: int, docs: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(docs):
        # A learnable structure: each word usually follows its predecessor in WORDS.
        i = rng.randrange(len(WORDS))
        words = []
        for _ in range(rng.randint(8, 40)):
            words.append(WORDS[i])
            i = (i + 1) % len(WORDS) if rng.random() < 0.8 else rng.randrange(len(WORDS))
        out.append(" ".join(words))
    return out


def _hf_tokenizer(sp_model: Path, out: Path) -> None:
    """A Hugging Face tokenizer directory with the same vocabulary (ids need not match for these tests)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(str(out))


def build_dataset(root: Path, name: str = "tiny", docs: int = 1500) -> Path:
    import sentencepiece as spm

    directory = root / "datasets" / name
    directory.mkdir(parents=True)
    text = _corpus(0, docs)
    (directory / "corpus.txt").write_text("\n".join(text))
    spm.SentencePieceTrainer.train(
        input=str(directory / "corpus.txt"),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=VOCAB,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        byte_fallback=True,
        max_sentence_length=100000,
        minloglevel=2,
    )
    (directory / "corpus.txt").unlink()
    (directory / "tokenizer.vocab").unlink()
    _hf_tokenizer(directory / "tokenizer.model", directory / "tokenizer")
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    splits: dict[str, Any] = {}
    bounds = {
        "train": (0, int(docs * 0.8)),
        "val": (int(docs * 0.8), int(docs * 0.9)),
        "test": (int(docs * 0.9), docs),
    }
    for split, (lo, hi) in bounds.items():
        encoded = [sp.encode(doc) for doc in text[lo:hi]]
        tokens = sum(len(ids) + 1 for ids in encoded)
        # Two shards for train, to exercise reads across shard boundaries.
        shard_tokens = tokens // 2 if split == "train" else tokens
        splits[split] = write_split(directory, split, encoded, token_dtype(VOCAB), eos_id=2, shard_tokens=shard_tokens)
    manifest = {
        "kind": "Dataset",
        "name": name,
        "specHash": "fixture",
        "vocabSize": VOCAB,
        "dtype": "uint16",
        "bosId": 1,
        "eosId": 2,
        "padId": 3,
        "unkId": 0,
        "tokenizer": "tokenizer.model",
        "hfTokenizer": "tokenizer",
        "splits": splits,
        "createdAt": "2026-11-25T00:00:00Z",
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="session")
def dataset_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset-template")
    build_dataset(root)
    return root / "datasets" / "tiny"


@pytest.fixture
def home(tmp_path: Path, dataset_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An artifact root holding a complete Dataset/tiny; LLMFAB_HOME points at it."""
    root = tmp_path / "home"
    shutil.copytree(dataset_template, root / "datasets" / "tiny")
    monkeypatch.setenv("LLMFAB_HOME", str(root))
    monkeypatch.chdir(tmp_path)
    return root


def tiny_spec(name: str = "tiny-run", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "dataset": {"name": "tiny"},
        "release": {"license": "apache-2.0"},  # a model trained from scratch names its licence
        "model": {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32},
        "maxSteps": 30,
        "seed": 1,
        "precision": "fp32",
        "optimizer": {"lr": 3e-3, "warmupSteps": 3, "weightDecay": 0.0},
        "batch": {"globalTokens": 32 * 8},
        "checkpoint": {"everySteps": 10, "keepLast": 2},
        "evalEverySteps": 10,
        "evalBatches": 2,
        "monitoring": {"prometheusPort": None, "logEverySteps": 1, "tensorboard": False},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return {
        "apiVersion": "llmfab.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str = "tiny-run", **overrides: Any) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tiny_spec(name, **overrides)))
        return path

    return write


def read_metrics(run_dir: Path) -> dict[int, dict[str, Any]]:
    """metrics.jsonl by step; a step logged twice (before a crash and after resume) keeps the last."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other test suites share the 2 cores; one thread per process is several times faster then."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
