"""Read sources into streamed Arrow record batches of documents (text, source, id).

Plain text, Markdown, JSON Lines, Parquet and Arrow (a Hugging Face ``save_to_disk`` directory is
Arrow IPC stream files plus ``state.json``), text and JSON optionally gzip/zstd/bzip2/xz compressed.
Files are read lazily, record by record or Parquet/Arrow batch by batch, and emitted in batches of
bounded size, so memory does not grow with the corpus, nor with one record: every record (a file,
paragraph group, line, JSON line or array, table cell) is capped at the source's
``maxDocumentBytes`` (:mod:`llmfab.data.bounded_reading`), and a longer one fails naming the file
and line or, with ``onError: skip``, is counted as ``too_long``. A source's ``weight`` below 1 samples documents here,
deterministically from a hash of source and id; weights above 1 repeat documents after dedup
(see :mod:`llmfab.data.pipeline`) so exact dedup does not undo them.
"""

from __future__ import annotations

import glob
import hashlib
import json
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Protocol
from xml.parsers import expat

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from llmfab.api.dataset import DatasetSpec, Source
from llmfab.data.archives import is_archive, strip_compression, tar_members
from llmfab.data.bounded_reading import (
    COMPRESSION_SUFFIXES,
    DECOMPRESSION_ERRORS,
    TooLong,
    capped_lines,
    open_decompressed,
    peek,
    read_capped,
)
from llmfab.data.engine import default_workers
from llmfab.data.mediawiki import NotADump, mediawiki_documents
from llmfab.data.record_sink import Doc, SourceCounts
from llmfab.data.steps import DOCUMENT_SCHEMA, StepCounter, example
from llmfab.data.warc import warc_documents
from llmfab.errors import WorkloadError

TEXT_SUFFIXES = {".txt", ".md", ".text", ".markdown"}
JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
ARROW_SUFFIXES = {".arrow"}
WARC_SUFFIXES = {".warc", ".wet"}
COMPRESSED = set(COMPRESSION_SUFFIXES)
BATCH_DOCUMENTS = 1000
BATCH_BYTES = 8 << 20
# Arrow decodes a whole Parquet page before llmfab can see one cell's length, and a page holds at
# least one whole cell: a row group whose text decompresses to more than this is refused unread.
ROW_GROUP_TEXT_BYTES = 256 << 20
NEWLINE = b"\n"


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (sampling, splitting): same input, same value."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def source_label(source: Source, index: int) -> str:
    if source.name:
        return source.name
    if source.path:
        return source.path
    assert source.huggingface is not None
    return f"hf:{source.huggingface.path}"


def _suffixes(path: Path | PurePosixPath) -> tuple[str, str]:
    """(format suffix, compression suffix) of ``data.jsonl.gz`` → (".jsonl", ".gz")."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSED else ""
    rest = suffixes[:-1] if comp else suffixes
    return (rest[-1] if rest else ""), comp


def _format_of(path: Path | PurePosixPath, declared: str) -> str:
    """The format a file's name says (``archive`` for a tar archive, whatever the declared format of
    its members), or the declared one; "" when neither says."""
    if is_archive(path.name):
        return "archive"
    if declared != "auto":
        return declared
    ext, _ = _suffixes(path)
    if ext in TEXT_SUFFIXES:
        return "text"
    if ext in JSON_SUFFIXES:
        return "jsonl"
    if ext in PARQUET_SUFFIXES:
        return "parquet"
    if ext in ARROW_SUFFIXES:
        return "arrow"
    if ext in WARC_SUFFIXES:
        return "warc"
    if ext == ".xml" or ext.startswith(".xml-p"):  # enwiki-...-pages-articles1.xml-p1p41242.bz2
        return "mediawiki"
    return ""


def expand_paths(source: Source, field: str, resolve: Callable[[str], Path]) -> list[Path]:
    """Files named by a source's path: a file, a directory (recursively) or a glob; sorted."""
    assert source.path is not None
    raw = source.path
    if any(ch in raw for ch in "*?["):
        base = resolve(".") if not Path(raw).expanduser().is_absolute() else Path("/")
        pattern = raw if Path(raw).is_absolute() else str(base / raw)
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    else:
        p = resolve(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and _format_of(f, source.format))
        elif p.is_file():
            files = [p]
        else:
            raise WorkloadError(f"{field}: {raw!r} does not exist (resolved to {p}); fix the path "
                                "(relative paths are relative to the spec file)")
    if not files:
        raise WorkloadError(f"{field}: {raw!r} matches no readable files (.txt .md .jsonl .json .parquet "
                            ".arrow .warc .wet .xml .tar, optionally .gz/.zst/.bz2/.xz); fix the path or glob")
    for f in files:
        if not _format_of(f, source.format):
            raise WorkloadError(f"{field}: cannot tell the format of {f.name}; set format: "
                                "text|jsonl|parquet|warc|mediawiki on the source or use a known extension")
    return files


