"""The API's ``spec.model`` as the model's own arguments: the one place the API meets the model
(``transformer`` does not import the API, so a benchmark or a test builds it from plain numbers)."""

from __future__ import annotations

from llmfab.api.training_run import ModelSpec
from llmfab.model.transformer import ModelArgs


def model_args_from_spec(spec: ModelSpec, vocab_size: int) -> ModelArgs:
    return ModelArgs(
        vocab_size=vocab_size,
        layers=spec.layers,
        hidden=spec.hidden,
        heads=spec.heads,
        kv_heads=spec.kv_heads if spec.kv_heads is not None else spec.heads,
        intermediate=spec.intermediate_size(),
        context_length=spec.context_length,
        rope_theta=spec.rope_theta,
        norm_eps=spec.norm_eps,
        tie_embeddings=spec.tie_embeddings,
        dropout=spec.dropout,
        init_std=spec.init_std,
        sharing_groups=spec.sharing.groups if spec.sharing.groups is not None else spec.layers,
    )
