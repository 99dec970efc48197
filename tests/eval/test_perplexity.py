from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmfab.data.shards import open_split
from llmfab.eval.model_io import load_model
from llmfab.eval.perplexity import perplexity, plan_windows


@pytest.mark.parametrize(
    ("n", "context", "stride"),
    [(200, 64, 32), (200, 64, 1), (200, 64, 63), (64, 64, 7), (10, 64, 32), (65, 64, 50)],
)
def test_windows_score_every_token_but_the_first_exactly_once(n: int, context: int, stride: int) -> None:
    scored: list[int] = []
    for w in plan_windows(n, context, stride):
        assert w.end - w.begin == min(context, n)
        assert w.begin < w.first_target <= w.end
        scored.extend(range(w.first_target, w.end))
    assert scored == list(range(1, n))


def test_stride_not_below_context_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValueError, match="stride"):
        plan_windows(100, 64, 64)


def test_single_window_perplexity_equals_exp_of_mean_cross_entropy(eval_fixture) -> None:
    model = load_model(eval_fixture.model_dir, "float32")
    tokens = open_split(eval_fixture.dataset_dir, "val").tokens(50)
    result = perplexity(model, tokens, context=64, stride=32)
    ids = torch.from_numpy(tokens).unsqueeze(0)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert result.windows == 1 and result.tokens_scored == 49
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-5)


def test_sliding_window_matches_brute_force_per_token_scoring(eval_fixture) -> None:
    model = load_model(eval_fixture.model_dir, "float32")
    tokens = open_split(eval_fixture.dataset_dir, "val").tokens(90)
    context = 16
    result = perplexity(model, tokens, context=context, stride=1, batch_size=7)
    # Brute force: each token t >= 1 predicted from the (up to) context-1 tokens before it.
    nll = []
    with torch.no_grad():
        for t in range(1, len(tokens)):
            prefix = torch.from_numpy(tokens[max(0, t - context + 1) : t]).unsqueeze(0)
            logp = torch.log_softmax(model(input_ids=prefix).logits[0, -1], dim=-1)
            nll.append(-logp[tokens[t]].item())
    assert result.tokens_scored == len(tokens) - 1
    assert result.mean_nll == pytest.approx(float(np.mean(nll)), rel=1e-5)


def test_batching_does_not_change_the_result(eval_fixture) -> None:
    model = load_model(eval_fixture.model_dir, "float32")
    tokens = open_split(eval_fixture.dataset_dir, "test").tokens()
    one = perplexity(model, tokens, context=64, stride=16, batch_size=1)
    many = perplexity(model, tokens, context=64, stride=16, batch_size=16)
    assert one.windows > 3
    assert many.perplexity == pytest.approx(one.perplexity, rel=1e-5)


def test_bf16_perplexity_is_close_to_fp32(eval_fixture) -> None:
    tokens = open_split(eval_fixture.dataset_dir, "val").tokens()
    fp32 = perplexity(load_model(eval_fixture.model_dir, "float32"), tokens, context=64)
    bf16 = perplexity(load_model(eval_fixture.model_dir, "bfloat16"), tokens, context=64)
    assert bf16.perplexity == pytest.approx(fp32.perplexity, rel=0.02)


def test_auto_dtype_is_float32_on_cpu_where_bf16_matmuls_are_slow() -> None:
    from llmfab.eval.model_io import compute_dtype

    expected = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    assert compute_dtype("auto") == expected and compute_dtype("bfloat16") == torch.bfloat16
