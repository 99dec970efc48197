"""Split assignment and the token shard format (writer and reader)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmfab.api.dataset import Split
from llmfab.data.exact_dedup import document_key
from llmfab.data.shards import ShardWriter, open_split, token_dtype
from llmfab.data.split import split_of


def test_split_is_deterministic_proportional_and_seeded() -> None:
    keys = [document_key(f"document {i}") for i in range(5000)]
    spec = Split()
    first = [split_of(k, spec) for k in keys]
    assert first == [split_of(k, Split()) for k in keys]
    counts = {s: first.count(s) / len(keys) for s in ("train", "val", "test")}
    assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["val"] - 0.1) < 0.02
    other = [split_of(k, Split(seed=1)) for k in keys]
    assert other != first
    assert [split_of(k, Split()) for k in keys[:100]] == first[:100]  # independent of the other documents


def test_shards_roll_over_and_read_back_across_boundaries(tmp_path: Path) -> None:
    dtype = token_dtype(8000)
    assert dtype == np.uint16 and token_dtype(70000) == np.uint32
    writer = ShardWriter(tmp_path, "train", dtype, eos_id=2, shard_tokens=10)
    docs = [np.arange(10, 10 + n) for n in (3, 8, 1, 12, 4)]
    for d in docs:
        writer.write(d)
    info = writer.finish()
    assert info["documents"] == 5 and info["tokens"] == sum(len(d) + 1 for d in docs)
    assert len(info["shards"]) == 3
    manifest = {"dtype": "uint16", "eosId": 2, "vocabSize": 8000, "splits": {"train": info}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    reader = open_split(tmp_path, "train")
    stream = np.concatenate([np.append(d, 2) for d in docs])
    assert reader.num_tokens == len(stream)
    assert np.array_equal(reader.read(0, len(stream)), stream)
    assert np.array_equal(reader.read(7, 9), stream[7:16])  # crosses a shard boundary
    spans = list(reader.document_spans())
    assert [e - s for s, e in spans] == [len(d) + 1 for d in docs]
    assert all(stream[e - 1] == 2 for _, e in spans)
    raw = np.fromfile(tmp_path / info["shards"][0]["file"], dtype="<u2")
    assert list(np.load(tmp_path / info["shards"][0]["index"])) == [0, 4]
    assert raw[-1] == 2
