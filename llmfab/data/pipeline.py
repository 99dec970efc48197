"""The Dataset pipeline: sources → clean → dedup → filter → split → tokenizer → token shards.

Entry point for the workload and for benchmarks::

    build_dataset(spec: DatasetSpec, out_dir: Path, resolve: Callable[[str], Path],
                  reporter: StatusReporter | None = None, workers: int | None = None,
                  dependency: Callable[[str, str], Path] | None = None) -> dict

It writes ``tokenizer.model``, ``tokenizer/``, ``train|val|test/`` shards and ``stats.json`` into
``out_dir`` and returns the manifest body (without ``specHash``/``createdAt``); the caller writes
the manifest last (:mod:`llmfab.data.workload` does, inside ``staged_directory``). ``resolve``
turns spec paths into files; ``dependency(kind, name)`` finds another Dataset for
``tokenizer.fromDataset``; ``workers`` overrides ``spec.engine.workers``.

Passes: (0, only with ``normalize.removeBoilerplateLines``) count line keys across documents;
(1) workers normalise, filter and sketch each batch, the driver drops exact duplicates in input
order and spills survivors to an Arrow file; the near-duplicate clusters are then resolved;
(2) perplexity and outlier filters, split assignment and the tokenizer sample; (3) tokenizer
training; (4) workers encode, the driver writes shards in input order. Everything the driver
decides depends only on input order, so any engine and worker count give the same bytes.
"""

from __future__ import annotations

import collections
import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from llmfab.api.dataset import DatasetSpec
from llmfab.data import tokenizer as tok
from llmfab.data.cleaning import CleanBatch, LineKeysBatch
from llmfab.data.engine import LocalEngine, RayEngine, make_engine
from llmfab.data.exact_dedup import ExactDeduplicator
from llmfab.data.near_dedup import MinHasher, NearDuplicateIndex
from llmfab.data.outliers import outlier_reasons
from llmfab.data.perplexity import NgramModel, band_mask
from llmfab.data.readers import read_documents, source_label, unit_hash
from llmfab.data.shards import SPLITS, ShardWriter, token_dtype
from llmfab.data.split import split_of
from llmfab.data.steps import EXAMPLES_PER_REASON, StepStatsBook, example
from llmfab.errors import WorkloadError
from llmfab.status import StatusReporter

SPILL_SCHEMA = pa.schema([("text", pa.large_string()), ("source", pa.string()), ("id", pa.string()),
                          ("key", pa.binary(16))])
SPILL_BATCH = 1000
LM_SAMPLE_DOCUMENTS = 20_000
HF_CHECK_DOCUMENTS = 200
HF_CHECK_CHARS = 20_000
STEP_ORDER = ("read", "normalize", "language", "gopher_repetition", "gopher_quality", "c4", "fineweb",
              "exact_dedup", "near_dedup", "perplexity", "outliers")


class EncodeBatch:
    """Worker function: (text, split) → (ids, split)."""

    def __init__(self, model_bytes: bytes) -> None:
        self.encoder = tok.Encoder(model_bytes)

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = self.encoder.encode(batch.column("text").to_pylist())
        return pa.table({"ids": pa.array(ids, pa.list_(pa.uint32())), "split": batch.column("split")})


