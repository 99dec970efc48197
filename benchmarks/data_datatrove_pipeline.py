"""The peer side of `data_throughput.py`: datatrove 0.10.1 running the same clean pipeline.

Runs in its own virtual environment (`.venv-bench`: datatrove, spacy, ftfy, tokenizers), never in
llmfab's. Steps, in llmfab's order and with llmfab's default thresholds passed explicitly:

1. read JSONL -> FTFYFormatter (ftfy + NFC) -> GopherRepetition -> GopherQuality -> C4Quality ->
   FineWebQuality -> write
2-4. exact dedup (ExactDedupSignature / ExactFindDedups / ExactDedupFilter) on the text
5-8. MinHash dedup, word 5-grams, `--bands` x `--rows` hashes (MinhashDedupSignature / Buckets /
   Cluster / Filter) -> DocumentTokenizer with `--tokenizer` (a tokenizer.json), EOS after each doc

Language, bad-words, fastText and unigram-logprob filters fetch assets at run time and fail
offline, so neither side runs them. Prints one JSON line with documents in/out and seconds.

    .venv-bench/bin/python benchmarks/data_datatrove_pipeline.py --input DIR --work DIR \
        --tokenizer tokenizer.json --tasks 8 --workers 2 --bands 25 --rows 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.formatters import FTFYFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.pipeline.writers import JsonlWriter


def document_text(doc: Document) -> str:
    """Exact-dedup content (datatrove reads the return annotation to pick the hash input type)."""
    return doc.text


def count_jsonl(folder: Path) -> int:
    return sum(sum(1 for _ in open(p, encoding="utf-8")) for p in folder.glob("*.jsonl"))


def run(args: argparse.Namespace) -> dict[str, object]:
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    logs = work / "logs"
    tasks, workers = args.tasks, args.workers
    minhash = MinhashConfig(n_grams=5, num_buckets=args.bands, hashes_per_bucket=args.rows, seed=1)
    exact = ExactDedupConfig(content_getter=document_text)

    def reader(folder: Path) -> JsonlReader:
        return JsonlReader(str(folder), glob_pattern="*.jsonl", compression=None)

    def writer(folder: Path) -> JsonlWriter:
        return JsonlWriter(str(folder), output_filename="${rank}.jsonl", compression=None)

    stages = [
        ("filter", [reader(args.input), FTFYFormatter(),
                    GopherRepetitionFilter(), GopherQualityFilter(),
                    C4QualityFilter(), FineWebQualityFilter(char_duplicates_ratio=0.1),
                    writer(work / "filtered")], tasks),
        ("exact-sig", [reader(work / "filtered"),
                       ExactDedupSignature(str(work / "exact-sigs"), config=exact)], tasks),
        ("exact-find", [ExactFindDedups(str(work / "exact-sigs"), str(work / "exact-dups"),
                                        config=exact)], 1),
        ("exact-filter", [reader(work / "filtered"),
                          ExactDedupFilter(str(work / "exact-dups"), config=exact),
                          writer(work / "exact")], tasks),
        ("minhash-sig", [reader(work / "exact"),
                         MinhashDedupSignature(str(work / "mh-sigs"), config=minhash)], tasks),
        ("minhash-buckets", [MinhashDedupBuckets(str(work / "mh-sigs"), str(work / "mh-buckets"),
                                                 config=minhash)], args.bands),
        ("minhash-cluster", [MinhashDedupCluster(str(work / "mh-buckets"), str(work / "mh-remove"),
                                                 config=minhash)], 1),
        ("minhash-filter-tokenize", [
            reader(work / "exact"), MinhashDedupFilter(str(work / "mh-remove")),
            writer(work / "final"),
            DocumentTokenizer(str(work / "tokens"), tokenizer_name_or_path=str(args.tokenizer),
                              eos_token=args.eos, shuffle_documents=False),
        ], tasks),
    ]
    seconds: dict[str, float] = {}
    started = time.monotonic()
    for name, pipeline, n_tasks in stages:
        t0 = time.monotonic()
        LocalPipelineExecutor(pipeline=pipeline, tasks=n_tasks, workers=workers,
                              logging_dir=str(logs / name), skip_completed=False).run()
        seconds[name] = round(time.monotonic() - t0, 2)
    total = time.monotonic() - started
    return {
        "tool": "datatrove", "seconds": round(total, 2), "stage_seconds": seconds,
        "documents_in": count_jsonl(args.input), "after_filters": count_jsonl(work / "filtered"),
        "after_exact": count_jsonl(work / "exact"), "documents_out": count_jsonl(work / "final"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="folder of *.jsonl (text, id)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer.json")
    parser.add_argument("--eos", default="</s>")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bands", type=int, default=25)
    parser.add_argument("--rows", type=int, default=5)
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
