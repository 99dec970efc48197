"""Peak memory of llmfab's Dataset pipeline as the corpus grows 10x (goal: flat).

Builds the same web-like corpus (`data_corpus.py`) at `--mb` and `--factor` x `--mb`, runs the
whole pipeline on each through `run_stage("data", spec)` (default filters, exact and near dedup,
BPE tokenizer, language ID off as in the throughput benchmark), and reports the peak summed RSS
of the process tree (driver + workers) and its growth.

    .venv/bin/python benchmarks/data_memory.py --corpus data/corpus --mb 4 --factor 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_corpus import ensure_corpus
from data_measure import ROOT, run_llmfab_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus")
    parser.add_argument("--mb", type=float, default=4.0, help="size of the 1x corpus")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llmfab-data-memory"))
    args = parser.parse_args()
    rows = []
    for scale in (1, args.factor):
        mb = args.mb * scale
        corpus = args.work / f"corpus-{mb:g}mb"
        info = ensure_corpus(args.corpus, corpus, mb, args.files)
        shutil.rmtree(args.work / f"run-{scale}x", ignore_errors=True)
        run = run_llmfab_dataset(args.work / f"run-{scale}x", "memory", str(corpus / "docs-*.jsonl"),
                                 args.workers)
        run.pop("stdout")
        rows.append({"scale": scale, "mb": round(int(info["bytes"]) / 1e6, 1),  # type: ignore[call-overload]
                     "documents": info["total_documents"], **run})
        print(f"{scale:3d}x {rows[-1]['mb']:7.1f} MB {info['total_documents']:8} docs: "
              f"peak RSS {run['peak_rss_mb']:7.1f} MB, {run['wall_s']} s wall, {run['cpu_s']} s CPU, "
              f"load {run['load_before']}->{run['load_after']}")
    growth = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"peak RSS grows {growth:.2f}x for {args.factor}x the corpus")
    print(json.dumps({"rows": rows, "rss_growth": round(growth, 2)}))


if __name__ == "__main__":
    main()
