"""Issue 19: a Dataset of real text builds at the vocabulary sizes people use, and its shards hold
exactly the ids the served model's tokenizer gives for the same text.

SentencePiece's unigram encoder breaks near-ties between two segmentations of a word by the float32
rounding of a score summed over the whole document (``vacan·c·ies`` vs ``vacan·ci·es``), Hugging
Face's ``tokenizers`` segments each word on its own: on real text the two disagree on a few
documents in a hundred, which failed every build of the fetched corpus at vocabSize 8192. The
shards are now encoded by the exported ``tokenizer.json``; these tests check, for every document
of every split, that decoding its ids and encoding the text again with ``AutoTokenizer`` (as
transformers and vLLM load the tokenizer) gives the same ids. The text is real English
(:mod:`tests.data.real_text`), 2 MB or 4.5 MB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmfab.api.dataset import DatasetSpec
from llmfab.data.pipeline import build_dataset
from llmfab.data.shards import SPLITS, DatasetInfo

from .real_text import write_real_text

# The clean pass does not touch tokenization; without dedup and filters a build is the tokenizer's
# training, the encoding and the check (the issue's own build, default cleaning over the whole
# fetched corpus, is recorded in benchmarks/RESULTS.md, issue 19).
NO_CLEANING = {"dedup": {"exact": False, "near": {"enabled": False}},
               "filters": {name: {"enabled": False} for name in ("gopherQuality", "gopherRepetition", "c4",
                                                                 "fineweb", "language")}}


@pytest.fixture(scope="module")
def real_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_real_text(tmp_path_factory.mktemp("real") / "text", megabytes=2.0)


@pytest.fixture(scope="module")
def more_real_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough for 32768 unigram pieces from the train split (SentencePiece refuses more pieces than
    the text supports: 28400 from 3 MB)."""
    return write_real_text(tmp_path_factory.mktemp("more") / "text", megabytes=4.5)


def build(text: Path, out: Path, kind: str, vocab: int, **spec: Any) -> tuple[DatasetInfo, dict[str, Any]]:
    """The Dataset's shards and manifest (as the workload would write it) and its stats."""
    body = {"sources": [{"path": str(text / "*.txt")}, {"path": str(text / "wordnet.jsonl")}],
            "tokenizer": {"type": kind, "vocabSize": vocab}, **spec}
    manifest = build_dataset(DatasetSpec.model_validate(body), out, Path, workers=1)
    return DatasetInfo(out, manifest), json.loads((out / "stats.json").read_text())


def served_round_trip(info: DatasetInfo) -> tuple[int, list[int]]:
    """(documents, sizes of those whose ids are not what AutoTokenizer gives for their decoded text)."""
    from transformers import AutoTokenizer

    served = AutoTokenizer.from_pretrained(str(info.hf_tokenizer_dir))
    assert served.eos_token_id == info.eos_id
    documents, differ = 0, []
    for split in SPLITS:
        for ids in info.split(split).documents():
            documents += 1
            if served(served.decode(ids.tolist()), add_special_tokens=False)["input_ids"] != ids.tolist():
                differ.append(len(ids))
    return documents, differ


# unigram 8192 on 4.5 MB is the issue's case: the old build failed on it with "the Hugging Face
# tokenizer differs from SentencePiece on 27 of 200 documents" (1 of 191 with the default cleaning,
# 8 of 200 on the fetched corpus). On 2 MB the two happened to agree at 8192 unigram pieces; 32k
# unigram pieces need 4.5 MB.
@pytest.mark.parametrize(("kind", "vocab", "megabytes"), [
    ("unigram", 2048, 2), ("unigram", 8192, 4.5), ("unigram", 32768, 4.5),
    ("bpe", 2048, 2), ("bpe", 8192, 2), ("bpe", 32768, 4.5)])
def test_shards_hold_the_served_tokenizers_ids_at_2k_to_32k(kind: str, vocab: int, megabytes: float,
                                                            request: pytest.FixtureRequest, tmp_path: Path) -> None:
    text = request.getfixturevalue("more_real_text" if megabytes > 2 else "real_text")
    info, stats = build(text, tmp_path / "ds", kind, vocab, **NO_CLEANING)
    documents, differ = served_round_trip(info)
    assert documents == stats["documents"] and differ == []
    assert info.vocab_size == vocab
    check = stats["hfTokenizerCheck"]
    assert check["documents"] >= 50 and check["mismatches"] == 0 and check["decodeDiffers"] == 0
