from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from llmfab.eval.bias import evaluate_minimal_pairs, score_pairs, sentence_logprobs, stereotype_rate
from llmfab.eval.model_io import load_model
from llmfab.eval.probes_data import CATEGORIES, completion_prompts, minimal_pairs
from llmfab.eval.regard import evaluate_regard, score_completions


def test_every_category_has_balanced_pairs_that_differ_only_in_the_group_term() -> None:
    for category in CATEGORIES:
        pairs = minimal_pairs(category)
        assert len(pairs) >= 100
        for contrast in {p.contrast for p in pairs}:
            a, b = contrast.split("/")
            counts = [sum(p.contrast == contrast and p.stereotyped_group == g for p in pairs) for g in (a, b)]
            assert counts[0] == counts[1] > 0, (category, contrast, counts)
        for p in pairs:
            assert p.stereotyping != p.other
            assert p.stereotyping.split()[-1] == p.other.split()[-1]
        assert {p.group for p in completion_prompts(category)} >= {g for c in pairs for g in c.contrast.split("/")}


def test_a_scorer_that_always_prefers_the_stereotype_scores_one() -> None:
    pairs = minimal_pairs("gender")
    stereotyping = {p.stereotyping for p in pairs}
    result = score_pairs(pairs, lambda s: np.array([1.0 if x in stereotyping else 0.0 for x in s]), 200)
    assert result["overall"]["rate"] == 1.0
    assert result["categories"]["gender"]["ci95"] == [1.0, 1.0]


def test_a_scorer_that_merely_prefers_one_group_name_scores_one_half() -> None:
    pairs = minimal_pairs("gender")
    prefers_men = lambda s: np.array([1.0 if " man " in f" {x} " or "father" in x else 0.0 for x in s])  # noqa: E731
    result = score_pairs([p for p in pairs if "woman" in p.stereotyping + p.other], prefers_men, 500)
    assert result["overall"]["rate"] == pytest.approx(0.5)
    low, high = result["overall"]["ci95"]
    assert low < 0.5 < high


def test_ties_count_half_and_the_interval_brackets_the_rate() -> None:
    rate = stereotype_rate(np.array([1.0, 0.0, 2.0, 5.0]), np.array([0.0, 1.0, 2.0, 1.0]), 1000)
    assert rate.value == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert rate.low <= rate.value <= rate.high


def test_padded_batched_sentence_scores_equal_one_at_a_time(eval_fixture) -> None:
    model = load_model(eval_fixture.model_dir, "float32")
    sentences = ["The woman was kind.", "The old man worked as an engineer on the river boat.", "Hi."]
    batched = sentence_logprobs(model, eval_fixture.tokenizer, sentences, eval_fixture.eos_id, batch_size=8)
    single = [sentence_logprobs(model, eval_fixture.tokenizer, [s], eval_fixture.eos_id)[0] for s in sentences]
    np.testing.assert_allclose(batched, single, rtol=1e-5)
    assert (batched < 0).all()


def _train_on(model: LlamaForCausalLM, tokenizer, sentences: list[str], eos: int, steps: int) -> None:
    ids = [[eos, *tokenizer.encode(s, add_special_tokens=False), eos] for s in sentences]
    width = max(len(x) for x in ids)
    batch = torch.full((len(ids), width), -100)
    for i, x in enumerate(ids):
        batch[i, : len(x)] = torch.tensor(x)
    inputs = batch.clamp(min=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(ids), (64,), generator=gen)
        loss = model(input_ids=inputs[rows], labels=batch[rows]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("direction", ["stereotyping", "other"])
def test_model_trained_on_stereotypes_is_ranked_biased_and_on_counter_stereotypes_unbiased(
    eval_fixture, direction: str
) -> None:
    torch.manual_seed(0)
    model = load_model(eval_fixture.model_dir, "float32")
    pairs = minimal_pairs("gender")
    _train_on(model, eval_fixture.tokenizer, [getattr(p, direction) for p in pairs], eval_fixture.eos_id, 60)
    result = evaluate_minimal_pairs(model, eval_fixture.tokenizer, ["gender"], eval_fixture.eos_id, 500)
    rate = result["categories"]["gender"]
    if direction == "stereotyping":
        assert rate["rate"] > 0.8 and rate["ci95"][0] > 0.5
    else:
        assert rate["rate"] < 0.2 and rate["ci95"][1] < 0.5


def test_sentiment_gap_detects_a_group_that_gets_negative_completions() -> None:
    prompts = [p for p in completion_prompts("age")]
    completions = [["a wonderful, kind and loved teacher"] * 3 if p.group == "young"
                   else ["a terrible, cruel and hated thief"] * 3 for p in prompts]
    result = score_completions(prompts, completions, 500)["categories"]["age"]
    assert result["groups"]["young"]["mean"] > 0.5 > -0.5 > result["groups"]["old"]["mean"]
    assert result["gap"] > 1.0 and result["gapCi95"][0] > 1.0
    same = score_completions(prompts, [["a teacher at the school"]] * len(prompts), 500)["categories"]["age"]
    assert same["gap"] == 0.0 and same["gapCi95"] == [0.0, 0.0]


def test_regard_probe_runs_on_a_model_with_seeded_sampling(eval_fixture) -> None:
    model = load_model(eval_fixture.model_dir, "float32")
    run = lambda: evaluate_regard(model, eval_fixture.tokenizer, ["gender"], eval_fixture.eos_id,  # noqa: E731
                                  per_prompt=2, max_new_tokens=6, bootstrap=200)
    first, second = run(), run()
    groups = first["categories"]["gender"]["groups"]
    assert set(groups) == {"female", "male"}
    assert groups["female"]["n"] == 5 * 6 * 2
    assert first["categories"] == second["categories"]
    assert first["examples"] and "VADER" in first["scorer"]


class _UnknownWords:
    """A tokenizer that knows no group term: every word but 'The' becomes <unk> (id 0)."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1 if w == "The" else 0 for w in text.split()]


def test_pairs_the_tokenizer_cannot_tell_apart_are_left_out_not_counted_as_ties() -> None:
    result = evaluate_minimal_pairs(None, _UnknownWords(), ["age"], start_id=2, bootstrap=100)  # type: ignore[arg-type]
    assert result["overall"] is None and result["categories"] == {}
    assert result["indistinguishablePairs"] == len(minimal_pairs("age"))
