"""Pass 4: the workers encode the kept documents with the exported Hugging Face tokenizer (the one
the served model loads), the driver writes the token shards in input order and keeps a sample of
documents for the check that follows (:mod:`~.passes.served_check`).

Each document goes to its split (by content hash, :func:`llmfab.data.split.split_of`) as many
times as its source's weight says: a weight of 2.5 writes every document twice and half of them a
third time, chosen by a hash of the document's label so the choice does not depend on the run.
The shard format itself is :mod:`llmfab.data.shards`'.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from llmfab.data import tokenizer as tok
from llmfab.data.passes.context import BuildContext
from llmfab.data.passes.served_check import CheckSample
from llmfab.data.passes.spill import Spill
from llmfab.data.readers import source_label, unit_hash
from llmfab.data.shards import SPLITS, ShardWriter, token_dtype
from llmfab.data.split import split_of


class EncodeBatch:
    """Worker function: (text, split) → (ids, split)."""

    def __init__(self, tokenizer_json: str) -> None:
        self.encoder = tok.Encoder(tokenizer_json)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = self.encoder.encode(batch.column("text").to_pylist())
        return pa.table({"ids": pa.array(ids, pa.list_(pa.uint32())), "split": batch.column("split")})


def _copies(weight: float, label: str) -> int:
    return 1 if weight <= 1 else int(weight) + (unit_hash(label, "repeat") < weight - int(weight))


def _to_encode(ctx: BuildContext, spill: Spill, keep: np.ndarray, sample: CheckSample) -> Iterator[pa.Table]:
    """(text, split) tables of the kept documents, each repeated by its source's weight; offers
    each document, with its place in its split, to ``sample``."""
    weights = {source_label(s, i): s.weight for i, s in enumerate(ctx.spec.sources)}
    for start, table in spill.tables():
        texts, splits = [], []
        for j, (text, src, key) in enumerate(zip(table.column("text").to_pylist(),
                                                  table.column("source").to_pylist(),
                                                  table.column("key").to_pylist(), strict=True)):
            if not keep[start + j]:
                continue
            copies = _copies(weights.get(src, 1.0), spill.labels[start + j])
            split = split_of(key, ctx.spec.split)
            for _ in range(copies):
                sample.offer(split, text)
            texts += [text] * copies
            splits += [split] * copies
        if texts:
            yield pa.table({"text": pa.array(texts, pa.large_string()), "split": splits})


def write_shards(ctx: BuildContext, spill: Spill, keep: np.ndarray, model: Path, hf_dir: Path,
                 sample: CheckSample) -> dict[str, Any]:
    """Write ``train|val|test/`` into ``ctx.out``; return the manifest's tokenizer and split fields."""
    ids = tok.special_ids(model)
    vocab = int(tok.load_processor(model).get_piece_size())
    dtype = token_dtype(vocab)
    writers = {s: ShardWriter(ctx.out, s, dtype, ids["eosId"], ctx.spec.output.shard_tokens) for s in SPLITS}
    done = 0
    encode = EncodeBatch((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    for table in ctx.engine.map(encode, _to_encode(ctx, spill, keep, sample)):
        for row_ids, split in zip(table.column("ids").to_numpy(zero_copy_only=False),
                                  table.column("split").to_pylist(), strict=True):
            writers[split].write(row_ids)
        done += table.num_rows
        ctx.progress(documents=done)
    splits = {s: w.finish() for s, w in writers.items()}
    return {"vocabSize": vocab, "dtype": dtype.name.replace("<", ""), **ids,
            "tokenizer": "tokenizer.model", "hfTokenizer": "tokenizer", "splits": splits}
