"""A card's free text comes from a spec (source names, origins, licences of sources, intended use,
limitations, tags): whatever it holds, the card is one front matter huggingface_hub parses back to
the same metadata and figures, and each table keeps its columns."""

from __future__ import annotations

import re

from huggingface_hub import ModelCard
from hypothesis import given
from hypothesis import strategies as st

from llmfab.cards.facts import (
    CardFacts,
    DataFacts,
    ModelFacts,
    ReleaseFacts,
    SourceFacts,
    StageFacts,
    StepFacts,
)
from llmfab.cards.metadata import check, figures_of
from llmfab.cards.render import render

text = st.text(max_size=60)
MODEL = ModelFacts(architecture="LlamaForCausalLM", parameters=1000, layers=2, hidden=64, heads=2, kv_heads=2,
                   intermediate=192, context_length=64, vocab_size=300, dtype="bfloat16")


@given(name=text, where=text, license_=st.one_of(st.none(), text), origin=st.one_of(st.none(), text),
       removed=st.dictionaries(text, st.integers(0, 10**9), max_size=3), intended=st.one_of(st.none(), text),
       limitations=st.one_of(st.none(), text), tags=st.lists(st.text(min_size=1, max_size=20), max_size=3),
       figure=st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_a_card_of_any_spec_text_parses_back_to_its_metadata(
    name: str, where: str, license_: str | None, origin: str | None, removed: dict[str, int],
    intended: str | None, limitations: str | None, tags: list[str], figure: float,
) -> None:
    data = DataFacts(kind="Dataset", name="books", role="pretraining text",
                     sources=[SourceFacts(name=name, where=where, license=license_, origin=origin, documents=3)],
                     steps=[StepFacts(name="c4", documents_in=5, documents_out=3, removed=removed)])
    release = ReleaseFacts(license="mit", license_from="spec.release.license", tags=tags, intended_use=intended,
                           limitations=limitations)
    facts = CardFacts(this=StageFacts(kind="TrainingRun", name="tiny", role="pretrain", license="mit", data=[data]),
                      release=release, model=MODEL, dataset="books")
    card = render(facts, {"eval.testPerplexity": figure})
    again = ModelCard(str(card))
    assert again.data.to_dict() == card.data.to_dict() and check(again) == []
    assert figures_of(again) == {"eval.testPerplexity": figure}
    lines = again.text.splitlines()
    header = next(i for i, line in enumerate(lines) if "| Source | Read from |" in line)
    assert len(re.findall(r"(?<!\\)\|", lines[header + 2])) == 6  # the source's row: five cells, none split
