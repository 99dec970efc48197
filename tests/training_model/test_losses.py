"""chunked_cross_entropy equals F.cross_entropy on full logits, and never allocates them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from llmfab.model.losses import chunked_cross_entropy


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 11, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (3, 11), generator=g)
    targets[0, :4] = -100  # ignored positions (e.g. padding or an SFT prompt)
    return hidden, weight, targets


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [1, 7, 33, 4096])
def test_value_and_gradients_equal_full_logits_cross_entropy(smoothing: float, chunk: int) -> None:
    hidden, weight, targets = _problem()
    loss = chunked_cross_entropy(hidden, weight, targets, label_smoothing=smoothing, chunk_tokens=chunk)
    loss.backward()
    grads = hidden.grad, weight.grad
    hidden.grad = weight.grad = None
    reference = F.cross_entropy((hidden @ weight.T).view(-1, 50), targets.view(-1), label_smoothing=smoothing)
    reference.backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)


def test_backward_scales_by_the_incoming_gradient() -> None:
    hidden, weight, targets = _problem()
    (3.0 * chunked_cross_entropy(hidden, weight, targets, chunk_tokens=5)).backward()
    grad = hidden.grad
    hidden.grad = None
    (3.0 * F.cross_entropy((hidden @ weight.T).view(-1, 50), targets.view(-1))).backward()
    torch.testing.assert_close(grad, hidden.grad)


def test_no_grad_path_gives_the_same_value() -> None:
    hidden, weight, targets = _problem()
    with torch.no_grad():
        value = chunked_cross_entropy(hidden, weight, targets, label_smoothing=0.1, chunk_tokens=4)
        reference = F.cross_entropy((hidden @ weight.T).view(-1, 50), targets.view(-1), label_smoothing=0.1)
    torch.testing.assert_close(value, reference)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    hidden, weight, targets = _problem()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=8)
    loss.backward()
    reference = F.cross_entropy((hidden @ weight.T).view(-1, 50), targets.view(-1))
    assert loss.dtype == torch.float32
    assert abs(loss.item() - reference.item()) < 0.05 * reference.item()
    assert hidden.grad is not None and hidden.grad.dtype == torch.float32


class _LargestTensor(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_as_large_as_the_full_logits_is_allocated() -> None:
    tokens, vocab, chunk = 64, 500, 16
    hidden = torch.randn(tokens, 8, requires_grad=True)
    weight = torch.randn(vocab, 8, requires_grad=True)
    targets = torch.randint(0, vocab, (tokens,))
    with _LargestTensor() as mode:
        chunked_cross_entropy(hidden, weight, targets, label_smoothing=0.1, chunk_tokens=chunk).backward()
    assert mode.largest <= chunk * vocab < tokens * vocab


def test_bad_arguments_are_refused() -> None:
    hidden, weight, targets = _problem()
    with pytest.raises(ValueError, match="label_smoothing"):
        chunked_cross_entropy(hidden, weight, targets, label_smoothing=1.0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_cross_entropy(hidden, weight, targets, chunk_tokens=0)
