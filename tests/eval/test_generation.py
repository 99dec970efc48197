from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmfab.data.shards import open_split
from llmfab.eval.generation import evaluate_generation, score, select_documents, write_samples_jsonl
from llmfab.eval.model_io import load_model


def test_identical_strings_score_perfectly_and_disjoint_ones_zero() -> None:
    refs = ["the cat sat on the mat today", "a quick brown fox jumps over the dog"]
    bleu, signature, r1, r2, rl = score(refs, refs)
    assert bleu == pytest.approx(100.0)
    assert (r1, r2, rl) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0))
    assert "nrefs:1" in signature and "tok:13a" in signature and "version:" in signature
    bleu, _, r1, r2, rl = score(["zebra yak quokka", "ocelot lynx"], refs)
    assert bleu == 0.0 and r1 == 0.0 and rl == 0.0


def test_rouge_matches_hand_computed_f1() -> None:
    # ROUGE-1: 2 of 2 hypothesis words match, 2 of 6 reference words -> F1 = 2PR/(P+R) = 0.5.
    _, _, r1, r2, rl = score(["the cat"], ["the cat sat on the mat"])
    assert r1 == pytest.approx(0.5)
    assert r2 == pytest.approx(2 * 1.0 * 0.2 / 1.2)  # 1/1 bigram precision, 1/5 recall
    assert rl == pytest.approx(0.5)


def test_documents_too_short_give_a_clear_error() -> None:
    with pytest.raises(ValueError, match="promptTokens"):
        select_documents([np.arange(5), np.arange(8)], needed=10, samples=3)
    assert select_documents([np.arange(20)] * 10, needed=10, samples=3) == [0, 4, 9]


def test_greedy_continuations_match_a_manual_argmax_loop(eval_fixture, tmp_path) -> None:
    model = load_model(eval_fixture.model_dir, "float32")
    documents = list(open_split(eval_fixture.dataset_dir, "test").documents())
    result = evaluate_generation(model, eval_fixture.tokenizer, documents, samples=5, prompt_tokens=12,
                                 max_new_tokens=10, eos_id=eval_fixture.eos_id, context=64, batch_size=2)
    assert len(result.samples) == 5
    first = result.samples[0]
    doc = documents[first.document]
    tok = eval_fixture.tokenizer
    assert first.prompt == tok.decode(doc[:12].tolist(), skip_special_tokens=True)
    assert first.reference == tok.decode(doc[12:22].tolist(), skip_special_tokens=True)
    ids = torch.from_numpy(doc[:12]).unsqueeze(0)
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(10):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == eval_fixture.eos_id:
                break
            generated.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    assert first.hypothesis == tok.decode(generated, skip_special_tokens=True)
    assert 0.0 <= result.bleu <= 100.0 and 0.0 <= result.rouge_l <= 1.0

    path = tmp_path / "generations.jsonl"
    write_samples_jsonl(path, result.samples)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["hypothesis"] for x in lines] == [s.hypothesis for s in result.samples]
    assert set(lines[0]) == {"document", "prompt", "reference", "hypothesis"}
    assert [p.name for p in tmp_path.iterdir()] == ["generations.jsonl"]


def test_prompt_plus_generation_longer_than_context_is_rejected(eval_fixture) -> None:
    model = load_model(eval_fixture.model_dir, "float32")
    with pytest.raises(ValueError, match="maxNewTokens"):
        evaluate_generation(model, eval_fixture.tokenizer, [np.arange(200)], samples=1, prompt_tokens=40,
                            max_new_tokens=40, eos_id=2, context=64)
