"""Readers on hostile input (issue 19): bounded memory, every record capped, every error naming file and line.

A record longer than ``maxDocumentBytes`` fails naming where it is or, with ``onError: skip``, is
counted as ``too_long``; a record Python's json cannot take (a 5000-digit integer, nesting deeper
than the recursion limit) is a malformed record like any other; a corrupt compressed file is named.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import llmfab.data.readers as readers
from llmfab.errors import WorkloadError
from tests.data.test_readers import read

ROOT = Path(__file__).resolve().parents[2]


def test_json_values_python_refuses_are_malformed_records_named_by_file_and_line(tmp_path: Path) -> None:
    """A 5000-digit integer raised ValueError and deep nesting RecursionError, past onError: skip."""
    (tmp_path / "x.jsonl").write_text('{"text": "good one"}\n'
                                      '{"text": "big", "n": ' + "9" * 5000 + "}\n"
                                      + "[" * 100_000 + "]" * 100_000 + "\n"
                                      '{"text": "good two"}\n')
    with pytest.raises(WorkloadError, match=r"spec.sources\[0\]: x.jsonl:2: not valid JSON \(.*4300 digits"):
        read(tmp_path, {"path": "x.jsonl"})
    rows, counter = read(tmp_path, {"path": "x.jsonl", "onError": "skip"})
    assert [r[0] for r in rows] == ["good one", "good two"]
    assert counter.removed == {"malformed_record": 2}
    assert [e["id"].rsplit(":", 1)[1] for e in counter.examples["malformed_record"]] == ["2", "3"]
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(WorkloadError, match=r"deep.json: JSON nested too deeply"):
        read(tmp_path, {"path": "deep.json"})


@pytest.mark.parametrize(("per", "where"), [("line", "t.txt:2"), ("paragraph", "t.txt:1"), ("file", "t.txt")])
def test_text_records_over_max_document_bytes_fail_or_are_counted_too_long(tmp_path: Path, per: str,
                                                                             where: str) -> None:
    (tmp_path / "t.txt").write_text("short\n" + "x" * 500 + "\n\nshort again\n")
    source = {"path": "t.txt", "documentPer": per, "maxDocumentBytes": 100}
    with pytest.raises(WorkloadError, match=rf"spec.sources\[0\]: {where}: .* longer than maxDocumentBytes "
                                            r".*raise spec.sources\[0\].maxDocumentBytes.*onError: skip"):
        read(tmp_path, source)
    rows, counter = read(tmp_path, {**source, "onError": "skip"})
    assert counter.removed == {"too_long": 1}
    expected = {"line": ["short", "short again"], "paragraph": ["short again\n"], "file": []}[per]
    assert [r[0] for r in rows] == expected


def test_paragraph_groups_close_early_rather_than_pass_the_cap(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("".join(f"paragraph {i} " + "y" * 30 + "\n\n" for i in range(6)))
    rows, counter = read(tmp_path, {"path": "p.txt", "documentPer": "paragraph", "paragraphsPerDocument": 4,
                                    "maxDocumentBytes": 100})
    assert [r[0].count("paragraph") for r in rows] == [2, 2, 2]
    assert all(len(r[0].encode()) <= 100 for r in rows) and counter.removed == {}


def test_json_records_arrays_and_table_cells_over_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "l.jsonl").write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": "z" * 300}) + "\n")
    rows, counter = read(tmp_path, {"path": "l.jsonl", "onError": "skip", "maxDocumentBytes": 100})
    assert [r[0] for r in rows] == ["ok"] and counter.removed == {"too_long": 1}
    (tmp_path / "a.json").write_text(json.dumps([{"text": "w" * 60}, {"text": "v" * 60}]))
    with pytest.raises(WorkloadError, match=r"a.json: the JSON array file .*jq -c .*longer than maxDocumentBytes"):
        read(tmp_path, {"path": "a.json", "maxDocumentBytes": 100})
    pq.write_table(pa.table({"text": ["fine", "q" * 300, None], "other": [1, 2, 3]}), tmp_path / "t.parquet")
    with pytest.raises(WorkloadError, match=r"t.parquet:1: the 'text' cell is longer than maxDocumentBytes"):
        read(tmp_path, {"path": "t.parquet", "maxDocumentBytes": 100})
    rows, counter = read(tmp_path, {"path": "t.parquet", "maxDocumentBytes": 100, "onError": "skip"})
    assert [r[0] for r in rows] == ["fine"] and counter.removed == {"too_long": 1, "malformed_record": 1}
    monkeypatch.setattr(readers, "ROW_GROUP_TEXT_BYTES", 1000)
    pq.write_table(pa.table({"text": [f"{i:03d}" + "s" * 90 for i in range(40)]}), tmp_path / "big.parquet", row_group_size=20)
    with pytest.raises(WorkloadError, match=r"big.parquet: row group 0 \(rows 0-19\): .*row_group_size"):
        read(tmp_path, {"path": "big.parquet", "maxDocumentBytes": 100})
    rows, counter = read(tmp_path, {"path": "big.parquet", "maxDocumentBytes": 100, "onError": "skip"})
    assert rows == [] and counter.removed == {"too_long": 40} and counter.documents_in == 40


def test_corrupt_compressed_files_are_named_or_counted_and_bz2_xz_read(tmp_path: Path) -> None:
    body = "".join(json.dumps({"text": f"doc {i} " * 20}) + "\n" for i in range(200)).encode()
    (tmp_path / "ok.jsonl.bz2").write_bytes(bz2.compress(body))
    (tmp_path / "ok.jsonl.xz").write_bytes(lzma.compress(body))
    rows, _ = read(tmp_path, {"path": "ok.jsonl.*"})
    assert len(rows) == 400
    packed = bytearray(gzip.compress(body))
    packed[len(packed) // 2] ^= 0xFF  # inside the deflate stream: zlib.error, not OSError
    (tmp_path / "bad.jsonl.gz").write_bytes(bytes(packed))
    with pytest.raises(WorkloadError, match=r"path: cannot read .*bad.jsonl.gz \(at or after bad.jsonl.gz:\d+\).*onError: skip"):
        read(tmp_path, {"path": "bad.jsonl.gz"})
    rows, counter = read(tmp_path, {"path": "bad.jsonl.gz", "onError": "skip"})
    assert counter.removed.get("unreadable_file") == 1 and len(rows) < 200


BOMB_CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from llmfab.api.dataset import DatasetSpec
    from llmfab.data.readers import read_documents
    from llmfab.data.steps import StepCounter

    def vm_bytes():
        return int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()

    path, per, headroom = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    # Fail cleanly (MemoryError) instead of exhausting a shared machine if reading is not bounded.
    limit = vm_bytes() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    source = {"format": "jsonl"} if per == "jsonl" else {"format": "text", "documentPer": per}
    spec = DatasetSpec.model_validate({"sources": [{"path": str(path), "onError": "skip", **source}]})
    counter = StepCounter("read")
    docs = sum(b.num_rows for b in read_documents(spec, Path, counter))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"docs": docs, "removed": counter.removed, "before": before, "peak": peak}))
""")


