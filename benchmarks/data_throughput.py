"""Throughput of the whole clean pipeline: llmfab vs datatrove 0.10.1, one run, same machine.

Both read the same web-like corpus (`data_corpus.py`, built from the fetched English corpus) split
into `--files` JSONL files, and run: normalise (llmfab: NFC + ftfy + controls + whitespace;
datatrove: FTFYFormatter) -> Gopher repetition -> Gopher quality -> C4 -> FineWeb -> exact dedup
-> MinHash near dedup (word 5-grams, llmfab's default banding for threshold 0.8 and 128
permutations, passed to datatrove as buckets x hashes) -> tokenize. llmfab also trains its BPE
tokenizer inside that time; datatrove is handed the tokenizer.json llmfab wrote. Language ID is
off on both sides (datatrove's needs a download).

    .venv/bin/python benchmarks/data_throughput.py --corpus data/corpus --mb 100

Prints documents/s and MB/s (input MB per wall second) for each, the wall and CPU-time ratios,
and the documents each kept. The machine is shared: the load average is printed with each side.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_corpus import ensure_corpus
from data_measure import BENCH_PYTHON, ROOT, measured, run_llmfab_dataset

from llmfab.data.near_dedup import lsh_params


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus",
                        help="output of scripts/fetch_corpus.py")
    parser.add_argument("--mb", type=float, default=100.0, help="benchmark corpus size")
    parser.add_argument("--files", type=int, default=8, help="input files (datatrove tasks)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmfab-data-bench"))
    parser.add_argument("--skip-datatrove", action="store_true")
    args = parser.parse_args()

    corpus_dir = args.work / f"corpus-{args.mb:g}mb-{args.files}f"
    info = ensure_corpus(args.corpus, corpus_dir, args.mb, args.files)
    mb = int(info["bytes"]) / 1e6  # type: ignore[call-overload]
    docs = int(info["total_documents"])  # type: ignore[call-overload]
    print(f"corpus: {docs} documents, {mb:.1f} MB in {args.files} files "
          f"({info['exact']} exact copies, {info['near']} near copies, {info['junk']} junk)")

    shutil.rmtree(args.work / "llmfab", ignore_errors=True)
    ours = run_llmfab_dataset(args.work / "llmfab", "bench", str(corpus_dir / "docs-*.jsonl"),
                              args.workers)
    ours.pop("stdout")
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_model(),
               "cores": len(__import__("os").sched_getaffinity(0)), "mb": round(mb, 1),
               "documents": docs, "llmfab": ours}
    print(f"llmfab:    {ours['wall_s']:8.1f} s wall {ours['cpu_s']:8.1f} s CPU  "
          f"{docs / ours['wall_s']:8.1f} docs/s {mb / ours['wall_s']:6.2f} MB/s  "
          f"kept {ours['documents_out']}  peak RSS {ours['peak_rss_mb']} MB  "
          f"load {ours['load_before']}->{ours['load_after']}")

    if not args.skip_datatrove:
        bands, rows = lsh_params(0.8, 128)
        tokenizer = Path(ours["dataset_dir"]) / "tokenizer" / "tokenizer.json"
        cmd = [str(BENCH_PYTHON), str(ROOT / "benchmarks" / "data_datatrove_pipeline.py"),
               "--input", str(corpus_dir), "--work", str(args.work / "datatrove"),
               "--tokenizer", str(tokenizer), "--tasks", str(args.files),
               "--workers", str(args.workers), "--bands", str(bands), "--rows", str(rows)]
        peer = measured(cmd)
        peer.update(json.loads(peer.pop("stdout").strip().splitlines()[-1]))
        results["datatrove"] = peer
        print(f"datatrove: {peer['wall_s']:8.1f} s wall {peer['cpu_s']:8.1f} s CPU  "
              f"{docs / peer['wall_s']:8.1f} docs/s {mb / peer['wall_s']:6.2f} MB/s  "
              f"kept {peer['documents_out']}  peak RSS {peer['peak_rss_mb']} MB  "
              f"load {peer['load_before']}->{peer['load_after']}")
        results["wall_ratio"] = round(peer["wall_s"] / ours["wall_s"], 2)
        results["cpu_ratio"] = round(peer["cpu_s"] / ours["cpu_s"], 2)
        print(f"llmfab / datatrove throughput: {results['wall_ratio']}x (wall), "
              f"{results['cpu_ratio']}x (CPU time)")
    out = args.work / f"data_throughput-{args.mb:g}mb.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
