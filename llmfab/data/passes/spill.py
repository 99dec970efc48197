"""The documents that survived the clean pass, in input order, in Arrow files (segments).

Later passes read the corpus again (perplexity, the tokenizer sample, the shards) without holding
it in memory. Beside the files the driver keeps, per spilled document, its ``source:id`` label and,
when outliers are filtered, its statistics: small enough to stay in memory, needed by index.

The spill is a list of segments, ``spill-00000.arrow``, ``spill-00001.arrow``, ...: a segment ends
at each checkpoint of a build that resumes (:mod:`~llmfab.data.passes.checkpoint`), so what was
spilled before a checkpoint is a set of closed files it can trust. Each row also carries what the
driver's in-memory state is rebuilt from on resuming (key, URL, outlier statistics, MinHash band
keys and shingle count); Arrow's file format lets :meth:`Spill.restore` read those columns
without the text.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

SPILL_SCHEMA = pa.schema([("text", pa.large_string()), ("source", pa.string()), ("id", pa.string()),
                          ("url", pa.string()), ("key", pa.binary(16)), ("stats", pa.list_(pa.float64())),
                          ("bands", pa.list_(pa.uint64())), ("shingles", pa.int64())])


class Spill:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.segments = 0  # closed segment files
        self.labels: list[str] = []  # source:id of each spilled document
        self.stats: list[np.ndarray] = []  # outlier statistics per spilled batch, when enabled

    def __len__(self) -> int:
        return len(self.labels)

    def segment(self, n: int) -> Path:
        return self.directory / f"spill-{n:05d}.arrow"

    def writer(self) -> SpillWriter:
        return SpillWriter(self)

    def tables(self, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        """(index of the first row, table) over the closed segments, in order."""
        start = 0
        for n in range(self.segments):
            with pa.memory_map(str(self.segment(n)), "r") as source:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    table = pa.Table.from_batches([batch])
                    yield start, table.select(columns) if columns else table
                    start += batch.num_rows

    def texts(self, keep: np.ndarray, limit: int, key_filter: Callable[[bytes], bool] | None = None
              ) -> Iterator[list[str]]:
        """Texts of the kept documents (and, with ``key_filter``, only those whose key passes it),
        in order, in batches, at most ``limit`` in all."""
        taken = 0
        for start, table in self.tables(["text", "key"]):
            texts = table.column("text").to_pylist()
            keys = table.column("key").to_pylist()
            chosen = [t for j, (t, k) in enumerate(zip(texts, keys, strict=True)) if keep[start + j]
                      and (key_filter is None or key_filter(k))]
            chosen = chosen[: limit - taken]
            taken += len(chosen)
            if chosen:
                yield chosen
            if taken >= limit:
                return

    def rows(self, indexes: set[int], columns: list[str]) -> dict[int, dict[str, object]]:
        """The given columns of the documents at ``indexes`` (the audit trail's few)."""
        found: dict[int, dict[str, object]] = {}
        if not indexes:
            return found
        last = max(indexes)
        for start, table in self.tables(columns):
            for i in sorted(j for j in indexes if start <= j < start + table.num_rows):
                found[i] = {c: table.column(c)[i - start].as_py() for c in columns}
            if start + table.num_rows > last:
                break
        return found

    def restore(self, segments: int, outliers: bool) -> Iterator[pa.Table]:
        """Take ``segments`` closed segments as spilled (a resumed build); yield their tables without
        the text, for the caller to rebuild its dedup state from. Later segments, written after the
        last checkpoint, are removed."""
        self.segments = segments
        n = segments
        while self.segment(n).exists():
            self.segment(n).unlink()
            n += 1
        for _, table in self.tables(["source", "id", "key", "stats", "bands", "shingles"]):
            self.labels += [f"{s}:{i}" for s, i in zip(table.column("source").to_pylist(),
                                                        table.column("id").to_pylist(), strict=True)]
            if outliers and table.num_rows:
                self.stats.append(table.column("stats").combine_chunks().values.to_numpy().reshape(table.num_rows, -1))
            yield table


class SpillWriter:
    """Context manager appending tables (of :data:`SPILL_SCHEMA`'s columns) to the spill's next
    segment; :meth:`cut` closes it (on disk, fsynced) so a checkpoint can count it."""

    def __init__(self, spill: Spill) -> None:
        self.spill = spill
        self.file: pa.OSFile | None = None
        self.stream: pa.ipc.RecordBatchFileWriter | None = None

    def __enter__(self) -> SpillWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def write(self, table: pa.Table) -> None:
        if self.stream is None:
            self.file = pa.OSFile(str(self.spill.segment(self.spill.segments)), "wb")
            self.stream = pa.ipc.new_file(self.file, SPILL_SCHEMA)
        self.stream.write_table(table.select(SPILL_SCHEMA.names).cast(SPILL_SCHEMA))

    def cut(self) -> None:
        """Close the open segment, if any, and count it."""
        if self.stream is None or self.file is None:
            return
        self.stream.close()
        self.file.close()
        path = self.spill.segment(self.spill.segments)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.stream = self.file = None
        self.spill.segments += 1