@pytest.mark.parametrize("per", ["line", "paragraph", "file", "jsonl"])
def test_a_gzip_bomb_of_one_gib_line_is_read_in_bounded_memory(tmp_path: Path, per: str) -> None:
    """1 KiB of gzip per MiB of 'a': ~1 MiB of file decompresses to 1 GiB with no newline.

    The child limits its address space to what it had after imports plus 512 MiB, so reading the
    line whole (the old readers did, for every documentPer) ends in MemoryError, not a full machine;
    the bound asserted is on its peak RSS, measured by getrusage.
    """
    # for paragraphs, a million 1 KiB lines and no blank one: one paragraph of 1 GiB, built line by line
    line = b"a" * (1 << 20) if per != "paragraph" else (b"a" * 1023 + b"\n") * 1024
    member = gzip.compress(line, compresslevel=9)
    bomb = tmp_path / "bomb.txt.gz"
    with bomb.open("wb") as f:
        f.write(gzip.compress(b"ok line\n\n"))
        for _ in range(1024):  # concatenated gzip members decompress to the concatenation
            f.write(member)
    assert bomb.stat().st_size < 3 << 20
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", BOMB_CHILD, str(bomb), per, str(512 << 20)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["peak"] - result["before"] < 128 << 20, result
    if per == "jsonl":
        assert result["removed"] == {"malformed_record": 1, "too_long": 1}
    else:
        assert result["removed"] == {"too_long": 1}
        assert result["docs"] == (0 if per == "file" else 1)


CORRUPT_IPC_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from llmfab.errors import WorkloadError
    from tests.data.test_readers import read
    try:
        rows, counter = read(Path(sys.argv[1]), {"huggingface": {"path": "x.arrow"}, "onError": sys.argv[2]})
        print("counted", counter.removed)
    except WorkloadError as e:
        print("error", e)
""")


@pytest.mark.parametrize(("on_error", "expected"), [
    ("fail", r"error spec.sources\[0\].huggingface.path: cannot read .*x.arrow .*Offset invariant failure"),
    ("skip", r"counted \{'unreadable_file': 1\}"),
])
def test_an_arrow_file_with_offsets_past_its_buffer_is_named_not_read_out_of_bounds(tmp_path: Path, on_error: str,
                                                                                  expected: str) -> None:
    """Arrow IPC is memory-mapped and unvalidated: the old reader followed a string offset of 1 GiB
    past a 10-byte buffer and died of SIGBUS (exit 135). Run in a child so that cannot take pytest."""
    table = pa.table({"text": ["hello", "world"]})
    with pa.OSFile(str(tmp_path / "x.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as writer:
        writer.write_table(table)
    raw = (tmp_path / "x.arrow").read_bytes()
    offsets = struct.pack("<iii", 0, 5, 10)
    assert raw.count(offsets) == 1
    (tmp_path / "x.arrow").write_bytes(raw.replace(offsets, struct.pack("<iii", 0, 5, 1 << 30)))
    proc = subprocess.run([sys.executable, "-c", CORRUPT_IPC_CHILD, str(tmp_path), on_error], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert re.search(expected, proc.stdout), proc.stdout


def test_parquet_metadata_that_is_not_utf8_is_named_or_counted(tmp_path: Path) -> None:
    """Found by fuzzing: a flipped byte in a column name made pyarrow raise UnicodeDecodeError (a traceback)."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["a"], "caf\u00e9": [1]}), buffer)
    (tmp_path / "m.parquet").write_bytes(buffer.getvalue().replace("\u00e9".encode(), b"\xf4\xa9"))
    with pytest.raises(WorkloadError, match=r"path: cannot read .*m.parquet .*can't decode byte 0xf4"):
        read(tmp_path, {"path": "m.parquet"})
    rows, counter = read(tmp_path, {"path": "m.parquet", "onError": "skip"})
    assert rows == [] and counter.removed == {"unreadable_file": 1}
