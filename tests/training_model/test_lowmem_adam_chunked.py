"""The chunked low-memory AdamW equals the unchunked one it replaced (kept in
``lowmem_adam_reference.py``) up to float rounding, keeps its state layout, and stays deterministic.

Chunks are made tiny so every parameter here spans several of them; one matrix has a column count that
is not a multiple of the 8-bit block (a partial last block per row)."""

from __future__ import annotations

import copy

import pytest
import torch

from llmfab.training.components import lowmem_adam
from llmfab.training.components.lowmem_adam import BLOCK, AdamW8bit, AdamWBF16

from . import lowmem_adam_reference as reference

SHAPES = [(40, 300), (64, 256), (64,), (10, 20)]  # 300 % BLOCK != 0; (64,) and (10, 20) keep fp32 moments
STEPS = 6


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lowmem_adam, "CHUNK_ELEMENTS_PER_THREAD", 2048)


def _params(dtype: torch.dtype) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.02).to(dtype)) for s in SHAPES]


def _run(cls: type[torch.optim.Optimizer], dtype: torch.dtype, steps: int = STEPS,
         ) -> tuple[list[torch.nn.Parameter], list[torch.Tensor], torch.optim.Optimizer]:
    """``steps`` steps with gradients spanning 4 decades along each row (as real moments do)."""
    params = _params(dtype)
    start = [p.detach().float().clone() for p in params]
    groups = [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]
    opt = cls(groups, lr=1e-2, seed=3)
    for k in range(steps):
        g = torch.Generator().manual_seed(100 + k)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=g) * torch.logspace(-4, 0, p.shape[-1])).to(dtype)
        opt.step()
    return params, start, opt


def _relative_change_error(new: list[torch.nn.Parameter], old: list[torch.nn.Parameter],
                           start: list[torch.Tensor]) -> float:
    """‖new − old‖ over ‖old − start‖: the disagreement as a share of what the steps moved."""
    diff = torch.cat([(a.float() - b.float()).flatten() for a, b in zip(new, old, strict=True)])
    moved = torch.cat([(b.float() - s).flatten() for b, s in zip(old, start, strict=True)])
    return (diff.norm() / moved.norm()).item()


def test_chunks_span_every_parameter_and_a_partial_block() -> None:
    assert 300 % BLOCK and all(torch.Size(s).numel() > 2048 for s in SHAPES[:2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eight_bit_step_matches_the_unchunked_math(dtype: torch.dtype) -> None:
    new, start, new_opt = _run(AdamW8bit, dtype)
    old, _, old_opt = _run(reference.AdamW8bit, dtype)
    # fp32-moment tensors: the same operations, chunk by chunk, and (bf16) the same noise in the same
    # order, so bit-identical.
    for i in (2, 3):
        assert torch.equal(new[i], old[i])
        assert torch.equal(new_opt.state[new[i]]["exp_avg_sq"], old_opt.state[old[i]]["exp_avg_sq"])
    # 8-bit tensors: constants folded into the scale and sqrt(sqrt) for pow(0.25) move a value on a
    # rounding boundary to the next code, rarely.
    for i in (0, 1):
        a, b = new_opt.state[new[i]], old_opt.state[old[i]]
        for key in ("exp_avg_q", "exp_avg_sq_q"):
            assert (a[key] != b[key]).float().mean() < 2e-3
        m_new = reference.dequantize_signed(a["exp_avg_q"], a["exp_avg_scale"])
        m_old = reference.dequantize_signed(b["exp_avg_q"], b["exp_avg_scale"])
        assert (m_new - m_old).norm() < 1e-3 * m_old.norm()
        torch.testing.assert_close(a["exp_avg_sq_scale"], b["exp_avg_sq_scale"], rtol=1e-3, atol=0)
    assert _relative_change_error(new, old, start) < (2e-3 if dtype == torch.float32 else 2e-2)


def test_bf16_moments_match_the_unchunked_math_within_rounding() -> None:
    new, start, new_opt = _run(AdamWBF16, torch.float32)
    old, _, old_opt = _run(reference.AdamWBF16, torch.float32)
    assert _relative_change_error(new, old, start) < 2e-2
    for a, b in zip(new, old, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = new_opt.state[a][key].float(), old_opt.state[b][key].float()
            assert (x - y).norm() < 2e-2 * y.norm()


def test_bf16_moments_equal_the_unchunked_ones_when_a_tensor_is_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """One chunk draws the parameter's, m's and v's noise in the old order: bit-identical."""
    monkeypatch.setattr(lowmem_adam, "CHUNK_ELEMENTS_PER_THREAD", 1 << 16)
    for dtype in (torch.float32, torch.bfloat16):
        new, _, _ = _run(AdamWBF16, dtype)
        old, _, _ = _run(reference.AdamWBF16, dtype)
        assert all(torch.equal(a, b) for a, b in zip(new, old, strict=True))


def test_chunked_bf16_moment_rounding_is_unbiased() -> None:
    """m after one step is 0.1·g exactly in fp32; its stochastically rounded bf16 copies, drawn chunk
    by chunk, average to it."""
    g = torch.full((40, 500), 1.0 + 2**-9)
    p = torch.nn.Parameter(torch.zeros_like(g))
    p.grad = g.clone()
    opt = AdamWBF16([p], lr=1e-3, betas=(0.9, 0.999))
    opt.step()
    exact = torch.zeros_like(g).lerp_(g, 0.1)[0, 0].item()
    stored = opt.state[p]["exp_avg"].float()
    assert stored.unique().numel() == 2  # both bf16 neighbours occur
    assert abs(stored.mean().item() - exact) < 0.02 * 2**-7 * exact  # 2% of the bf16 spacing


@pytest.mark.parametrize("cls", [AdamW8bit, AdamWBF16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_seed_same_result_and_state_layout_unchanged(cls: type, dtype: torch.dtype) -> None:
    a, _, opt_a = _run(cls, dtype, steps=3)
    b, _, _ = _run(cls, dtype, steps=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    old_cls = getattr(reference, cls.__name__)
    _, _, old_opt = _run(old_cls, dtype, steps=3)
    new_sd, old_sd = opt_a.state_dict(), old_opt.state_dict()
    assert new_sd["param_groups"] == old_sd["param_groups"]
    for i, state in old_sd["state"].items():
        assert new_sd["state"][i].keys() == state.keys()
        for key, value in state.items():
            assert new_sd["state"][i][key].dtype == value.dtype
            assert new_sd["state"][i][key].shape == value.shape


def test_resumes_from_a_checkpoint_of_the_unchunked_optimizer() -> None:
    """State saved by the old code loads into the new one and continues like the old code does."""
    old, start, old_opt = _run(reference.AdamW8bit, torch.float32, steps=3)
    params = [torch.nn.Parameter(p.detach().clone()) for p in old]
    groups = [{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:], "weight_decay": 0.0}]
    new_opt = AdamW8bit(groups, lr=1e-2, seed=3)
    new_opt.load_state_dict(copy.deepcopy(old_opt.state_dict()))  # as read back from disk
    for k in range(3, 5):
        g = torch.Generator().manual_seed(100 + k)
        grads = [torch.randn(p.shape, generator=g) * torch.logspace(-4, 0, p.shape[-1]) for p in params]
        for p, q, gr in zip(params, old, grads, strict=True):
            p.grad, q.grad = gr.clone(), gr.clone()
        new_opt.step()
        old_opt.step()
    assert int(new_opt.state[params[0]]["step"].item()) == 5
    assert _relative_change_error(params, old, start) < 2e-3
