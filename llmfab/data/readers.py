"""Read sources into streamed Arrow record batches of documents (text, source, id).

Plain text, Markdown, JSON Lines, Parquet and Arrow (a Hugging Face ``save_to_disk`` directory is
Arrow IPC stream files plus ``state.json``), each optionally gzip/zstd compressed. Files are read
lazily, record by record or Parquet/Arrow batch by batch, and emitted in batches of bounded size,
so memory does not grow with the corpus. A source's ``weight`` below 1 samples documents here,
deterministically from a hash of source and id; weights above 1 repeat documents after dedup
(see :mod:`llmfab.data.pipeline`) so exact dedup does not undo them.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from llmfab.api.dataset import DatasetSpec, Source
from llmfab.data.steps import DOCUMENT_SCHEMA, StepCounter, example
from llmfab.errors import WorkloadError

TEXT_SUFFIXES = {".txt", ".md", ".text", ".markdown"}
JSON_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
ARROW_SUFFIXES = {".arrow"}
COMPRESSED = {".gz", ".zst", ".zstd"}
BATCH_DOCUMENTS = 1000
BATCH_BYTES = 8 << 20


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


def _suffixes(path: Path) -> tuple[str, str]:
    """(format suffix, compression suffix) of ``data.jsonl.gz`` → (".jsonl", ".gz")."""
    suffixes = [s.lower() for s in path.suffixes]
    comp = suffixes[-1] if suffixes and suffixes[-1] in COMPRESSED else ""
    rest = suffixes[:-1] if comp else suffixes
    return (rest[-1] if rest else ""), comp


def _format_of(path: Path, declared: str) -> str:
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
                            ".arrow, optionally .gz/.zst); fix the path or glob")
    for f in files:
        if not _format_of(f, source.format):
            raise WorkloadError(f"{field}: cannot tell the format of {f.name}; set format: text|jsonl|parquet "
                                "on the source or use a known extension")
    return files


def _open_text(path: Path, strict: bool) -> IO[str]:
    errors = "strict" if strict else "replace"
    _, comp = _suffixes(path)
    if comp == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors=errors, newline="")
    if comp in (".zst", ".zstd"):
        import zstandard

        raw = zstandard.open(path, "rb")
        return io.TextIOWrapper(raw, encoding="utf-8", errors=errors, newline="")
    return open(path, encoding="utf-8", errors=errors, newline="")


class SourceReader:
    """Documents of one source as ``(text, id)``; malformed records fail or are counted as skipped."""

    def __init__(self, source: Source, index: int, resolve: Callable[[str], Path], counter: StepCounter) -> None:
        self.source = source
        self.index = index
        self.field = f"spec.sources[{index}]"
        self.label = source_label(source, index)
        self.resolve = resolve
        self.counter = counter

    def _bad(self, where: str, what: str, fix: str, text: str = "") -> None:
        if self.source.on_error == "fail":
            raise WorkloadError(f"{self.field}: {where}: {what}; {fix}, or set onError: skip to skip and count "
                                "such records")
        self.counter.documents_in += 1
        self.counter.drop("malformed_record", example(text, self.label, where, what))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if self.source.huggingface is not None:
            yield from self._huggingface()
            return
        for path in expand_paths(self.source, f"{self.field}.path", self.resolve):
            yield from self._file(path)

    def _file(self, path: Path) -> Iterator[tuple[str, str]]:
        fmt = _format_of(path, self.source.format)
        name = path.name
        try:
            if fmt == "text":
                yield from self._text(path, name)
            elif fmt == "jsonl":
                yield from self._jsonl(path, name)
            elif fmt == "parquet":
                yield from self._table_batches(pq.ParquetFile(path).iter_batches(batch_size=4096), name, path)
            else:
                yield from self._arrow_file(path)
        except UnicodeDecodeError as e:
            raise WorkloadError(f"{self.field}.path: {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                                "convert it to UTF-8 or set onError: skip to replace bad bytes") from e
        except (OSError, EOFError, pa.ArrowInvalid) as e:
            if isinstance(e, WorkloadError):
                raise
            raise WorkloadError(f"{self.field}.path: cannot read {path}: {e}; fix or remove the file") from e

    def _text(self, path: Path, name: str) -> Iterator[tuple[str, str]]:
        per = self.source.document_per
        with _open_text(path, strict=self.source.on_error == "fail") as f:
            if per == "file":
                yield f.read(), name
                return
            if per == "line":
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield line.rstrip("\r\n"), f"{name}:{lineno}"
                return
            group: list[str] = []
            paragraphs, part, current = 0, 0, ""
            for line in f:
                if line.strip():
                    current += line
                    continue
                if current:
                    group.append(current)
                    current = ""
                    paragraphs += 1
                    if paragraphs == self.source.paragraphs_per_document:
                        yield "\n".join(group), f"{name}#{part}"
                        group, paragraphs, part = [], 0, part + 1
            if current:
                group.append(current)
            if group:
                yield "\n".join(group), f"{name}#{part}"

    def _jsonl(self, path: Path, name: str) -> Iterator[tuple[str, str]]:
        key, id_key = self.source.text_field, self.source.id_field
        with _open_text(path, strict=self.source.on_error == "fail") as f:
            head = f.read(1)
            while head.isspace():
                head = f.read(1)
            if head == "[":  # a JSON array, not JSON Lines
                f.seek(0)
                records = enumerate(json.load(f), 1)
                yield from self._records(((n, r, "") for n, r in records), key, id_key, name)
                return
            lines = (head + line if n == 1 else line for n, line in enumerate(f, 1))
            yield from self._records(self._parsed_lines(lines, name), key, id_key, name)

    def _parsed_lines(self, lines: Iterator[str], name: str) -> Iterator[tuple[int, object, str]]:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), line
            except json.JSONDecodeError as e:
                self._bad(f"{name}:{lineno}", f"not valid JSON ({e.msg})", "fix the line", line)

    def _records(self, records: Iterator[tuple[int, object, str]], key: str, id_key: str | None,
                 name: str) -> Iterator[tuple[str, str]]:
        seen_text = False
        for lineno, rec, line in records:
            text = rec.get(key) if isinstance(rec, dict) else None
            if not isinstance(text, str):
                if not seen_text and isinstance(rec, dict) and lineno <= 1:
                    fields = ", ".join(sorted(rec))[:200]
                    raise WorkloadError(f"{self.field}.textField: {name} has no string field {key!r} "
                                        f"(fields: {fields}); set textField to the field holding the text")
                self._bad(f"{name}:{lineno}", f"no string field {key!r}", "fix the record", line or str(rec))
                continue
            seen_text = True
            doc_id = str(rec[id_key]) if id_key and isinstance(rec, dict) and id_key in rec else f"{name}:{lineno}"
            yield text, doc_id

    def _table_batches(self, batches: Iterator[pa.RecordBatch], name: str, path: Path | str) -> Iterator[tuple[str, str]]:
        key, id_key = self.source.text_field, self.source.id_field
        row = 0
        for batch in batches:
            names = batch.schema.names
            if key not in names:
                raise WorkloadError(f"{self.field}.textField: {path} has no column {key!r} (columns: "
                                    f"{', '.join(names)}); set textField to the text column")
            texts = batch.column(key).to_pylist()
            ids = batch.column(id_key).to_pylist() if id_key and id_key in names else None
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    self._bad(f"{name}:{row + i}", f"{key!r} is not a string", "fix the row")
                    continue
                yield text, str(ids[i]) if ids is not None else f"{name}:{row + i}"
            row += len(texts)

    def _arrow_file(self, path: Path) -> Iterator[tuple[str, str]]:
        with pa.memory_map(str(path)) as source:
            try:
                batches: Iterator[pa.RecordBatch] = iter(pa.ipc.open_stream(source))
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            yield from self._table_batches(batches, path.name, path)

    def _huggingface(self) -> Iterator[tuple[str, str]]:
        hf = self.source.huggingface
        assert hf is not None
        field = f"{self.field}.huggingface.path"
        root = self.resolve(hf.path)
        if root.is_file():
            yield from self._arrow_file(root)
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
                yield from self._arrow_file(f)
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
            yield text, str(rec.get(self.source.id_field, row)) if self.source.id_field else str(row)


def read_documents(spec: DatasetSpec, resolve: Callable[[str], Path], counter: StepCounter,
                   batch_documents: int = BATCH_DOCUMENTS, batch_bytes: int = BATCH_BYTES
                   ) -> Iterator[pa.RecordBatch]:
    """All sources, in spec order, as record batches of :data:`DOCUMENT_SCHEMA`.

    ``counter`` ("read") counts documents kept, malformed records skipped and documents left out by
    a source weight below 1. Batch boundaries depend only on the input, never on the worker count,
    which is what makes the engines' output identical.
    """
    texts: list[str] = []
    labels: list[str] = []
    ids: list[str] = []
    size = 0
    for index, source in enumerate(spec.sources):
        reader = SourceReader(source, index, resolve, counter)
        label = reader.label
        taken = 0
        for text, doc_id in reader:
            if source.max_documents is not None and taken >= source.max_documents:
                break
            taken += 1
            counter.documents_in += 1
            if source.weight < 1 and unit_hash(label, doc_id) >= source.weight:
                counter.drop("sampled_out_by_weight")
                continue
            counter.documents_out += 1
            texts.append(text)
            labels.append(label)
            ids.append(doc_id)
            size += len(text)
            if len(texts) >= batch_documents or size >= batch_bytes:
                yield pa.record_batch([texts, labels, ids], schema=DOCUMENT_SCHEMA)
                texts, labels, ids, size = [], [], [], 0
    if texts:
        yield pa.record_batch([texts, labels, ids], schema=DOCUMENT_SCHEMA)
