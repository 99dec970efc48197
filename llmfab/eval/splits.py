"""Read a Dataset artifact's token splits (COMMON.md format) for evaluation.

Evaluation needs only two views of a split: the flat token stream (perplexity treats the split as
one stream of documents, each ending in EOS, exactly as training sees it) and the documents
themselves (generation prompts with the start of a held-out document). Both come straight from the
shard files with ``numpy.memmap``, so nothing is copied until a window is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmfab.store import read_manifest


class DatasetFormatError(ValueError):
    """The Dataset artifact is missing or does not follow the token-shard format."""


@dataclass(frozen=True)
class DatasetInfo:
    directory: Path
    manifest: dict[str, Any]

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eosId"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocabSize"])

    @property
    def hf_tokenizer_dir(self) -> Path:
        return self.directory / str(self.manifest.get("hfTokenizer", "tokenizer"))


def open_dataset(directory: Path) -> DatasetInfo:
    manifest = read_manifest(directory)
    if manifest is None:
        raise DatasetFormatError(
            f"{directory}: no manifest.json; the Dataset is not complete (run `llmfab data run` first)"
        )
    for key in ("dtype", "eosId", "splits", "vocabSize"):
        if key not in manifest:
            raise DatasetFormatError(f"{directory}/manifest.json: missing {key!r}; rebuild the Dataset")
    return DatasetInfo(directory, manifest)


def _shards(info: DatasetInfo, split: str) -> list[dict[str, Any]]:
    splits = info.manifest["splits"]
    if split not in splits:
        raise DatasetFormatError(
            f"{info.directory}: the Dataset has no {split!r} split (has {sorted(splits)}); "
            "give the Dataset a non-empty validation/test fraction"
        )
    shards: list[dict[str, Any]] = splits[split].get("shards", [])
    return shards


def split_tokens(info: DatasetInfo, split: str, max_tokens: int | None = None) -> np.ndarray:
    """The split's token stream (documents and their EOS ids), at most ``max_tokens`` long, as int64."""
    dtype = np.dtype(info.manifest["dtype"]).newbyteorder("<")
    parts: list[np.ndarray] = []
    remaining = max_tokens if max_tokens is not None else None
    for shard in _shards(info, split):
        if remaining is not None and remaining <= 0:
            break
        path = info.directory / shard["file"]
        if path.stat().st_size == 0:
            continue
        data = np.memmap(path, dtype=dtype, mode="r")
        take = data if remaining is None else data[:remaining]
        parts.append(np.asarray(take, dtype=np.int64))
        if remaining is not None:
            remaining -= len(take)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(parts)


def split_documents(info: DatasetInfo, split: str) -> list[np.ndarray]:
    """Every document of the split, without its trailing EOS, in shard order."""
    dtype = np.dtype(info.manifest["dtype"]).newbyteorder("<")
    documents: list[np.ndarray] = []
    for shard in _shards(info, split):
        path = info.directory / shard["file"]
        if path.stat().st_size == 0:
            continue
        data = np.memmap(path, dtype=dtype, mode="r")
        starts = np.load(info.directory / shard["index"]).astype(np.int64)
        ends = np.append(starts[1:], len(data))
        for start, end in zip(starts, ends, strict=True):
            doc = np.asarray(data[start:end], dtype=np.int64)
            if len(doc) and doc[-1] == info.eos_id:
                doc = doc[:-1]
            documents.append(doc)
    return documents