def _string_cells(column: pa.Array | pa.ChunkedArray, cap: int) -> tuple[list[bytes | None], list[int | None]]:
    """A text column's cells as UTF-8 bytes without copying any cell over ``cap`` bytes out of Arrow.

    Returns the values (None for nulls, non-strings and cells over the cap) and each cell's byte
    length (None where it is not a string), so the caller can tell "too long" from "not text".
    Bytes, not str: a corrupt file's cell need not be UTF-8, and the caller decodes it naming the row.
    """
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return [None] * len(column), [None] * len(column)
    lengths = pc.binary_length(column)
    small = pc.less_equal(lengths, cap)
    raw = column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
    return pc.if_else(small, raw, None).to_pylist(), lengths.to_pylist()


class SourceReader:
    """Documents of one source as :class:`~llmfab.data.record_sink.Doc` s; malformed or too long records
    fail or are counted as skipped, records that are not documents are counted (``counts``)."""

    def __init__(self, source: Source, index: int, resolve: Callable[[str], Path], counter: StepCounter,
                 converters: int = 1) -> None:
        self.source = source
        self.converters = converters  # child processes for HTML and wikitext (llmfab.data.isolated)
        self.index = index
        self.field = f"spec.sources[{index}]"
        self.label = source_label(source, index)
        self.resolve = resolve
        self.counter = counter
        self.cap = source.max_document_bytes
        self.strict = source.on_error == "fail"
        self.file: Path | str = ""
        # where reading is, for an error the decompressor or Arrow raises: "file:row", or the next line
        self.position = ""
        self.next_line = 0
        self.stream_name = ""
        self.counts = SourceCounts()

    def _bad(self, where: str, what: str, fix: str, text: str = "", reason: str = "malformed_record",
             count: int = 1) -> None:
        if self.strict:
            raise WorkloadError(f"{self.field}: {where}: {what}; {fix}, or set onError: skip to skip and count "
                                "such records")
        self.counter.documents_in += count
        self.counter.drop(reason, example(text[:240], self.label, where, what), count=count)
        self.counts.skipped[reason] += count

    def skip(self, reason: str, where: str, text: str = "") -> None:
        """A record left out by design (a redirect, a PDF, a talk page): counted, never an error."""
        self.counter.documents_in += 1
        self.counter.drop(reason, example(text[:240], self.label, where))
        self.counts.skipped[reason] += 1

    def bad(self, where: str, what: str, fix: str, text: str = "", reason: str = "malformed_record") -> None:
        self._bad(where, what, fix, text, reason)

    def too_long(self, where: str, what: str, size: int | TooLong) -> None:
        self._too_long(where, what, size)

    def _too_long(self, where: str, what: str, size: int | TooLong, count: int = 1) -> None:
        n = size.size if isinstance(size, TooLong) else size
        self._bad(where, f"{what} is longer than maxDocumentBytes ({n} bytes or more, cap {self.cap})",
                  f"raise {self.field}.maxDocumentBytes if such records are wanted", reason="too_long", count=count)

    def _decode(self, raw: bytes, name: str, line: int = 0, whole_file: bool = False) -> str:
        """UTF-8 text; not UTF-8 fails naming file and line (onError: fail) or becomes U+FFFD (skip)."""
        if not self.strict:
            return raw.decode("utf-8", errors="replace")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if whole_file:  # say which line
                line = raw.count(NEWLINE, 0, e.start) + 1
            where = f"{name}:{line}" if line else name
            raise WorkloadError(f"{self.field}.path: {self.file} is not UTF-8 text ({e.reason} at {where}, byte "
                                f"{e.start} of the record); convert it to UTF-8 or set onError: skip to replace "
                                "bad bytes") from None

    def __iter__(self) -> Iterator[tuple[str, str] | Doc]:
        for documents in self.units():
            yield from documents

    def units(self) -> Iterator[Iterator[tuple[str, str] | Doc]]:
        """The source's documents, an input file at a time (a Hugging Face source is one): the unit
        a build resumes by. A unit's file is opened only when its documents are asked for."""
        if self.source.huggingface is not None:
            yield self._huggingface()
            return
        for path in expand_paths(self.source, f"{self.field}.path", self.resolve):
            yield self._file(path)

    def _file(self, path: Path, fmt: str = "", field: str = "path") -> Iterator[tuple[str, str] | Doc]:
        """One file's documents; a file that cannot be read fails naming it, or is counted (skip)."""
        fmt = fmt or _format_of(path, self.source.format)
        name = path.name
        self.file, self.position, self.next_line = path, name, 1 if fmt in ("text", "jsonl") else 0
        self.stream_name = name  # the file, or the archive member being read
        self.counts.formats.add(fmt)
        try:
            if fmt == "archive":
                with open(path, "rb") as raw:
                    yield from self._archive(raw, name)
            elif fmt in ("parquet", "arrow"):
                yield from self._parquet(path, name) if fmt == "parquet" else self._arrow_file(path)
            else:
                with open_decompressed(path) as f:
                    yield from self._stream(f, name, fmt)
        except WorkloadError:
            raise
        except NotADump as e:
            raise WorkloadError(f"{self.field}.format: {self.position}: {e}; set format on the source to what "
                                "the file holds") from None
        except (*DECOMPRESSION_ERRORS, pa.ArrowException, UnicodeDecodeError, tarfile.TarError,
                expat.ExpatError) as e:  # UnicodeDecodeError: Parquet metadata
            if self.next_line:
                self.position = f"{self.stream_name}:{self.next_line}"
            if self.strict:
                raise WorkloadError(f"{self.field}.{field}: cannot read {path} (at or after {self.position}): {e}; fix or "
                                    "remove the file, or set onError: skip to count it and go on") from e
            self._bad(self.position, f"unreadable from here on ({e})", "", reason="unreadable_file")

    def _stream(self, f: IO[bytes], name: str, fmt: str) -> Iterator[tuple[str, str] | Doc]:
        """The documents of a decompressed stream in one of the formats that are read as streams."""
        if fmt == "text":
            yield from self._text(f, name)
        elif fmt == "jsonl":
            yield from self._jsonl(f, name)
        elif fmt == "warc":
            yield from warc_documents(f, name, self, self.source.html)
        elif fmt == "mediawiki":
            yield from mediawiki_documents(f, name, self)
        else:
            raise WorkloadError(f"{self.field}.format: {name} is {fmt} inside an archive, which is read as a "
                                "stream; unpack it, or write it as JSON Lines")

    def _archive(self, raw: IO[bytes], name: str) -> Iterator[tuple[str, str] | Doc]:
        """Every member of a tar archive in archive order, each read by its own name's format."""
        for path, member in tar_members(raw, name):
            self.position, self.stream_name, self.next_line = path, path, 0
            self.counts.records["member"] += 1
            fmt = _format_of(PurePosixPath(strip_compression(path.rsplit("!", 1)[1])), self.source.format)
            if fmt in ("", "archive"):
                self.skip("unknown_member_format", path, path)
                continue
            self.counts.formats.add(fmt)
            if fmt in ("text", "jsonl"):
                self.next_line = 1
            yield from self._stream(member, path, fmt)

    def _text(self, f: IO[bytes], name: str) -> Iterator[tuple[str, str]]:
        per = self.source.document_per
        if per == "file":
            data = read_capped(f, self.cap)
            if isinstance(data, TooLong):
                self._too_long(name, "the file (documentPer: file)", data)
                return
            yield self._decode(data, name, whole_file=True), name
            return
        if per == "line":
            for lineno, raw in capped_lines(f, self.cap):
                where, self.next_line = f"{name}:{lineno}", lineno + 1
                if isinstance(raw, TooLong):
                    self._too_long(where, "the line", raw)
                    continue
                line = self._decode(raw, name, lineno)
                if line.strip():
                    yield line.rstrip("\r\n"), where
            return
        yield from self._paragraph_groups(self._paragraphs(f, name), name)

    def _paragraphs(self, f: IO[bytes], name: str) -> Iterator[tuple[int, str | TooLong, int]]:
        """``(first line, paragraph, bytes)`` per blank-line separated paragraph, capped like a line."""
        lines: list[str] = []
        size, start, over = 0, 0, False
        for lineno, raw in capped_lines(f, self.cap):
            self.next_line = lineno + 1
            if isinstance(raw, TooLong):
                line, nbytes = "", raw.size
            else:
                line, nbytes = self._decode(raw, name, lineno), len(raw)
                if not line.strip():  # a blank line ends the paragraph
                    if over or lines:
                        yield start, TooLong(size) if over else "".join(lines), size
                    lines, size, over = [], 0, False
                    continue
            if not lines and not over:
                start = lineno
            size += nbytes
            over = over or isinstance(raw, TooLong) or size > self.cap
            if over:
                lines = []
            else:
                lines.append(line)
        if over or lines:
            yield start, TooLong(size) if over else "".join(lines), size

    def _paragraph_groups(self, paragraphs: Iterator[tuple[int, str | TooLong, int]], name: str
                          ) -> Iterator[tuple[str, str]]:
        """``paragraphsPerDocument`` paragraphs a document; a group closes early rather than pass the cap."""
        group: list[str] = []
        size, part = 0, 0
        for start, paragraph, nbytes in paragraphs:
            if isinstance(paragraph, TooLong):
                self._too_long(f"{name}:{start}", "the paragraph", paragraph)
                continue
            if group and size + 1 + nbytes > self.cap:
                yield "\n".join(group), f"{name}#{part}"
                group, size, part = [], 0, part + 1
            size += nbytes + (1 if group else 0)
            group.append(paragraph)
            if len(group) == self.source.paragraphs_per_document:
                yield "\n".join(group), f"{name}#{part}"
                group, size, part = [], 0, part + 1
        if group:
            yield "\n".join(group), f"{name}#{part}"

    def _jsonl(self, f: IO[bytes], name: str) -> Iterator[tuple[str, str]]:
        key, id_key = self.source.text_field, self.source.id_field
        head, f = peek(f, 1 << 16)
        if head.lstrip()[:1] == b"[":  # a JSON array, not JSON Lines: read whole, so capped like one record
            yield from self._records(self._json_array(f, name), key, id_key, name)
            return
        yield from self._records(self._parsed_lines(f, name), key, id_key, name)

    def _json_array(self, f: IO[bytes], name: str) -> Iterator[tuple[int, object, str]]:
        data = read_capped(f, self.cap)
        if isinstance(data, TooLong):
            self._too_long(name, "the JSON array file (read whole: convert it to JSON Lines, e.g. "
                           "jq -c '.[]' FILE > FILE.jsonl)", data)
            return
        try:
            records = json.loads(self._decode(data, name, whole_file=True))
        except RecursionError:
            self._bad(name, "JSON nested too deeply", "flatten the records", reason="malformed_record")
            return
        except ValueError as e:
            where = f"{name}:{e.lineno}" if isinstance(e, json.JSONDecodeError) else name
            self._bad(where, f"not valid JSON ({getattr(e, 'msg', e)})", "fix the file")
            return
        for n, rec in enumerate(records, 1):
            yield n, rec, ""

    def _parsed_lines(self, f: IO[bytes], name: str) -> Iterator[tuple[int, object, str]]:
        for lineno, raw in capped_lines(f, self.cap):
            self.next_line = lineno + 1
            if isinstance(raw, TooLong):
                self._too_long(f"{name}:{lineno}", "the JSON line", raw)
                continue
            line = self._decode(raw, name, lineno)
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), line
            except RecursionError:
                self._bad(f"{name}:{lineno}", "JSON nested too deeply", "flatten the record", line)
            except ValueError as e:  # JSONDecodeError, or an integer of more than 4300 digits
                self._bad(f"{name}:{lineno}", f"not valid JSON ({getattr(e, 'msg', e)})", "fix the line", line)

    def _records(self, records: Iterator[tuple[int, object, str]], key: str, id_key: str | None,
                 name: str) -> Iterator[tuple[str, str]]:
        seen_text = False
        for lineno, rec, line in records:
            where = f"{name}:{lineno}"
            text = rec.get(key) if isinstance(rec, dict) else None
            if not isinstance(text, str):
                if not seen_text and isinstance(rec, dict) and lineno <= 1:
                    fields = ", ".join(sorted(rec))[:200]
                    raise WorkloadError(f"{self.field}.textField: {name} has no string field {key!r} "
                                        f"(fields: {fields}); set textField to the field holding the text")
                self._bad(where, f"no string field {key!r}", "fix the record", line)
                continue
            seen_text = True
            if id_key and isinstance(rec, dict) and id_key in rec:
                try:
                    doc_id = str(rec[id_key])
                except (ValueError, RecursionError) as e:  # an integer of more than 4300 digits
                    self._bad(where, f"id field {id_key!r} cannot be shown ({e})", "fix the record", line)
                    continue
            else:
                doc_id = where
            try:
                text.encode(), doc_id.encode()
            except UnicodeEncodeError:  # JSON can escape a lone UTF-16 surrogate; UTF-8 (and Arrow) cannot hold it
                self._bad(where, "a lone UTF-16 surrogate (a \\ud800-\\udfff escape) in the text or id",
                          "fix the record", line)
                continue
            yield text, doc_id

    def _parquet(self, path: Path, name: str) -> Iterator[tuple[str, str]]:
        """Row group by row group, only the text (and id) columns, each refused unread if too large."""
        key, id_key = self.source.text_field, self.source.id_field
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        if key not in names:
            raise WorkloadError(f"{self.field}.textField: {path} has no column {key!r} (columns: "
                                f"{', '.join(names)}); set textField to the text column")
        columns = [key] + ([id_key] if id_key and id_key in names else [])
        limit = max(ROW_GROUP_TEXT_BYTES, self.cap)
        row = 0
        for group in range(pf.metadata.num_row_groups):
            meta = pf.metadata.row_group(group)
            size = sum(meta.column(j).total_uncompressed_size for j in range(meta.num_columns)
                       if meta.column(j).path_in_schema.split(".")[0] in columns)
            rows = meta.num_rows
            self.position = f"{name}:{row}"
            if size > limit:
                self._too_long(f"{name}: row group {group} (rows {row}-{row + rows - 1})",
                               f"the row group ({rows} rows; Parquet is decoded a page at a time, so rewrite "
                               f"it with smaller row groups, e.g. pyarrow's row_group_size=10000; limit "
                               f"{limit} bytes)", size, count=rows)
            elif rows:
                per_batch = max(1, min(4096, rows * BATCH_BYTES // max(size, 1)))
                batches = pf.iter_batches(batch_size=per_batch, row_groups=[group], columns=columns)
                yield from self._table_batches(batches, name, path, first_row=row)
            row += rows

    def _table_batches(self, batches: Iterator[pa.RecordBatch], name: str, path: Path | str,
                       first_row: int = 0, validate: bool = False) -> Iterator[tuple[str, str]]:
        key, id_key = self.source.text_field, self.source.id_field
        row = first_row
        for batch in batches:
            names = batch.schema.names
            if key not in names:
                raise WorkloadError(f"{self.field}.textField: {path} has no column {key!r} (columns: "
                                    f"{', '.join(names)}); set textField to the text column")
            self.position = f"{name}:{row}"
            for column in ({key, id_key} & set(names)) if validate else ():
                # Arrow IPC is read unvalidated (memory-mapped): offsets past the buffer would read
                # outside it. Full validation checks offsets and UTF-8 (ArrowInvalid names the file).
                batch.column(column).validate(full=True)
            texts, lengths = _string_cells(batch.column(key), self.cap)
            ids: list[object] | None = None
            if id_key and id_key in names:
                ids_column = batch.column(id_key)
                if pa.types.is_string(ids_column.type) or pa.types.is_large_string(ids_column.type):
                    ids = [None if v is None else v.decode("utf-8", "replace")
                           for v in _string_cells(ids_column, self.cap)[0]]
                else:
                    ids = ids_column.to_pylist()
            for i, raw in enumerate(texts):
                where = f"{name}:{row + i}"
                if raw is None:
                    if lengths[i] is not None:
                        self._too_long(where, f"the {key!r} cell", lengths[i] or 0)
                    else:
                        self._bad(where, f"{key!r} is not a string", "fix the row")
                    continue
                yield self._decode(raw, where), str(ids[i]) if ids is not None else where
            row += len(texts)

    def _arrow_file(self, path: Path) -> Iterator[tuple[str, str]]:
        self.position = path.name
        with pa.memory_map(str(path)) as source:
            try:
                batches: Iterator[pa.RecordBatch] = iter(pa.ipc.open_stream(source))
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            yield from self._table_batches(batches, path.name, path, validate=True)

    def _huggingface(self) -> Iterator[tuple[str, str] | Doc]:
        hf = self.source.huggingface
        assert hf is not None
        field = f"{self.field}.huggingface.path"
        root = self.resolve(hf.path)
        if root.is_file():
            yield from self._file(root, "arrow", "huggingface.path")
            return
        if root.is_dir():
            if (root / "dataset_dict.json").exists():
                splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
                if hf.split not in splits:
                    raise WorkloadError(f"{self.field}.huggingface.split: {hf.split!r} is not in {root} "
                                        f"(splits: {', '.join(splits)}); pick one of them")
                root = root / hf.split
            state = root / "state.json"
            if state.exists():
                files = [root / d["filename"] for d in json.loads(state.read_text()).get("_data_files", [])]
            else:
                files = sorted(root.glob("*.arrow"))
            if not files:
                raise WorkloadError(f"{field}: {root} has no .arrow files; point it at a directory written "
                                    "by datasets' save_to_disk")
            for f in files:
                yield from self._file(f, "arrow", "huggingface.path")
            return
        yield from self._hub(field)

    def _hub(self, field: str) -> Iterator[tuple[str, str]]:
        hf = self.source.huggingface
        assert hf is not None
        try:
            import datasets
        except ImportError as e:
            raise WorkloadError(f"{field}: {hf.path!r} is not a local directory or .arrow file, and reading a hub "
                                "dataset needs the `datasets` package and network; save it with "
                                "datasets' save_to_disk(DIR) where the network is, and set path: DIR") from e
        try:
            ds = datasets.load_dataset(hf.path, hf.name, split=hf.split, revision=hf.revision, streaming=True)
        except Exception as e:  # any hub failure is the same user-facing problem
            raise WorkloadError(f"{field}: cannot load {hf.path!r} from the hub ({e}); check the id and the "
                                "network, or save it locally with save_to_disk and point path at it") from e
        for row, rec in enumerate(ds):
            text = rec.get(self.source.text_field)
            if not isinstance(text, str):
                raise WorkloadError(f"{self.field}.textField: {hf.path} has no string field "
                                    f"{self.source.text_field!r}; set textField")
            if len(text) > self.cap or len(text.encode("utf-8", "surrogatepass")) > self.cap:
                self._too_long(f"{hf.path}:{row}", "the text", len(text))
                continue
            yield text, str(rec.get(self.source.id_field, row)) if self.source.id_field else str(row)


class ReadProgress(Protocol):
    """Where reading starts, and what to tell at the end of each input file (a build that resumes,
    :mod:`llmfab.data.passes.checkpoint`)."""

    start: tuple[int, int, int]  # (source, unit within it, documents already taken from it)

    def unit_done(self, source: int, unit: int, taken: int, source_done: bool, emitted: int) -> None:
        """Unit ``unit`` of ``source`` is read; ``emitted`` documents were yielded in all so far."""
        ...


READING = "reading"  # the read step's detail: the counts of the source under way, for a resume


def read_documents(spec: DatasetSpec, resolve: Callable[[str], Path], counter: StepCounter,
                   batch_documents: int = BATCH_DOCUMENTS, batch_bytes: int = BATCH_BYTES,
                   progress: ReadProgress | None = None) -> Iterator[pa.RecordBatch]:
    """All sources, in spec order, as record batches of :data:`DOCUMENT_SCHEMA`.

    ``counter`` ("read") counts documents kept, malformed records skipped and documents left out by
    a source weight below 1; its ``sources`` detail has each source's :class:`SourceCounts`. Batch
    boundaries depend only on the input, never on the worker count, which is what makes the
    engines' output identical. With ``progress``, reading starts at its ``start`` (the units before
    it are not opened; the counts of a source read in part come back from the checkpointed
    counter's ``reading`` detail) and each unit's end is reported to it.
    """
    columns: tuple[list[str | None], ...] = ([], [], [], [], [])
    size = 0
    emitted = 0
    sources = counter.details.setdefault("sources", [])
    partial = counter.details.pop(READING, None)
    converters = spec.engine.workers or default_workers()  # the cores the cleaning workers would use
    first_source, first_unit, first_taken = progress.start if progress is not None else (0, 0, 0)
    for index, source in enumerate(spec.sources):
        if index < first_source:
            continue
        reader = SourceReader(source, index, resolve, counter, converters)
        if index == first_source and partial is not None:
            reader.counts = SourceCounts.from_stats(partial)
        label = reader.label
        taken = first_taken if index == first_source else 0
        full = False
        try:
            for unit, documents in enumerate(reader.units()):
                if index == first_source and unit < first_unit:
                    continue
                for item in documents:
                    if source.max_documents is not None and taken >= source.max_documents:
                        full = True
                        break
                    doc = Doc(*item)
                    taken += 1
                    counter.documents_in += 1
                    if source.weight < 1 and unit_hash(label, doc.id) >= source.weight:
                        counter.drop("sampled_out_by_weight")
                        continue
                    counter.documents_out += 1
                    for column, value in zip(columns, (doc.text, label, doc.id, doc.url, doc.meta), strict=True):
                        column.append(value)
                    size += len(doc.text)
                    emitted += 1
                    if len(columns[0]) >= batch_documents or size >= batch_bytes:
                        yield pa.record_batch(list(columns), schema=DOCUMENT_SCHEMA)
                        columns, size = ([], [], [], [], []), 0
                if progress is not None:
                    reader.counts.documents = taken
                    counter.details[READING] = reader.counts.stats()
                    progress.unit_done(index, unit, taken, full, emitted)
                if full:
                    break
        finally:
            counter.details.pop(READING, None)
            reader.counts.documents = taken
            sources.append({"source": label, **reader.counts.stats()})
    if columns[0]:
        yield pa.record_batch(list(columns), schema=DOCUMENT_SCHEMA)
