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

Speed: a step walks each parameter in chunks (``_chunk_elements``; whole rows for 8-bit states, so
a block never straddles two) through scratch buffers reused by every chunk and parameter, so
dequantize, update and quantize touch cached data and allocate nothing of the parameter's size. The
unchunked version made a dozen full-size fp32 temporaries per parameter and took 21x fused AdamW's
step time at 160M parameters (benchmarks/optimizer_step.py measures both). The constants of the
companding maps are folded into the block scales (m = q·|q|·absmax/127², v = q⁴·absmax/255⁴) and the
fourth root is ``sqrt(sqrt(x))``: fewer passes, the same values up to float rounding, so a stored code
can move to its neighbour where a value lies on a rounding boundary
(tests/training_model/test_lowmem_adam_chunked.py bounds this against the unchunked code).
Chunks run in order, so on CPU AdamW8bit draws the rounding noise of a bf16 parameter exactly as the
unchunked step did. AdamWBF16 draws the parameter's, m's and v's noise chunk by chunk rather than
tensor by tensor, which changes the noise (not its distribution) wherever a tensor spans more than one
chunk: keeping the old order would mean skipping the Mersenne-Twister stream ahead by the tensor's
size, which torch can only do by drawing, one to three extra random passes in a step that drawing
already dominates. On CUDA, Philox draws never matched chunk by chunk; a run stays deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

BLOCK = 128
_DENSE = torch.contiguous_format  # states row-major whatever the parameter's strides: chunks are views
MIN_8BIT_NUMEL = 4096
# Elements per chunk on CPU: this many per torch thread. torch splits an elementwise op statically into
# one piece per thread, so each thread keeps touching the same piece of the chunk and its fp32 buffers
# (1 MiB per piece) stay in that core's cache. Smaller chunks mean more ops, each a fork/join of the
# thread pool, which on a loaded machine costs more than the op (2^16..2^20 measured: 2^18 best,
# by a little). On CUDA each op is a kernel launch, so chunks are large.
CHUNK_ELEMENTS_PER_THREAD = 1 << 18
CUDA_CHUNK_ELEMENTS = 1 << 22


def _chunk_elements(device: torch.device) -> int:
    if device.type != "cpu":
        return CUDA_CHUNK_ELEMENTS
    return CHUNK_ELEMENTS_PER_THREAD * max(1, torch.get_num_threads())


def _local(t: torch.Tensor) -> torch.Tensor:
    """The process's shard of a DTensor (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def stochastic_round_(out: torch.Tensor, x: torch.Tensor, generator: torch.Generator,
                      noise: torch.Tensor | None = None) -> None:
    """Write fp32 ``x`` into bf16 ``out`` with stochastic rounding (``noise``: optional int32 scratch
    of ``x``'s size, so a chunked caller allocates nothing)."""
    bits = x.contiguous().view(torch.int32)
    if noise is None:
        noise = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator, out=noise)
    noise.add_(bits).bitwise_and_(-65536)  # keep sign, exponent and the top 7 mantissa bits
    out.copy_(noise.view(torch.float32))  # exact: the dropped bits are zero


class _Hyper(NamedTuple):
    beta1: float
    beta2: float
    lr: float
    wd: float
    eps: float
    bias1: float  # 1 - beta1**step
    bias2: float  # 1 - beta2**step


class _Scratch:
    """Chunk-sized buffers per (device, name), reused by every chunk of every parameter."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, str], torch.Tensor] = {}

    def get(self, device: torch.device, name: str, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (device, name)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self._buffers[key] = torch.empty(max(n, _chunk_elements(device)), dtype=dtype, device=device)
        return buf[:n]


def _adam_(master: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, h: _Hyper,
           denom: torch.Tensor) -> None:
    """The AdamW update in place on fp32 tensors of one shape (``denom``: scratch of that shape)."""
    m.lerp_(grad, 1 - h.beta1)
    v.mul_(h.beta2).addcmul_(grad, grad, value=1 - h.beta2)
    torch.div(v, h.bias2, out=denom).sqrt_().add_(h.eps)
    if h.wd:  # multiplying by 1.0 would be an exact no-op pass
        master.mul_(1 - h.lr * h.wd)
    master.addcdiv_(m, denom, value=-h.lr / h.bias1)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A 2-D view [rows, last dim] (a 1-D or 0-D tensor is one row); a view, never a copy, since the
    chunks write through it (states are created contiguous; parameters are made so by ``step``)."""
    return t.view(-1, t.shape[-1]) if t.ndim >= 1 else t.view(1, 1)


