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
from pathlib import Path, PurePosixPath
from tokenize import TokenError
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
        except (OSError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
            raise DataFormatError(f"{path}: unreadable ({e}); rebuild the Dataset") from e
        if not isinstance(manifest, dict):
            raise DataFormatError(f"{path}: holds a JSON {type(manifest).__name__}, not an object; rebuild the Dataset")
        for key in REQUIRED_KEYS:
            if key not in manifest:
                raise DataFormatError(f"{path}: missing {key!r}; rebuild the Dataset")
        if not isinstance(manifest["dtype"], str) or manifest["dtype"] not in DTYPES:
            raise DataFormatError(f"{path}: dtype {manifest['dtype']!r} is not uint16 or uint32; rebuild the Dataset")
        vocab, eos = manifest["vocabSize"], manifest["eosId"]
        if not _is_count(vocab) or vocab == 0:
            raise DataFormatError(f"{path}: vocabSize {vocab!r} is not a positive integer; rebuild the Dataset")
        if not _is_count(eos) or eos >= vocab:
            raise DataFormatError(f"{path}: eosId {eos!r} is not a token id below vocabSize {vocab}; "
                                  "rebuild the Dataset")
        if not isinstance(manifest["splits"], dict):
            raise DataFormatError(f"{path}: splits is not an object of split name to shards; rebuild the Dataset")
        if not isinstance(manifest.get("hfTokenizer", "tokenizer"), str):
            raise DataFormatError(f"{path}: hfTokenizer is not a directory name; rebuild the Dataset")
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
        return SplitReader(self.directory, splits[name], self.dtype, self.eos_id, name, self.vocab_size)


def _is_count(value: Any) -> bool:
    """A non-negative JSON integer (``true`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _member(directory: Path, relative: Any, what: str) -> Path:
    """``directory / relative`` if ``relative`` names a file inside the artifact (a tampered manifest
    must not make a reader open ``/etc/passwd`` or another Dataset's shards)."""
    manifest = directory / "manifest.json"
    if not isinstance(relative, str) or not relative:
        raise DataFormatError(f"{manifest}: {what} is {relative!r}, not a file name; rebuild the Dataset")
    parts = PurePosixPath(relative).parts
    if PurePosixPath(relative).is_absolute() or ".." in parts or "\\" in relative or "\0" in relative:
        raise DataFormatError(f"{manifest}: {what} {relative!r} is not a file inside {directory}; rebuild the Dataset")
    path = directory / relative
    try:
        inside = path.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        inside = False
    if not inside:
        raise DataFormatError(f"{manifest}: {what} {relative!r} leads outside {directory}; rebuild the Dataset")
    return path


class SplitReader:
    """One split of a Dataset as one token stream across its shards (memory-mapped), and its documents."""

    def __init__(self, directory: Path, entry: Any, dtype: np.dtype, eos_id: int, name: str = "split",
                 vocab_size: int | None = None) -> None:
        manifest = directory / "manifest.json"
        fix = "rebuild the Dataset"
        if not isinstance(entry, dict) or not isinstance(entry.get("shards", []), list):
            raise DataFormatError(f"{manifest}: splits.{name} is not an object with a list of shards; {fix}")
        if not _is_count(entry.get("documents", 0)):
            raise DataFormatError(f"{manifest}: splits.{name}.documents is not a count; {fix}")
        self.eos_id, self.vocab_size = eos_id, vocab_size
        self.shards: list[np.ndarray] = []
        self.paths: list[Path] = []
        self.indexes: list[tuple[Path, int]] = []  # each shard's index file and its document count
        for i, shard in enumerate(entry.get("shards", [])):
            where = f"splits.{name}.shards[{i}]"
            if not isinstance(shard, dict) or not _is_count(shard.get("tokens")) \
                    or not _is_count(shard.get("documents")):
                raise DataFormatError(f"{manifest}: {where} needs file, index, tokens and documents; {fix}")
            path = _member(directory, shard.get("file"), f"{where}.file")
            index = _member(directory, shard.get("index"), f"{where}.index")
            try:
                size = path.stat().st_size
                if size % dtype.itemsize:
                    raise DataFormatError(f"{path}: {size} bytes is not a whole number of {dtype.name} tokens "
                                          f"(truncated); {fix}")
                # numpy cannot map an empty file; an empty shard is an empty array.
                data = np.memmap(path, dtype=dtype, mode="r") if size else np.zeros(0, dtype)
            except OSError as e:
                raise DataFormatError(f"{path}: unreadable ({e.strerror or e}); {fix}") from None
            if len(data) != shard["tokens"]:
                raise DataFormatError(f"{path}: {len(data)} tokens, but the manifest says {shard['tokens']}; "
                                      f"{fix}")
            self.shards.append(data)
            self.paths.append(path)
            self.indexes.append((index, shard["documents"]))
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
            if self.vocab_size is not None and len(piece) and int(piece.max()) >= self.vocab_size:
                raise DataFormatError(f"{self.paths[shard]}: holds token id {int(piece.max())}, outside the "
                                      f"vocabulary of {self.vocab_size} (the file was altered); rebuild the Dataset")
            out[pos: pos + len(piece)] = piece
            pos += len(piece)
            shard += 1
        return out

    def tokens(self, max_tokens: int | None = None) -> np.ndarray:
        """The split's stream from its start (documents and their EOS ids), at most ``max_tokens`` long."""
        return self.read(0, self.num_tokens if max_tokens is None else min(max_tokens, self.num_tokens))

    def document_spans(self) -> Iterator[tuple[int, int]]:
        """(start, end) token offsets of each document in the split; end includes its EOS."""
        for shard_start, (idx_path, documents), data in zip(self.starts[:-1], self.indexes, self.shards, strict=True):
            if not len(data):
                continue
            starts = _load_index(idx_path, documents, len(data))
            ends = np.append(starts[1:], len(data))
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                yield int(shard_start + s), int(shard_start + e)

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's ids as int64, without its trailing EOS, in shard order."""
        for start, end in self.document_spans():
            doc = self.read(start, end - start)
            yield doc[:-1] if len(doc) and doc[-1] == self.eos_id else doc


def _load_index(path: Path, documents: int, tokens: int) -> np.ndarray:
    """A shard's document starts, checked: ``documents`` of them, from 0, increasing, inside the
    shard's ``tokens``. Memory-mapped, and never unpickled: an index that claims more entries than
    its file holds (2^40 documents) fails here without allocating them."""
    fix = "rebuild the Dataset"
    try:
        starts = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, SyntaxError, TokenError, TypeError, RecursionError) as e:
        # not .npy, object dtype, shorter than its header says, a header numpy cannot parse
        raise DataFormatError(f"{path}: not a shard index ({e}); {fix}") from None
    if not isinstance(starts, np.ndarray) or starts.ndim != 1 or starts.dtype.kind not in "iu":
        raise DataFormatError(f"{path}: not a one-dimensional integer array; {fix}")
    if len(starts) != documents:
        raise DataFormatError(f"{path}: {len(starts)} document starts, but the manifest says {documents}; {fix}")
    if len(starts) and (starts[0] != 0 or starts[-1] >= tokens or np.any(np.diff(starts.astype(np.int64)) <= 0)):
        raise DataFormatError(f"{path}: document starts are not increasing from 0 within the shard's {tokens} "
                              f"tokens; {fix}")
    return np.asarray(starts, dtype=np.int64)


def open_split(dataset_dir: Path, split: str) -> SplitReader:
    """Shorthand for ``DatasetInfo.load(dataset_dir).split(split)``."""
    return DatasetInfo.load(Path(dataset_dir)).split(split)
