"""AdamW with low-memory moments: bf16 with stochastic rounding, or block-wise 8-bit.

Both keep the update itself in fp32: each step dequantizes the moments, applies the usual AdamW
update (decoupled weight decay, bias correction), and stores the new moments back compressed.

Stochastic rounding of x to bf16 adds uniform noise below the 16 bits bf16 drops, then truncates, so
E[round(x)] = x. Its noise comes from a generator re-seeded from (seed, step, parameter index), which
makes a run deterministic and a resumed run identical to an uninterrupted one.

8-bit moments are quantized per block of ``BLOCK`` consecutive elements of a row (the last
dimension) with one fp32 absmax scale per block, through companding maps instead of a linear grid,
because the moments span many orders of magnitude within a block:
first moment m  -> int8  q = round(127·sign(m)·sqrt(|m|/absmax))          (m = absmax·sign(q)·(q/127)²)
second moment v -> uint8 q = round(255·(v/absmax)^(1/4)), at least 1 if v > 0  (v = absmax·(q/255)⁴)
v never rounds to zero while it is positive, so an update m/sqrt(v) cannot blow up. Blocks run along
rows, so a state is sharded like its parameter (FSDP2 shards dim 0). Tensors with fewer than
``MIN_8BIT_NUMEL`` elements or one dimension (norm weights) keep fp32 moments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

BLOCK = 128
MIN_8BIT_NUMEL = 4096


def _local(t: torch.Tensor) -> torch.Tensor:
    """The process's shard of a DTensor (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def stochastic_round_(out: torch.Tensor, x: torch.Tensor, generator: torch.Generator) -> None:
    """Write fp32 ``x`` into bf16 ``out`` with stochastic rounding."""
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    rounded = (bits + noise).bitwise_and_(-65536)  # keep sign, exponent and the top 7 mantissa bits
    out.copy_(rounded.view(torch.float32))  # exact: the dropped bits are zero


class _CompressedAdamW(torch.optim.Optimizer):
    """AdamW whose subclasses decide how the moments are stored (``_init_state``/``_load``/``_store``)."""

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device, step: int, index: int) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device)
        gen.manual_seed((self.seed * 1_000_003 + step * 65_537 + index) % (2**63))
        return gen

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _load(self, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _store(self, state: dict[str, Any], m: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    self._init_state(p, state)
                state["step"] += 1
                step = int(state["step"].item())
                param, grad = _local(p), _local(p.grad).float()
                m, v = self._load(state)
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
                gen = self._generator(param.device, step, index)
                master = param.float() if param.dtype != torch.float32 else param
                master.mul_(1 - lr * wd).addcdiv_(m, denom, value=-lr / (1 - beta1**step))
                if master is not param and param.dtype == torch.bfloat16:
                    stochastic_round_(param, master, gen)
                elif master is not param:
                    param.copy_(master)
                self._store(state, m, v, gen)
        return loss


class AdamWBF16(_CompressedAdamW):
    """AdamW with bf16 moments stored by stochastic rounding (4 bytes of state per parameter)."""

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16)

    def _load(self, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return _local(state["exp_avg"]).float(), _local(state["exp_avg_sq"]).float()

    def _store(self, state: dict[str, Any], m: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> None:
        stochastic_round_(_local(state["exp_avg"]), m, gen)
        stochastic_round_(_local(state["exp_avg_sq"]), v, gen)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """[..., cols] -> [rows, blocks, BLOCK], zero-padded at the end of each row."""
    rows = x.reshape(-1, x.shape[-1])
    pad = (-rows.shape[1]) % BLOCK
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    return rows.view(rows.shape[0], -1, BLOCK)


def _unblocks(b: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return b.reshape(b.shape[0], -1)[:, : like.shape[-1]].reshape(like.shape)


def quantize_signed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = _blocks(x)
    scale = b.abs().amax(dim=-1).clamp_min(1e-30)
    q = (b.abs() / scale.unsqueeze(-1)).sqrt_().mul_(127).round_().copysign_(b)
    return _unblocks(q, x).to(torch.int8), scale


def dequantize_signed(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    b = _blocks(q.float()).div_(127)
    return _unblocks(b.abs().square_().copysign_(b).mul_(scale.unsqueeze(-1)), q)


def quantize_unsigned(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = _blocks(x)
    scale = b.amax(dim=-1).clamp_min(1e-30)
    q = (b / scale.unsqueeze(-1)).pow_(0.25).mul_(255).round_()
    q = torch.where(b > 0, q.clamp_min_(1), 0.0)
    return _unblocks(q, x).to(torch.uint8), scale


def dequantize_unsigned(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    b = _blocks(q.float()).div_(255)
    return _unblocks(b.square_().square_().mul_(scale.unsqueeze(-1)), q)


def _scale_tensor(p: torch.Tensor) -> torch.Tensor:
    """Zero scales [rows, blocks]; a DTensor sharded like ``p`` when ``p`` is one (DCP reshards it)."""
    local = _local(p)
    blocks = -(-p.shape[-1] // BLOCK)
    scales = torch.zeros(local.numel() // max(1, local.shape[-1]), blocks, device=local.device)
    if local is p:
        return scales
    from torch.distributed.tensor import DTensor

    rows = p.numel() // p.shape[-1]
    assert isinstance(p, DTensor)
    return DTensor.from_local(scales, p.device_mesh, p.placements, run_check=False,
                              shape=torch.Size((rows, blocks)), stride=(blocks, 1))


class AdamW8bit(_CompressedAdamW):
    """AdamW with block-wise 8-bit moments (about 2 bytes of state per parameter)."""

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        if p.ndim < 2 or p.numel() < MIN_8BIT_NUMEL:
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            return
        state["exp_avg_q"] = torch.zeros_like(p, dtype=torch.int8)
        state["exp_avg_sq_q"] = torch.zeros_like(p, dtype=torch.uint8)
        state["exp_avg_scale"] = _scale_tensor(p)
        state["exp_avg_sq_scale"] = _scale_tensor(p)

    def _load(self, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "exp_avg" in state:
            return _local(state["exp_avg"]), _local(state["exp_avg_sq"])
        m = dequantize_signed(_local(state["exp_avg_q"]), _local(state["exp_avg_scale"]))
        v = dequantize_unsigned(_local(state["exp_avg_sq_q"]), _local(state["exp_avg_sq_scale"]))
        return m, v

    def _store(self, state: dict[str, Any], m: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> None:
        if "exp_avg" in state:
            return  # fp32 moments were updated in place
        for name, (q, scale) in (("exp_avg", quantize_signed(m)), ("exp_avg_sq", quantize_unsigned(v))):
            _local(state[f"{name}_q"]).copy_(q)
            _local(state[f"{name}_scale"]).copy_(scale)