class _Build:
    def __init__(self, spec: DatasetSpec, out: Path, resolve: Callable[[str], Path],
                 reporter: StatusReporter | None, workers: int | None,
                 dependency: Callable[[str, str], Path] | None) -> None:
        self.spec, self.out, self.resolve = spec, out, resolve
        self.reporter, self.dependency = reporter, dependency
        self.work = out / "_work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.book = StepStatsBook(STEP_ORDER)
        self.engine: LocalEngine | RayEngine = make_engine(spec.engine, out, workers)
        self.labels: list[str] = []  # source:id of each spilled document
        self.stats: list[np.ndarray] = []  # outlier statistics per spilled batch, when enabled
        self.extra: dict[str, Any] = {}

    # -- reporting ---------------------------------------------------------------------------
    def progress(self, **fields: Any) -> None:
        if self.reporter is not None:
            self.reporter.progress(documentsRead=self.book.step("read").documents_out,
                                   steps=self.book.status(), **fields)

    def _settle_worker_steps(self) -> None:
        """In/out of the worker steps from their removal counts, in pipeline order."""
        current = self.book.step("read").documents_out
        for name in STEP_ORDER[1:7]:
            step = self.book.step(name)
            step.documents_in = current
            current -= sum(step.removed.values())
            step.documents_out = current

    # -- pass 0 and 1 ------------------------------------------------------------------------
    def _documents(self) -> Iterator[pa.RecordBatch]:
        return read_documents(self.spec, self.resolve, self.book.step("read"))

    def boilerplate(self) -> frozenset[bytes]:
        if not self.spec.normalize.remove_boilerplate_lines:
            return frozenset()
        counts: collections.Counter[bytes] = collections.Counter()
        for table in self.engine.map(LineKeysBatch(self.spec), self._documents()):
            for keys in table.column("keys").to_pylist():
                counts.update(keys)
        self.book = StepStatsBook(STEP_ORDER)  # the documents are read again below
        threshold = self.spec.normalize.boilerplate_min_documents
        lines = frozenset(k for k, c in counts.items() if c >= threshold)
        self.extra["boilerplateLines"] = len(lines)
        return lines

    def clean(self) -> dict[int, tuple[int, float]]:
        near = self.spec.dedup.near
        hasher = MinHasher(near) if near.enabled else None
        index = NearDuplicateIndex(near, self.work / "shingles.u64", hasher.bands) if hasher else None
        exact = ExactDeduplicator()
        ex_step = self.book.step("exact_dedup")
        spill = pa.OSFile(str(self.work / "clean.arrow"), "wb")
        writer = pa.ipc.new_stream(spill, SPILL_SCHEMA)
        boiler = self.boilerplate()
        batches = 0
        for table in self.engine.map(CleanBatch(self.spec, boiler), self._documents()):
            cols = {c: table.column(c).to_pylist() for c in ("text", "source", "id", "reason", "key", "edits")}
            for edit in cols["edits"]:
                for part in (edit or "").split(";")[:-1]:
                    step_name, chars = part.split(":")
                    self.book.step(step_name).documents_edited += 1
                    self.book.step(step_name).characters_removed += int(chars)
            keep: list[int] = []
            for i, reason in enumerate(cols["reason"]):
                if reason is not None:
                    step, why = reason.split(":", 1)
                    self.book.step(step).drop(why, example(cols["text"][i], cols["source"][i], cols["id"][i]))
                    continue
                ex_step.documents_in += 1
                first = exact.check(cols["key"][i], len(self.labels))
                if first is not None:
                    ex_step.drop("exact_duplicate", example(cols["text"][i], cols["source"][i], cols["id"][i],
                                                            f"copy of {self.labels[first]}"))
                    continue
                keep.append(i)
                self.labels.append(f"{cols['source'][i]}:{cols['id'][i]}")
            ex_step.documents_out += len(keep)
            if keep:
                idx = pa.array(keep, pa.int64())
                kept = table.take(idx)
                if self.spec.filters.outliers.enabled:
                    flat = kept.column("stats").combine_chunks()
                    self.stats.append(flat.values.to_numpy().reshape(len(keep), -1))
                writer.write_table(kept.select(["text", "source", "id", "key"]).cast(SPILL_SCHEMA))
                if index is not None:
                    bands = kept.column("bands").combine_chunks()
                    keys = bands.values.to_numpy().reshape(len(keep), -1)
                    sh = kept.column("shingles").combine_chunks()
                    offsets = sh.offsets.to_numpy() - sh.offsets[0].as_py()
                    index.add(keys, sh.values.to_numpy(), offsets)
            batches += 1
            if batches % 20 == 0:
                self._settle_worker_steps()
                self.progress()
        writer.close()
        spill.close()
        self._settle_worker_steps()
        if index is None:
            return {}
        dups = index.duplicates()
        self.extra["nearDedup"] = {"bands": hasher.bands if hasher else 0, "rows": hasher.rows if hasher else 0,
                                   "threshold": near.threshold}
        return dups

    def spilled(self) -> Iterator[tuple[int, pa.Table]]:
        """(index of the first row, table) over the spill file, in order."""
        start = 0
        with pa.OSFile(str(self.work / "clean.arrow"), "rb") as f:
            for batch in pa.ipc.open_stream(f):
                yield start, pa.Table.from_batches([batch])
                start += batch.num_rows

    # -- pass 2 ------------------------------------------------------------------------------
    def select(self, dups: dict[int, tuple[int, float]]) -> np.ndarray:
        """Keep mask over spilled documents after near dedup, perplexity and outliers."""
        n = len(self.labels)
        keep = np.ones(n, dtype=bool)
        near = self.book.step("near_dedup")
        near.documents_in = n
        for i in sorted(dups):
            keep[i] = False
        if dups:
            shown = sorted(dups)[:EXAMPLES_PER_REASON]
            for start, table in self.spilled():
                for i in shown:
                    if start <= i < start + table.num_rows:
                        kept_as, jac = dups[i]
                        near.drop("near_duplicate", example(table.column("text")[i - start].as_py(), "",
                                  self.labels[i], f"duplicate of {self.labels[kept_as]} (jaccard {jac:.3f})"),
                                  count=0)
                if start > shown[-1]:
                    break
            near.removed["near_duplicate"] = len(dups)
        near.documents_out = int(keep.sum())
        self._perplexity(keep)
        out = self.book.step("outliers")
        out.documents_in = int(keep.sum())
        if self.spec.filters.outliers.enabled and keep.any():
            alive = np.flatnonzero(keep)
            reasons = outlier_reasons(np.concatenate(self.stats)[alive], self.spec.filters.outliers.max_z_score)
            for i, r in zip(alive.tolist(), reasons, strict=True):
                if r is not None:
                    keep[i] = False
                    out.drop(r, example("", "", self.labels[i]))
        out.documents_out = int(keep.sum())
        return keep

    def _perplexity(self, keep: np.ndarray) -> None:
        p = self.spec.filters.perplexity
        step = self.book.step("perplexity")
        step.documents_in = int(keep.sum())
        if p.enabled and keep.any():
            model = NgramModel(p.order)
            if p.reference:
                ref = self.resolve(p.reference)
                files = sorted(ref.rglob("*.txt")) if ref.is_dir() else [ref]
                if not ref.exists() or not files:
                    raise WorkloadError(f"spec.filters.perplexity.reference: {p.reference!r} does not exist or has "
                                        "no .txt files; point it at reference text or remove it to use the corpus")
                model.fit([f.read_text(errors="replace")] for f in files)
            else:
                model.fit(self._texts(keep, limit=LM_SAMPLE_DOCUMENTS))
            ppl = np.full(len(keep), np.inf)
            for start, table in self.spilled():
                ppl[start: start + table.num_rows] = model.perplexity(table.column("text").to_pylist())
            alive = np.flatnonzero(keep)
            mask, lo, hi = band_mask(ppl[alive], p.low_percentile, p.high_percentile)
            for i, ok in zip(alive.tolist(), mask.tolist(), strict=True):
                if not ok:
                    keep[i] = False
                    step.drop("perplexity_above_band" if ppl[i] > hi else "perplexity_below_band",
                              example("", "", self.labels[i], f"perplexity {ppl[i]:.1f}"))
            self.extra["perplexityBand"] = [lo, hi]
        step.documents_out = int(keep.sum())

    def _texts(self, keep: np.ndarray, limit: int, split: str | None = None) -> Iterator[list[str]]:
        taken = 0
        for start, table in self.spilled():
            texts = table.column("text").to_pylist()
            keys = table.column("key").to_pylist()
            chosen = [t for j, (t, k) in enumerate(zip(texts, keys, strict=True)) if keep[start + j]
                      and (split is None or split_of(k, self.spec.split) == split)]
            chosen = chosen[: limit - taken]
            taken += len(chosen)
            if chosen:
                yield chosen
            if taken >= limit:
                return

    # -- pass 3: tokenizer -------------------------------------------------------------------
    def reused_tokenizer(self) -> Path | None:
        """The .model file to reuse, checked before any work is done (fail fast), or None."""
        spec = self.spec.tokenizer
        if spec.from_dataset is not None:
            if self.dependency is None:
                raise WorkloadError("spec.tokenizer.fromDataset: no way to look up other Datasets here; "
                                    "use tokenizer.path with the .model file")
            src = self.dependency("Dataset", spec.from_dataset.name) / "tokenizer.model"
            if not src.is_file():
                raise WorkloadError(f"spec.tokenizer.fromDataset: Dataset {spec.from_dataset.name} has no "
                                    f"tokenizer.model ({src}); rebuild it or use tokenizer.path")
            return src
        if spec.path is not None:
            src = self.resolve(spec.path)
            if not src.is_file():
                raise WorkloadError(f"spec.tokenizer.path: {spec.path!r} does not exist (resolved to {src}); "
                                    "fix the path or remove it to train a tokenizer")
            try:
                tok.load_processor(src)
            except (RuntimeError, OSError) as e:
                raise WorkloadError(f"spec.tokenizer.path: {src} is not a SentencePiece model ({e}); "
                                    "point it at a .model file") from e
            return src
        return None

    def tokenizer(self, keep: np.ndarray, reused: Path | None) -> Path:
        spec = self.spec.tokenizer
        model = self.out / "tokenizer.model"
        if reused is not None:
            shutil.copyfile(reused, model)
        else:
            n_train = sum(len(b) for b in self._texts(keep, 1 << 62, "train"))
            stride = max(1, math.ceil(n_train / spec.sample_documents))
            sample = (t for batch in self._texts(keep, 1 << 62, "train") for t in batch)
            tok.train_sentencepiece(spec, (t for i, t in enumerate(sample) if i % stride == 0), model)
            self.extra["tokenizerTrainingDocuments"] = math.ceil(n_train / stride)
        tok.write_hf_tokenizer(model, self.out / "tokenizer")
        check = [t[:HF_CHECK_CHARS] for batch in self._texts(keep, HF_CHECK_DOCUMENTS) for t in batch]
        bad = tok.hf_mismatches(model, self.out / "tokenizer", check)
        self.extra["hfTokenizerCheck"] = {"documents": len(check), "mismatches": len(bad)}
        if bad and reused is not None:  # e.g. a dummy-prefix model on text that starts with a space
            if self.reporter is not None:
                self.reporter.event("TokenizerMismatch", f"the Hugging Face tokenizer differs from the reused "
                                    f"SentencePiece model on {len(bad)} of {len(check)} documents", "Warning")
        elif bad:
            raise WorkloadError(f"spec.tokenizer: the Hugging Face tokenizer differs from SentencePiece on "
                                f"{len(bad)} of {len(check)} documents (e.g. {bad[0][:80]!r}); use a model "
                                "trained by llmfab (no dummy prefix) or report the text")
        return model

    # -- pass 4: shards ----------------------------------------------------------------------
    def shards(self, keep: np.ndarray, model: Path) -> dict[str, Any]:
        ids = tok.special_ids(model)
        sp = tok.load_processor(model)
        vocab = int(sp.get_piece_size())
        dtype = token_dtype(vocab)
        writers = {s: ShardWriter(self.out, s, dtype, ids["eosId"], self.spec.output.shard_tokens) for s in SPLITS}
        weights = {source_label(s, i): s.weight for i, s in enumerate(self.spec.sources)}

        def inputs() -> Iterator[pa.Table]:
            for start, table in self.spilled():
                texts, splits = [], []
                for j, (text, src, key) in enumerate(zip(table.column("text").to_pylist(),
                                                          table.column("source").to_pylist(),
                                                          table.column("key").to_pylist(), strict=True)):
                    if not keep[start + j]:
                        continue
                    w = weights.get(src, 1.0)
                    copies = 1 if w <= 1 else int(w) + (unit_hash(self.labels[start + j], "repeat") < w - int(w))
                    split = split_of(key, self.spec.split)
                    texts += [text] * copies
                    splits += [split] * copies
                if texts:
                    yield pa.table({"text": pa.array(texts, pa.large_string()), "split": splits})

        done = 0
        for table in self.engine.map(EncodeBatch(model.read_bytes()), inputs()):
            for row_ids, split in zip(table.column("ids").to_numpy(zero_copy_only=False),
                                      table.column("split").to_pylist(), strict=True):
                writers[split].write(row_ids)
            done += table.num_rows
            self.progress(documents=done)
        splits = {s: w.finish() for s, w in writers.items()}
        return {"vocabSize": vocab, "dtype": dtype.name.replace("<", ""), **ids,
                "tokenizer": "tokenizer.model", "hfTokenizer": "tokenizer", "splits": splits}

    def run(self) -> dict[str, Any]:
        try:
            reused = self.reused_tokenizer()
            dups = self.clean()
            self.progress()
            keep = self.select(dups)
            self.progress()
            if not keep.any():
                raise WorkloadError(self._empty_message())
            model = self.tokenizer(keep, reused)
            manifest = self.shards(keep, model)
        finally:
            self.engine.close()
        shutil.rmtree(self.work, ignore_errors=True)
        split_tokens = {s: v["tokens"] for s, v in manifest["splits"].items()}
        documents = sum(v["documents"] for v in manifest["splits"].values())
        stats = {"steps": self.book.stats(), "documents": documents, "tokens": sum(split_tokens.values()),
                 "splitTokens": split_tokens, **self.extra}
        (self.out / "stats.json").write_text(json.dumps(stats, indent=2, default=str) + "\n")
        self.progress(documents=documents, tokens=stats["tokens"], splitTokens=split_tokens,
                      vocabSize=manifest["vocabSize"])
        return {"kind": "Dataset", **manifest}

    def _empty_message(self) -> str:
        removed = collections.Counter({f"{s.name}:{r}": c for s in self.book.steps.values()
                                       for r, c in s.removed.items()})
        top = ", ".join(f"{k} {v}" for k, v in removed.most_common(4)) or "nothing was read"
        read = self.book.step("read").documents_in
        return (f"spec.filters: no documents left after cleaning ({read} read; removed: {top}); loosen or "
                "disable the steps that removed most (spec.filters.*, spec.dedup) or add sources")


def build_dataset(spec: DatasetSpec, out_dir: Path, resolve: Callable[[str], Path],
                  reporter: StatusReporter | None = None, workers: int | None = None,
                  dependency: Callable[[str, str], Path] | None = None) -> dict[str, Any]:
    """Build the Dataset into ``out_dir``; return the manifest body (see the module docstring)."""
    return _Build(spec, Path(out_dir), resolve, reporter, workers, dependency).run()