class _CompressedAdamW(torch.optim.Optimizer):
    """AdamW whose subclasses decide how the moments are stored and walked (``_init_state``/``_update``)."""

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._scratch = _Scratch()

    def _generator(self, device: torch.device, step: int, index: int) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device)
        gen.manual_seed((self.seed * 1_000_003 + step * 65_537 + index) % (2**63))
        return gen

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], h: _Hyper,
                gen: torch.Generator) -> None:
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
                h = _Hyper(beta1, beta2, group["lr"], group["weight_decay"], group["eps"],
                           1 - beta1**step, 1 - beta2**step)
                param, grad = _local(p), _local(p.grad)
                gen = self._generator(param.device, step, index)
                if param.is_contiguous():
                    self._update(param, grad.contiguous(), state, h, gen)
                else:  # chunks are views; a strided parameter is updated through a contiguous copy
                    work = param.contiguous()
                    self._update(work, grad.contiguous(), state, h, gen)
                    param.copy_(work)
        return loss

    def _master(self, param: torch.Tensor, name: str = "master") -> torch.Tensor:
        """fp32 view of a parameter chunk: the chunk itself, or a scratch copy of a bf16/fp16 one."""
        if param.dtype == torch.float32:
            return param
        return self._scratch.get(param.device, name, param.numel()).view(param.shape).copy_(param)

    def _write_back(self, param: torch.Tensor, master: torch.Tensor, gen: torch.Generator) -> None:
        if master is param:
            return
        if param.dtype == torch.bfloat16:
            noise = self._scratch.get(param.device, "noise", master.numel(), torch.int32).view(master.shape)
            stochastic_round_(param, master, gen, noise)
        else:
            param.copy_(master)

    def _grad32(self, grad: torch.Tensor) -> torch.Tensor:
        if grad.dtype == torch.float32:
            return grad
        return self._scratch.get(grad.device, "grad", grad.numel()).view(grad.shape).copy_(grad)

    def _update_fp32_moments(self, param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor,
                             v: torch.Tensor, h: _Hyper, gen: torch.Generator) -> None:
        """fp32 moments, updated in place, in flat chunks."""
        flat_p, flat_g, flat_m, flat_v = param.view(-1), grad.view(-1), m.view(-1), v.view(-1)
        size = _chunk_elements(param.device)

        def work(sl: slice) -> None:
            p = flat_p[sl]
            master = self._master(p)
            denom = self._scratch.get(p.device, "denom", p.numel())
            _adam_(master, self._grad32(flat_g[sl]), flat_m[sl], flat_v[sl], h, denom)
            self._write_back(p, master, gen)

        for start in range(0, flat_p.numel(), size):
            work(slice(start, start + size))


class AdamWBF16(_CompressedAdamW):
    """AdamW with bf16 moments stored by stochastic rounding (4 bytes of state per parameter)."""

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16, memory_format=_DENSE)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16, memory_format=_DENSE)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], h: _Hyper,
                gen: torch.Generator) -> None:
        flat_p, flat_g = param.view(-1), grad.view(-1)
        flat_m, flat_v = _local(state["exp_avg"]).view(-1), _local(state["exp_avg_sq"]).view(-1)
        scratch, dev = self._scratch, param.device
        size = _chunk_elements(dev)
        for start in range(0, flat_p.numel(), size):
            sl = slice(start, start + size)
            p = flat_p[sl]
            n = p.numel()
            master = self._master(p)
            m = scratch.get(dev, "m", n).copy_(flat_m[sl])
            v = scratch.get(dev, "v", n).copy_(flat_v[sl])
            _adam_(master, self._grad32(flat_g[sl]), m, v, h, scratch.get(dev, "denom", n))
            self._write_back(p, master, gen)
            noise = scratch.get(dev, "noise", n, torch.int32)
            stochastic_round_(flat_m[sl], m, gen, noise)
            stochastic_round_(flat_v[sl], v, gen, noise)


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
    q = (b.abs() * (127**2 / scale).unsqueeze(-1)).sqrt_().round_().copysign_(b)
    return _unblocks(q, x).to(torch.int8), scale


