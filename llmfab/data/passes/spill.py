"""The documents that survived the clean pass, in input order, in an Arrow stream file.

Later passes read the corpus again (perplexity, the tokenizer sample, the shards) without holding
it in memory. Beside the file the driver keeps, per spilled document, its ``source:id`` label and,
when outliers are filtered, its statistics: small enough to stay in memory, needed by index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

SPILL_SCHEMA = pa.schema([("text", pa.large_string()), ("source", pa.string()), ("id", pa.string()),
                          ("key", pa.binary(16))])


class Spill:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.labels: list[str] = []  # source:id of each spilled document
        self.stats: list[np.ndarray] = []  # outlier statistics per spilled batch, when enabled

    def __len__(self) -> int:
        return len(self.labels)

    def writer(self) -> SpillWriter:
        return SpillWriter(self.path)

    def tables(self) -> Iterator[tuple[int, pa.Table]]:
        """(index of the first row, table) over the spill file, in order."""
        start = 0
        with pa.OSFile(str(self.path), "rb") as f:
            for batch in pa.ipc.open_stream(f):
                yield start, pa.Table.from_batches([batch])
                start += batch.num_rows

    def texts(self, keep: np.ndarray, limit: int, key_filter: Callable[[bytes], bool] | None = None
              ) -> Iterator[list[str]]:
        """Texts of the kept documents (and, with ``key_filter``, only those whose key passes it),
        in order, in batches, at most ``limit`` in all."""
        taken = 0
        for start, table in self.tables():
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


class SpillWriter:
    """Context manager appending tables (of :data:`SPILL_SCHEMA`'s columns) to the spill file."""

    def __init__(self, path: Path) -> None:
        self.file = pa.OSFile(str(path), "wb")
        self.stream = pa.ipc.new_stream(self.file, SPILL_SCHEMA)

    def __enter__(self) -> SpillWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.close()
        self.file.close()

    def write(self, table: pa.Table) -> None:
        self.stream.write_table(table.select(SPILL_SCHEMA.names).cast(SPILL_SCHEMA))
