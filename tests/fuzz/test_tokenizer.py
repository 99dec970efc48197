"""Property: for any text, the ids the Dataset writes (``Encoder``, the exported tokenizer.json) are
the ids the served tokenizer gives (``AutoTokenizer``, special tokens written in the text split as
text), and they decode back to the text (byte fallback, whitespace, newlines kept)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llmfab.api.dataset import Tokenizer
from llmfab.data.tokenizer import Encoder, train_sentencepiece, write_hf_tokenizer
from tests.data.corpus import document

MARKUP = "Markup such as <b>bold</b> or <i>x</i>, hex 0x0A or 0x41 (ABC 0123456789/) appears in real text."
# letters of the training text, spaces and newlines, the control/byte spellings, and any character
# (documents reach the encoder as Arrow strings: valid UTF-8, so no lone surrogates)
TEXT = st.text(st.one_of(st.sampled_from(list("the cat sat <s></s><unk><pad><0x0A> \n\t")), st.characters(codec="utf-8")),
               max_size=80)


@pytest.fixture(scope="module", params=[("unigram", 440), ("bpe", 600)])
def tokenizers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Encoder, Any]:
    from transformers import AutoTokenizer

    kind, vocab = request.param
    rng = random.Random(5)
    out = tmp_path_factory.mktemp(kind)
    train_sentencepiece(Tokenizer(type=kind, vocab_size=vocab), [document(rng) for _ in range(100)] + [MARKUP] * 20,
                        out / "tokenizer.model")
    write_hf_tokenizer(out / "tokenizer.model", out / "hf")
    return Encoder((out / "hf" / "tokenizer.json").read_text()), AutoTokenizer.from_pretrained(str(out / "hf"))


@given(text=TEXT)
@example(text="a </s> b <s>")
def test_written_ids_are_the_served_ids_and_decode_to_the_text(tokenizers: tuple[Encoder, Any], text: str) -> None:
    encoder, served = tokenizers
    [ids] = encoder.encode([text])
    assert ids == served(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if "\u2581" not in text:  # the metaspace character itself decodes as a space (as in SentencePiece)
        assert served.decode(ids) == text
