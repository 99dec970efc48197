"""Token shards: the Dataset artifact's train/val/test files, their writer and their reader.

Format (COMMON.md "Dataset artifact format"): each split directory holds ``shard-NNNNN.bin``,
flat little-endian token ids (``numpy.memmap``-able, dtype from the manifest), every document
its ids followed by one EOS id (no BOS), and ``shard-NNNNN.idx.npy``, the int64 start offset of
each document in its shard. A shard closes at a document boundary once it holds ``shard_tokens``.
The manifest entry of each shard records tokens, documents and the sha256 of the ``.bin`` file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

SPLITS = ("train", "val", "test")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


class ShardWriter:
    """Appends documents (ids + EOS) to one split's shards."""

    def __init__(self, root: Path, split: str, dtype: np.dtype, eos_id: int, shard_tokens: int) -> None:
        self.root, self.split, self.dtype = root, split, dtype
        self.eos = eos_id
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file: BinaryIO | None = None
        self._hash: Any = None
        self._starts: list[int] = []
        self._tokens = 0

    def _open(self) -> None:
        n = len(self.shards)
        (self.root / self.split).mkdir(parents=True, exist_ok=True)
        self._name = f"{self.split}/shard-{n:05d}"
        self._file = (self.root / f"{self._name}.bin").open("wb")
        self._hash = hashlib.sha256()
        self._starts, self._tokens = [], 0

    def _close(self) -> None:
        if self._file is None:
            return
        self._file.close()
        np.save(self.root / f"{self._name}.idx.npy", np.asarray(self._starts, dtype=np.int64))
        self.shards.append({"file": f"{self._name}.bin", "index": f"{self._name}.idx.npy",
                            "tokens": self._tokens, "documents": len(self._starts),
                            "sha256": self._hash.hexdigest()})
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        """One document's ids (EOS appended here)."""
        if self._file is None:
            self._open()
        assert self._file is not None
        data = np.empty(len(ids) + 1, dtype=self.dtype)
        data[:-1] = ids
        data[-1] = self.eos
        raw = data.tobytes()
        self._file.write(raw)
        self._hash.update(raw)
        self._starts.append(self._tokens)
        self._tokens += len(data)
        if self._tokens >= self.shard_tokens:
            self._close()

    def finish(self) -> dict[str, Any]:
        self._close()
        return {"tokens": sum(s["tokens"] for s in self.shards),
                "documents": sum(s["documents"] for s in self.shards), "shards": self.shards}


class SplitReader:
    """Read one split of a Dataset as one token stream across its shards (memory-mapped)."""

    def __init__(self, dataset_dir: Path, split: str) -> None:
        manifest = json.loads((dataset_dir / "manifest.json").read_text())
        if split not in manifest["splits"]:
            raise KeyError(f"{dataset_dir} has no split {split!r} (has {', '.join(manifest['splits'])})")
        self.dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
        self.eos_id: int = manifest["eosId"]
        info = manifest["splits"][split]
        self.shards = [np.memmap(dataset_dir / s["file"], dtype=self.dtype, mode="r") if s["tokens"] else
                       np.zeros(0, self.dtype) for s in info["shards"]]
        self.indexes = [dataset_dir / s["index"] for s in info["shards"]]
        sizes = [len(s) for s in self.shards]
        self.starts = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.num_tokens = int(self.starts[-1])
        self.num_documents = int(info["documents"])

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens ``[start, start + n)`` of the split as one array (crossing shard boundaries)."""
        if start < 0 or start + n > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + n}) outside the split's {self.num_tokens} tokens")
        out = np.empty(n, dtype=self.dtype)
        pos = 0
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while pos < n:
            local = start + pos - self.starts[shard]
            take = min(n - pos, len(self.shards[shard]) - local)
            out[pos: pos + take] = self.shards[shard][local: local + take]
            pos += take
            shard += 1
        return out

    def document_spans(self) -> Iterator[tuple[int, int]]:
        """(start, end) token offsets of each document in the split; end includes its EOS."""
        for shard_start, idx_path, data in zip(self.starts[:-1], self.indexes, self.shards, strict=True):
            starts = np.load(idx_path)
            ends = np.append(starts[1:], len(data))
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                yield int(shard_start + s), int(shard_start + e)


def open_split(dataset_dir: Path, split: str) -> SplitReader:
    return SplitReader(Path(dataset_dir), split)
