"""Training windows from a Dataset's token shards, deterministic and shared out across ranks.

The format is the Dataset artifact (COMMON.md): per split, flat little-endian token files that
``numpy.memmap`` reads, documents separated by EOS. A split is seen as one token stream.

Sampling is a pure function of ``(seed, sequence index)``: each epoch cuts the stream into
non-overlapping windows of ``context + 1`` tokens at a random offset and visits them in a seeded
permutation. The global batch of a step is the next ``n`` sequence indices; rank ``r`` of ``w``
takes the ``r``-th contiguous slice, so ranks never share a window. The only state is how many
sequences were consumed, which is why a resumed run (even with another world size) sees exactly
the data the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch


class DataFormatError(ValueError):
    """The Dataset artifact does not match the documented shard format."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs from a Dataset manifest."""

    directory: Path
    vocab_size: int
    dtype: np.dtype[Any]
    eos_id: int
    manifest: dict[str, Any]

    @classmethod
    def load(cls, directory: Path) -> DatasetInfo:
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataFormatError(f"{directory}/manifest.json: unreadable ({e})") from e
        dtype = manifest.get("dtype")
        if dtype not in ("uint16", "uint32"):
            raise DataFormatError(f"{directory}/manifest.json: dtype {dtype!r} is not uint16 or uint32")
        return cls(directory, int(manifest["vocabSize"]), np.dtype(dtype), int(manifest["eosId"]), manifest)

    def split(self, name: str) -> TokenStream:
        splits = self.manifest.get("splits", {})
        if name not in splits:
            raise DataFormatError(f"{self.directory}: the Dataset has no {name!r} split (has {sorted(splits)})")
        files = [self.directory / s["file"] for s in splits[name]["shards"]]
        return TokenStream(tuple(files), self.dtype)


class TokenStream:
    """The shards of one split, read as one contiguous array of token ids."""

    def __init__(self, files: tuple[Path, ...], dtype: np.dtype[Any]) -> None:
        self.shards = [np.memmap(f, dtype=dtype, mode="r") for f in files if f.stat().st_size > 0]
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.num_tokens = int(self.offsets[-1])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens ``[start, start + n)`` as int64, across shard boundaries."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while filled < n:
            local = start + filled - int(self.offsets[shard])
            piece = self.shards[shard][local : local + n - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard += 1
        return out


class WindowSampler:
    """Seeded epochs of non-overlapping ``context + 1``-token windows; state = sequences consumed."""

    def __init__(self, stream: TokenStream, context: int, seed: int) -> None:
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
    stream: TokenStream, context: int, batch_size: int, batches: int, rank: int, world: int
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
