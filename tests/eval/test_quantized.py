"""The 4-bit path: a real compressed-tensors W4A16 checkpoint (llmfab's own quantizer, RTN) loads in
evaluation and its perplexity is finite and close to the bf16 model's."""

from __future__ import annotations

import math

import pytest

from llmfab.data.shards import open_split
from llmfab.eval.model_io import is_quantized, load_model
from llmfab.eval.perplexity import perplexity

pytest.importorskip("compressed_tensors")


def test_compressed_tensors_4bit_model_evaluates_close_to_bf16(eval_fixture, tmp_path) -> None:
    from llmfab.compress.quantize import QuantizeOptions, quantize_checkpoint

    out = tmp_path / "model-4bit"
    quantize_checkpoint(eval_fixture.model_dir, out, QuantizeOptions(algorithm="rtn", group_size=32), None,
                        log=lambda _: None)
    assert is_quantized(out) and not is_quantized(eval_fixture.model_dir)
    tokens = open_split(eval_fixture.dataset_dir, "val").tokens()
    bf16 = perplexity(load_model(eval_fixture.model_dir, "bfloat16"), tokens, context=64)
    q4 = perplexity(load_model(out, "bfloat16"), tokens, context=64)
    assert math.isfinite(q4.perplexity)
    assert q4.perplexity != bf16.perplexity  # the weights really are different
    assert q4.perplexity == pytest.approx(bf16.perplexity, rel=0.1)
