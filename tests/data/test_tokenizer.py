"""SentencePiece training, the Hugging Face copy giving identical ids, and tokenizer errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmfab.api.dataset import Tokenizer
from llmfab.data.tokenizer import (
    Encoder,
    hf_mismatches,
    load_processor,
    special_ids,
    train_sentencepiece,
    write_hf_tokenizer,
)
from llmfab.errors import WorkloadError

from .corpus import FRENCH, GERMAN, document

EXTRA = ["  leading spaces and  double  spaces", "tabs\tand\nnewlines\n\nhere", "émoji 😀 and 日本語 text",
         "digits 1234567 and <|user|> symbol", "x<|user|>y", "trailing space ", GERMAN, FRENCH]


@pytest.fixture(scope="module")
def docs() -> list[str]:
    rng = random.Random(5)
    return [document(rng) for _ in range(120)]


@pytest.mark.parametrize(("kind", "vocab"), [("bpe", 600), ("unigram", 440)])
def test_hf_tokenizer_gives_sentencepiece_ids(kind: str, vocab: int, docs: list[str], tmp_path: Path) -> None:
    spec = Tokenizer(type=kind, vocab_size=vocab, user_defined_symbols=["<|user|>"])
    model = tmp_path / "tokenizer.model"
    train_sentencepiece(spec, docs[:100], model)
    write_hf_tokenizer(model, tmp_path / "hf")
    assert {p.name for p in (tmp_path / "hf").iterdir()} >= {"tokenizer.json", "tokenizer_config.json",
                                                             "special_tokens_map.json"}
    texts = docs + EXTRA
    assert hf_mismatches(model, tmp_path / "hf", texts, use_transformers=True) == []
    sp = load_processor(model)
    assert sp.get_piece_size() == vocab
    assert special_ids(model) == {"bosId": 1, "eosId": 2, "padId": 3, "unkId": 0}
    assert sp.piece_to_id("<|user|>") not in (0, sp.unk_id())
    assert sp.decode(sp.encode("line one\nline two")) == "line one\nline two"  # newlines survive


@pytest.mark.parametrize(("kind", "vocab"), [("bpe", 600), ("unigram", 440)])
def test_control_and_byte_pieces_written_in_text_are_spelled_out(kind: str, vocab: int, docs: list[str],
                                                                tmp_path: Path) -> None:
    """The shards' encoder never turns text into a control or byte-fallback id (a ``</s>`` in a
    document would end it early; ``<0x0A>`` would decode as a newline): it spells them out as
    SentencePiece does, and so does the served tokenizer when asked to split special tokens. (Where
    the vocabulary lacks ``<`` or ``>`` themselves a unigram model still gives the control id:
    Hugging Face's unknown-character score is below any piece's, see ``_unigram_scores``.)"""
    from transformers import AutoTokenizer

    model = tmp_path / "tokenizer.model"
    markup = "Markup such as <b>bold</b> or <i>x</i>, hex 0x0A or 0x41 (ABC 0123456789/) appears in real text."
    train_sentencepiece(Tokenizer(type=kind, vocab_size=vocab), docs[:100] + [markup] * 20, model)
    write_hf_tokenizer(model, tmp_path / "hf")
    served = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    sp = load_processor(model)
    texts = ["a <unk> b", "x </s> y <s> z <pad>", "bytes <0x0A> and <0x41>x", "</s>", "<s>The house"]
    reserved = {i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}
    for text, ids in zip(texts, Encoder((tmp_path / "hf" / "tokenizer.json").read_text()).encode(texts), strict=True):
        assert not reserved & set(ids), text
        assert ids == sp.encode(text)
        assert ids == served(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert served.decode(ids) == text


def test_long_lines_are_not_skipped(tmp_path: Path) -> None:
    long_doc = " ".join(f"word{i % 50} alpha beta" for i in range(3000))  # one ~40 KB line
    spec = Tokenizer(type="bpe", vocab_size=300)
    train_sentencepiece(spec, [long_doc], tmp_path / "m.model")
    assert "▁alpha" in {load_processor(tmp_path / "m.model").id_to_piece(i) for i in range(300)}


def test_vocab_too_large_names_field_and_limit(docs: list[str], tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"spec.tokenizer.vocabSize: 50000 .*at most \d+.*lower vocabSize"):
        train_sentencepiece(Tokenizer(type="bpe", vocab_size=50000), docs[:20], tmp_path / "m.model")
