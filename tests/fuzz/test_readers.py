"""Every reader format on random, truncated and corrupted input (issue 19).

The property: with ``onError: skip`` the readers give documents and count every record they drop
by reason (``documents_in == documents_out + removed``), each document within the cap; with
``onError: fail`` they give documents or one :class:`WorkloadError` naming the file. Never another
exception type. Memory is bounded by ``maxDocumentBytes`` (kept small here); the gzip bomb in
``tests/data/test_readers_bounded.py`` measures it for real.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard
from hypothesis import example, given
from hypothesis import strategies as st

from llmfab.data.bounded_reading import TooLong, capped_lines
from llmfab.errors import WorkloadError
from tests.data.test_readers import read

CAP = 300
COMPRESS = {
    "": lambda b: b,
    ".gz": gzip.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
}
FORMATS = ["line", "paragraph", "file", "jsonl", "json", "parquet", "arrow"]

texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=400)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | texts,
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4),
                           max_leaves=12)
records = st.one_of(st.fixed_dictionaries({"text": texts}, optional={"id": json_values, "x": json_values}),
                    json_values)


def _payload(fmt: str, data: st.DataObject) -> bytes:
    if fmt in ("line", "paragraph", "file"):
        return data.draw(st.one_of(st.binary(max_size=900), texts.map(str.encode),
                                   st.lists(texts, max_size=8).map(lambda xs: "\n\n".join(xs).encode())))
    if fmt == "jsonl":
        lines = data.draw(st.lists(st.one_of(records.map(json.dumps), texts), max_size=8))
        return "\n".join(lines).encode()
    if fmt == "json":
        return json.dumps(data.draw(st.lists(records, max_size=6))).encode()
    rows = data.draw(st.lists(st.one_of(st.none(), texts), max_size=12))
    table = pa.table({"text": pa.array(rows, pa.string())})
    buffer = io.BytesIO()
    if fmt == "arrow":  # what datasets' save_to_disk writes: an IPC stream
        with pa.ipc.new_stream(buffer, table.schema) as writer:
            writer.write_table(table, max_chunksize=4)
    else:
        pq.write_table(table, buffer, row_group_size=4)
    return buffer.getvalue()


def _corrupt(raw: bytes, data: st.DataObject) -> bytes:
    how = data.draw(st.sampled_from(["none", "truncate", "flip", "splice"]))
    if not raw or how == "none":
        return raw
    at = data.draw(st.integers(0, len(raw) - 1))
    if how == "truncate":
        return raw[:at]
    if how == "flip":
        return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255))]) + raw[at + 1:]
    return raw[:at] + data.draw(st.binary(min_size=1, max_size=16)) + raw[at:]


def _check(fmt: str, suffix: str, raw: bytes, on_error: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-readers-"))
    try:
        ext = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "arrow": ".arrow"}.get(fmt, ".txt")
        name = f"input{ext}{suffix if fmt not in ('parquet', 'arrow') else ''}"
        (tmp / name).write_bytes(raw)
        source = {"path": name, "onError": on_error, "maxDocumentBytes": CAP}
        if fmt in ("line", "paragraph", "file"):
            source["documentPer"] = fmt
        try:
            rows, counter = read(tmp, source)
        except WorkloadError as e:
            assert name in str(e), str(e)
            return
        assert counter.documents_in == counter.documents_out + sum(counter.removed.values())
        assert counter.documents_out == len(rows)
        assert set(counter.removed) <= {"malformed_record", "too_long", "unreadable_file"}
        assert all(len(text.encode("utf-8", "surrogatepass")) <= 3 * CAP for text, _, _ in rows)
    finally:
        shutil.rmtree(tmp)


@given(st.sampled_from(FORMATS), st.sampled_from(sorted(COMPRESS)), st.sampled_from(["skip", "fail"]), st.data())
@example("jsonl", "", "skip", None).via("5000-digit int (ValueError), deep nesting (RecursionError), lone surrogate (UnicodeEncodeError in Arrow)")
@example("jsonl", "", "fail", None).via("the same with onError: fail: one error naming file and line")
@example("parquet", "", "fail", None).via("a corrupt Parquet cell is not UTF-8: UnicodeDecodeError from Arrow")
@example("parquet", "", "skip", None).via("the same, with onError: skip")
def test_any_input_gives_documents_and_counted_skips_or_one_named_error(fmt: str, suffix: str, on_error: str,
                                                                        data: st.DataObject | None) -> None:
    if data is None and fmt == "jsonl":  # the explicit examples
        raw = (b'{"text": "ok"}\n{"text": "x", "n": ' + b"9" * 5000 + b"}\n" + b"[" * 50_000 + b"\n"
               + b'{"text": "\\ud800"}\n{"text": "fine", "id": "\\udfff"}\n')
    elif data is None:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"text": ["ok", "\u00e9t\u00e9"]}), buffer, compression="none",
                       use_dictionary=False)
        raw = buffer.getvalue().replace("\u00e9t\u00e9".encode(), b"\xb0t\xc3\xa9")
    else:
        payload = _payload(fmt, data)
        raw = _corrupt(COMPRESS[suffix](payload) if fmt not in ("parquet", "arrow") else payload, data)
    _check(fmt, suffix, raw, on_error)


@given(st.binary(max_size=600) | st.lists(st.sampled_from([b"a", b"\n", b"bc", b"\r\n", b"x" * 40]), max_size=60)
       .map(b"".join), st.integers(1, 64), st.integers(1, 50))
def test_capped_lines_is_split_on_newlines_with_long_lines_marked(data: bytes, cap: int, chunk: int) -> None:
    """The reusable piece against the obvious reference: same lines, numbers and lengths, whatever the chunking."""
    *complete, last = data.split(b"\n")
    lines = [piece + b"\n" for piece in complete] + ([last] if last else [])
    expected = [(n, line if len(line) <= cap else TooLong(len(line))) for n, line in enumerate(lines, 1)]
    assert list(capped_lines(io.BytesIO(data), cap, chunk)) == expected
