"""Readers: every format, compression, document granularity, limits, weights and bad input."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from llmfab.api.dataset import DatasetSpec
from llmfab.data.readers import read_documents
from llmfab.data.steps import StepCounter
from llmfab.errors import WorkloadError


def read(tmp_path: Path, *sources: dict, batch_documents: int = 1000) -> tuple[list[tuple[str, str, str]], StepCounter]:
    spec = DatasetSpec.model_validate({"sources": list(sources)})
    counter = StepCounter("read")
    rows: list[tuple[str, str, str]] = []

    def resolve(p: str) -> Path:
        return (tmp_path / p).resolve()

    batches: Iterator[pa.RecordBatch] = read_documents(spec, resolve, counter, batch_documents=batch_documents)
    for b in batches:
        rows += list(zip(*(b.column(c).to_pylist() for c in ("text", "source", "id")), strict=True))
    return rows, counter


def test_text_documents_per_file_paragraph_and_line(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("p1 l1\np1 l2\n\np2\n\n\np3\n")
    (tmp_path / "b.md").write_text("# title\n\nbody\n")
    rows, _ = read(tmp_path, {"path": "*.txt"}, {"path": "b.md"})
    assert [r[0] for r in rows] == ["p1 l1\np1 l2\n\np2\n\n\np3\n", "# title\n\nbody\n"]
    assert rows[0][1:] == ("*.txt", "a.txt")
    rows, _ = read(tmp_path, {"path": "a.txt", "documentPer": "paragraph", "paragraphsPerDocument": 2})
    assert [r[0] for r in rows] == ["p1 l1\np1 l2\n\np2\n", "p3\n"]
    rows, _ = read(tmp_path, {"path": "a.txt", "documentPer": "line"})
    assert [(r[0], r[2]) for r in rows] == [("p1 l1", "a.txt:1"), ("p1 l2", "a.txt:2"), ("p2", "a.txt:4"),
                                            ("p3", "a.txt:7")]


def test_jsonl_gzip_zstd_json_array_and_id_field(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"body": f"doc {i}", "uid": i}) + "\n" for i in range(3))
    (tmp_path / "d").mkdir()
    with gzip.open(tmp_path / "d" / "x.jsonl.gz", "wt") as f:
        f.write(lines)
    (tmp_path / "d" / "y.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    (tmp_path / "d" / "z.json").write_text(json.dumps([{"body": "array doc", "uid": "a"}]))
    rows, _ = read(tmp_path, {"path": "d", "textField": "body", "idField": "uid"})
    assert [(r[0], r[2]) for r in rows] == [("doc 0", "0"), ("doc 1", "1"), ("doc 2", "2")] * 2 + [("array doc", "a")]


def test_parquet_and_huggingface_arrow_directory(tmp_path: Path) -> None:
    pq.write_table(pa.table({"content": ["p one", "p two"]}), tmp_path / "t.parquet")
    rows, _ = read(tmp_path, {"path": "t.parquet", "textField": "content"})
    assert [r[0] for r in rows] == ["p one", "p two"]
    # the layout datasets' save_to_disk writes: Arrow IPC stream files + state.json (+ dataset_dict.json)
    split = tmp_path / "hf" / "train"
    split.mkdir(parents=True)
    table = pa.table({"text": ["hf one", "hf two", "hf three"]})
    with pa.OSFile(str(split / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    (split / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (split / "dataset_info.json").write_text("{}")
    (tmp_path / "hf" / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    rows, _ = read(tmp_path, {"huggingface": {"path": "hf", "split": "train"}, "maxDocuments": 2})
    assert [r[0] for r in rows] == ["hf one", "hf two"]
    assert rows[0][1] == "hf:hf"
    with pytest.raises(WorkloadError, match=r"huggingface.split: 'test' .*pick one"):
        read(tmp_path, {"huggingface": {"path": "hf", "split": "test"}})


def test_weight_samples_and_batches_are_bounded(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    rows, counter = read(tmp_path, {"path": "l.txt", "documentPer": "line", "weight": 0.3}, batch_documents=64)
    assert 240 < len(rows) < 360
    assert counter.removed["sampled_out_by_weight"] == 1000 - len(rows)
    again, _ = read(tmp_path, {"path": "l.txt", "documentPer": "line", "weight": 0.3})
    assert again == rows


def test_malformed_jsonl_fails_or_is_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "good one"}\n{not json\n{"other": 1}\n{"text": "good two"}\n')
    with pytest.raises(WorkloadError, match=r"spec.sources\[0\]: bad.jsonl:2: not valid JSON.*onError: skip"):
        read(tmp_path, {"path": "bad.jsonl"})
    rows, counter = read(tmp_path, {"path": "bad.jsonl", "onError": "skip"})
    assert [r[0] for r in rows] == ["good one", "good two"]
    assert counter.removed == {"malformed_record": 2}


def test_bad_paths_and_fields_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError, match=r"spec.sources\[0\].path: 'missing.txt' does not exist"):
        read(tmp_path, {"path": "missing.txt"})
    with pytest.raises(WorkloadError, match=r"spec.sources\[0\].path: 'nothing\*.txt' matches no readable files"):
        read(tmp_path, {"path": "nothing*.txt"})
    (tmp_path / "x.jsonl").write_text('{"content": "text"}\n')
    with pytest.raises(WorkloadError, match=r"textField: x.jsonl has no string field 'text' \(fields: content\)"):
        read(tmp_path, {"path": "x.jsonl"})
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(WorkloadError, match=r"textField: .*no column 'text' \(columns: content\)"):
        read(tmp_path, {"path": "t.parquet"})
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(WorkloadError, match=r"path: .*latin1.txt is not UTF-8"):
        read(tmp_path, {"path": "latin1.txt"})
    (tmp_path / "trunc.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:40])
    with pytest.raises(WorkloadError, match=r"path: cannot read .*trunc.jsonl.gz"):
        read(tmp_path, {"path": "trunc.jsonl.gz"})
