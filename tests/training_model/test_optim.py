"""Optimizers: decay groups, low-memory AdamW variants track fp32 AdamW, state bytes, determinism,
quantizers and stochastic rounding, LR schedule."""

from __future__ import annotations

import math

import pytest
import torch

from llmfab.api.training_run import OptimizerSpec
from llmfab.model.losses import chunked_cross_entropy
from llmfab.model.transformer import Transformer
from llmfab.training.components.lowmem_adam import (
    dequantize_signed,
    dequantize_unsigned,
    quantize_signed,
    quantize_unsigned,
    stochastic_round_,
)
from llmfab.training.components.optim import (
    build_optimizer,
    lr_multiplier,
    optimizer_state_bytes,
    param_groups,
)

from .conftest import VOCAB, tiny_args

STEPS = 25


def _train(kind: str, steps: int = STEPS, seed: int = 0) -> tuple[Transformer, list[float], torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = Transformer(tiny_args(hidden=64, intermediate=128, kv_heads=2))
    lr = 1e-2 if kind == "adafactor" else 3e-3
    opt = build_optimizer(model, OptimizerSpec(type=kind, lr=lr, warmup_steps=0), seed=seed)
    data = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(steps):
        loss = chunked_cross_entropy(model(data[:, :-1]), model.output.weight, data[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return model, losses, opt


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def fp32_adamw() -> tuple[Transformer, list[float], torch.optim.Optimizer]:
    return _train("adamw")


def test_no_decay_on_norms_embeddings_and_tied_head() -> None:
    tied = Transformer(tiny_args())
    decay, no_decay = param_groups(tied, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any(p is tied.embed.weight for p in no_decay["params"])
    assert all(p.ndim == 1 or p is tied.embed.weight for p in no_decay["params"])
    assert len(decay["params"]) == 3 * 4  # qkv, proj, gate_up, down in each of 3 blocks
    untied = Transformer(tiny_args(tie_embeddings=False))
    decay, _ = param_groups(untied, 0.1)
    assert any(p is untied.output.weight for p in decay["params"])


@pytest.mark.parametrize(("kind", "tolerance"), [("adamw-bf16", 0.03), ("adamw-8bit", 0.05)])
def test_low_memory_adamw_tracks_fp32_adamw(kind: str, tolerance: float, fp32_adamw: tuple) -> None:
    reference, reference_losses, _ = fp32_adamw
    model, losses, _ = _train(kind)
    drift = (_flat(model) - _flat(reference)).norm() / (_flat(reference)).norm()
    assert drift < tolerance
    assert abs(losses[-1] - reference_losses[-1]) < 0.05 * reference_losses[-1]
    assert losses[-1] < 0.7 * losses[0]


def test_adafactor_learns() -> None:
    _, losses, _ = _train("adafactor")
    assert losses[-1] < 0.9 * losses[0]


def test_state_bytes_shrink_against_fp32_adamw(fp32_adamw: tuple) -> None:
    full = optimizer_state_bytes(fp32_adamw[2])
    n = sum(p.numel() for p in fp32_adamw[0].parameters())
    assert full >= 8 * n
    assert optimizer_state_bytes(_train("adamw-bf16", steps=1)[2]) < 0.55 * full
    assert optimizer_state_bytes(_train("adamw-8bit", steps=1)[2]) < 0.35 * full
    assert optimizer_state_bytes(_train("adafactor", steps=1)[2]) < 0.2 * full


@pytest.mark.parametrize("kind", ["adamw", "adamw-bf16", "adamw-8bit"])
def test_same_seed_gives_bit_identical_weights(kind: str) -> None:
    a, _, _ = _train(kind, steps=4)
    b, _, _ = _train(kind, steps=4)
    assert torch.equal(_flat(a), _flat(b))


def test_eight_bit_quantizers_round_trip_within_their_grid() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 300, generator=g) * torch.logspace(-6, 0, 300)
    q, scale = quantize_signed(m)
    assert q.dtype == torch.int8 and q.shape == m.shape and scale.shape == (5, 3)
    back = dequantize_signed(q, scale)
    assert torch.all(torch.sign(back) * torch.sign(m) >= 0)
    assert ((back - m).abs() <= 2.2 * m.abs().view(5, -1).amax(1, keepdim=True) / 127).all()
    v = m.square()
    qv, sv = quantize_unsigned(v)
    back_v = dequantize_unsigned(qv, sv)
    assert qv.dtype == torch.uint8
    assert torch.all(back_v[v > 0] > 0)  # a positive second moment never becomes zero
    big = v > 1e-3 * v.amax(dim=1, keepdim=True)
    assert ((back_v[big] - v[big]).abs() / v[big]).max() < 0.1


def test_stochastic_rounding_is_unbiased() -> None:
    x = torch.full((20000,), 1.0 + 2**-10)  # between two bf16 neighbours, 1/8 of the way up
    out = torch.empty_like(x, dtype=torch.bfloat16)
    stochastic_round_(out, x, torch.Generator().manual_seed(0))
    assert set(out.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(out.float().mean().item() - x[0].item()) < 2e-4


def test_lr_schedule_warms_up_then_decays_to_min_ratio() -> None:
    spec = OptimizerSpec(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_multiplier(0, 100, spec) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, spec) == pytest.approx(1.0)
    assert lr_multiplier(55, 100, spec) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_multiplier(100, 100, spec) == pytest.approx(0.1)
    linear = spec.model_copy(update={"schedule": "linear"})
    assert lr_multiplier(55, 100, linear) == pytest.approx(0.1 + 0.9 * 0.5)
    constant = spec.model_copy(update={"schedule": "constant"})
    assert lr_multiplier(80, 100, constant) == 1.0
