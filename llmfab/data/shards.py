"""Token shards: the Dataset artifact's train/val/test files, their one writer and their one reader.

Format: each split directory holds ``shard-NNNNN.bin``, flat little-endian token ids
(``numpy.memmap``-able, dtype from the manifest), every document its ids followed by one EOS id
(no BOS), and ``shard-NNNNN.idx.npy``, the int64 start offset of each document in its shard. A
shard closes at a document boundary once it holds ``shard_tokens``. The manifest entry of each
shard records tokens, documents and the sha256 of the ``.bin`` file; the manifest itself records
``vocabSize``, ``dtype`` (``uint16``/``uint32``), ``eosId``, ``hfTokenizer`` and ``splits``.

Everything that writes shards (the data stage, test fixtures) uses :class:`ShardWriter`;
everything that reads them (training, evaluation, quantization calibration) goes through
:meth:`DatasetInfo.load` and :class:`SplitReader`. numpy only: the data image may lack torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.typing import ArrayLike

SPLITS = ("train", "val", "test")
DTYPES = ("uint16", "uint32")
REQUIRED_KEYS = ("dtype", "eosId", "splits", "vocabSize")


class DataFormatError(ValueError):
    """The Dataset artifact is missing or does not follow the token-shard format."""


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

    def write(self, ids: ArrayLike) -> None:
        """One document's ids (EOS appended here)."""
        if self._file is None:
            self._open()
        assert self._file is not None
        ids = np.asarray(ids)
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
        """Close the last shard; return the split's manifest entry (tokens, documents, shards)."""
        self._close()
        return {"tokens": sum(s["tokens"] for s in self.shards),
                "documents": sum(s["documents"] for s in self.shards), "shards": self.shards}


def write_split(root: Path, split: str, documents: Iterable[ArrayLike], dtype: np.dtype, eos_id: int,
                shard_tokens: int = 1 << 62) -> dict[str, Any]:
    """Every document of one split through a :class:`ShardWriter`; the split's manifest entry.

    The default ``shard_tokens`` puts the whole split in one shard (what small fixtures want).
    """
    writer = ShardWriter(root, split, dtype, eos_id, shard_tokens)
    for ids in documents:
        writer.write(ids)
    return writer.finish()


@dataclass(frozen=True)
class DatasetInfo:
    """A Dataset artifact's manifest, checked against the format; :meth:`split` opens a split."""

    directory: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, directory: Path) -> DatasetInfo:
        directory = Path(directory)
        path = directory / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise DataFormatError(
                f"{directory}: no manifest.json; the Dataset is not complete (run `llmfab data run` first)"
            ) from None
        except (OSError, json.JSONDecodeError) as e:
            raise DataFormatError(f"{path}: unreadable ({e}); rebuild the Dataset") from e
        for key in REQUIRED_KEYS:
            if key not in manifest:
                raise DataFormatError(f"{path}: missing {key!r}; rebuild the Dataset")
        if manifest["dtype"] not in DTYPES:
            raise DataFormatError(f"{path}: dtype {manifest['dtype']!r} is not uint16 or uint32; rebuild the Dataset")
        return cls(directory, manifest)

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocabSize"])

    @property
    def eos_id(self) -> int:
        return int(self.manifest["eosId"])

    @property
    def dtype(self) -> np.dtype:
        dtype: np.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        return dtype

    @property
    def hf_tokenizer_dir(self) -> Path:
        return self.directory / str(self.manifest.get("hfTokenizer", "tokenizer"))

    def split(self, name: str) -> SplitReader:
        splits = self.manifest["splits"]
        if name not in splits:
            raise DataFormatError(
                f"{self.directory}: the Dataset has no {name!r} split (has {sorted(splits)}); "
                "give the Dataset a non-empty validation/test fraction"
            )
        return SplitReader(self.directory, splits[name], self.dtype, self.eos_id)


class SplitReader:
    """One split of a Dataset as one token stream across its shards (memory-mapped), and its documents."""

    def __init__(self, directory: Path, entry: dict[str, Any], dtype: np.dtype, eos_id: int) -> None:
        self.eos_id = eos_id
        self.shards: list[np.ndarray] = []
        self.indexes: list[Path] = []
        for shard in entry.get("shards", []):
            path = directory / shard["file"]
            # numpy cannot map an empty file; an empty shard is an empty array.
            data = np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
            if len(data) != shard["tokens"]:
                raise DataFormatError(f"{path}: {len(data)} tokens, but the manifest says {shard['tokens']}; "
                                      "rebuild the Dataset")
            self.shards.append(data)
            self.indexes.append(directory / shard["index"])
        self.starts = np.concatenate(([0], np.cumsum([len(s) for s in self.shards]))).astype(np.int64)
        self.num_tokens = int(self.starts[-1])
        self.num_documents = int(entry.get("documents", 0))

    def read(self, start: int, n: int) -> np.ndarray:
        """Tokens ``[start, start + n)`` of the split as int64 (crossing shard boundaries)."""
        if start < 0 or n < 0 or start + n > self.num_tokens:
            raise IndexError(f"tokens [{start}, {start + n}) outside the split's {self.num_tokens} tokens")
        out = np.empty(n, dtype=np.int64)
        pos = 0
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while pos < n:
            local = start + pos - int(self.starts[shard])
            piece = self.shards[shard][local: local + n - pos]
            out[pos: pos + len(piece)] = piece
            pos += len(piece)
            shard += 1
        return out

    def tokens(self, max_tokens: int | None = None) -> np.ndarray:
        """The split's stream from its start (documents and their EOS ids), at most ``max_tokens`` long."""
        return self.read(0, self.num_tokens if max_tokens is None else min(max_tokens, self.num_tokens))

    def document_spans(self) -> Iterator[tuple[int, int]]:
        """(start, end) token offsets of each document in the split; end includes its EOS."""
        for shard_start, idx_path, data in zip(self.starts[:-1], self.indexes, self.shards, strict=True):
            if not len(data):
                continue
            starts = np.load(idx_path, mmap_mode="r")
            ends = np.append(starts[1:], len(data))
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                yield int(shard_start + s), int(shard_start + e)

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's ids as int64, without its trailing EOS, in shard order."""
        for start, end in self.document_spans():
            doc = self.read(start, end - start)
            yield doc[:-1] if len(doc) and doc[-1] == self.eos_id else doc


def open_split(dataset_dir: Path, split: str) -> SplitReader:
    """Shorthand for ``DatasetInfo.load(dataset_dir).split(split)``."""
    return DatasetInfo.load(Path(dataset_dir)).split(split)
