"""Training windows from a Dataset's token shards, deterministic and shared out across ranks.

The shards are read through :mod:`llmfab.data.shards` (the one reader of the Dataset artifact): a
split is one memory-mapped token stream of documents, each followed by EOS.

Sampling is a pure function of ``(seed, sequence index)``: each epoch cuts the stream into
non-overlapping windows of ``context + 1`` tokens at a random offset and visits them in a seeded
permutation. The global batch of a step is the next ``n`` sequence indices; rank ``r`` of ``w``
takes the ``r``-th contiguous slice, so ranks never share a window. The only state is how many
sequences were consumed, which is why a resumed run (even with another world size) sees exactly
the data the uninterrupted run would have seen.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from llmfab.data.shards import DataFormatError, SplitReader


class WindowSampler:
    """Seeded epochs of non-overlapping ``context + 1``-token windows; state = sequences consumed."""

    def __init__(self, stream: SplitReader, context: int, seed: int) -> None:
        self.stream = stream
        self.window = context + 1
        self.seed = seed
        if stream.num_tokens < 2 * self.window:
            raise DataFormatError(
                f"the split has {stream.num_tokens} tokens, fewer than two windows of "
                f"spec.model.contextLength + 1 = {self.window}; use a larger Dataset or a shorter context"
            )
        self.consumed = 0

    @lru_cache(maxsize=2)  # noqa: B019 - one sampler per run; the cache is the point
    def _epoch(self, epoch: int) -> tuple[int, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        offset = int(rng.integers(0, self.window))
        count = (self.stream.num_tokens - offset) // self.window
        return offset, rng.permutation(count)

    def start_of(self, index: int) -> int:
        """Stream offset of global sequence ``index``."""
        per_epoch = (self.stream.num_tokens - self.window) // self.window  # a lower bound for every offset
        epoch, position = divmod(index, per_epoch)
        offset, order = self._epoch(epoch)
        return offset + int(order[position]) * self.window

    def next_batch(self, global_sequences: int, rank: int, world: int) -> torch.Tensor:
        """This rank's share of the next global batch, ``[global_sequences // world, context + 1]``."""
        local = global_sequences // world
        first = self.consumed + rank * local
        rows = [self.stream.read(self.start_of(i), self.window) for i in range(first, first + local)]
        self.consumed += global_sequences
        return torch.from_numpy(np.stack(rows))

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "seed": self.seed, "window": self.window}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed = int(state["consumed"])


def validation_batches(
    stream: SplitReader, context: int, batch_size: int, batches: int, rank: int, world: int
) -> list[torch.Tensor]:
    """The same fixed windows at every evaluation: the first ``batches × batch_size × world``
    non-overlapping windows of the split (wrapping if it is short), split across ranks."""
    window = context + 1
    available = max(1, (stream.num_tokens - 1) // window)
    out = []
    for b in range(batches):
        first = (b * world + rank) * batch_size
        rows = [stream.read(((first + j) % available) * window, window) for j in range(batch_size)]
        out.append(torch.from_numpy(np.stack(rows)))
    return out