def dequantize_signed(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    b = _blocks(q.float()).div_(127)
    return _unblocks(b.abs().square_().copysign_(b).mul_(scale.unsqueeze(-1)), q)


def quantize_unsigned(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = _blocks(x)
    scale = b.amax(dim=-1).clamp_min(1e-30)
    q = (b / scale.unsqueeze(-1)).sqrt_().sqrt_().mul_(255).round_()
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


def _block_parts(x: torch.Tensor) -> list[tuple[torch.Tensor, slice]]:
    """Views of a [rows, cols] chunk as [rows, blocks, width] pieces (full blocks, then a partial last
    block when cols % BLOCK != 0) with the slice of the scale columns each covers; no padding copy."""
    cols = x.shape[1]
    full = cols // BLOCK
    parts = []
    if full:
        parts.append((x[:, : full * BLOCK].view(x.shape[0], full, BLOCK), slice(0, full)))
    if cols % BLOCK:
        parts.append((x[:, full * BLOCK:].unsqueeze(1), slice(full, full + 1)))
    return parts


class AdamW8bit(_CompressedAdamW):
    """AdamW with block-wise 8-bit moments (about 2 bytes of state per parameter)."""

    def _init_state(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        if p.ndim < 2 or p.numel() < MIN_8BIT_NUMEL:
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=_DENSE)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=_DENSE)
            return
        state["exp_avg_q"] = torch.zeros_like(p, dtype=torch.int8, memory_format=_DENSE)
        state["exp_avg_sq_q"] = torch.zeros_like(p, dtype=torch.uint8, memory_format=_DENSE)
        state["exp_avg_scale"] = _scale_tensor(p)
        state["exp_avg_sq_scale"] = _scale_tensor(p)

    def _update(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], h: _Hyper,
                gen: torch.Generator) -> None:
        if "exp_avg" in state:
            self._update_fp32_moments(param, grad, _local(state["exp_avg"]), _local(state["exp_avg_sq"]),
                                      h, gen)
            return
        rows_p, rows_g = _rows(param), _rows(grad)
        qm, qv = _rows(_local(state["exp_avg_q"])), _rows(_local(state["exp_avg_sq_q"]))
        sm, sv = _local(state["exp_avg_scale"]), _local(state["exp_avg_sq_scale"])
        cols = rows_p.shape[1]
        scratch, dev = self._scratch, param.device
        step_rows = max(1, _chunk_elements(dev) // cols)

        def work(rs: slice) -> None:
            p = rows_p[rs]
            shape, n = p.shape, p.numel()
            m = scratch.get(dev, "m", n).view(shape)
            v = scratch.get(dev, "v", n).view(shape)
            tmp = scratch.get(dev, "denom", n).view(shape)
            _dequantize_signed_(m, qm[rs], sm[rs], tmp)
            _dequantize_unsigned_(v, qv[rs], sv[rs])
            master = self._master(p)
            _adam_(master, self._grad32(rows_g[rs]), m, v, h, tmp)
            self._write_back(p, master, gen)
            _quantize_signed_(qm[rs], sm[rs], m, tmp)
            _quantize_unsigned_(qv[rs], sv[rs], v, tmp)

        for r in range(0, rows_p.shape[0], step_rows):
            work(slice(r, r + step_rows))


# In-place chunk versions of the four (de)quantizers above, into caller buffers, with the constants
# folded into the per-block scale: m = q·|q| · (absmax/127²) and v = q⁴ · (absmax/255⁴), where q·|q|
# and q² are exact in fp32. ``tmp`` is fp32 scratch of the chunk's shape. A folded factor is kept at
# or above the smallest normal float: an all-zero block (scale 1e-30, e.g. an embedding row no token
# has hit) would otherwise multiply by a subnormal, which x86 computes in slow microcode; it changes
# no value that can matter (v < 1e-28 against eps).

_TINY = torch.finfo(torch.float32).tiny

def _dequantize_signed_(out: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, tmp: torch.Tensor) -> None:
    out.copy_(q)
    out.mul_(torch.abs(out, out=tmp))
    for b, cols in _block_parts(out):
        b.mul_((scale[:, cols] / 127**2).clamp_min_(_TINY).unsqueeze(-1))


def _dequantize_unsigned_(out: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    out.copy_(q).square_().square_()
    for b, cols in _block_parts(out):
        b.mul_((scale[:, cols] / 255**4).clamp_min_(_TINY).unsqueeze(-1))


def _quantize_signed_(q: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, tmp: torch.Tensor) -> None:
    torch.abs(x, out=tmp)
    for b, cols in _block_parts(tmp):
        s = b.amax(dim=-1).clamp_min_(1e-30)
        scale[:, cols] = s
        b.mul_((127**2 / s).unsqueeze(-1))
    tmp.sqrt_().round_().copysign_(x)
    q.copy_(tmp)


def _quantize_unsigned_(q: torch.Tensor, scale: torch.Tensor, x: torch.Tensor, tmp: torch.Tensor) -> None:
    for (b, cols), (t, _) in zip(_block_parts(x), _block_parts(tmp), strict=True):
        s = b.amax(dim=-1).clamp_min_(1e-30)
        scale[:, cols] = s
        torch.div(b, s.unsqueeze(-1), out=t)
    tmp.sqrt_().sqrt_().mul_(255).round_()
    torch.maximum(tmp, torch.sign(x), out=tmp)  # at least 1 where x > 0; x >= 0, so 0 stays 0
    q.copy_(tmp)
