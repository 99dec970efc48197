"""Encoding speed and agreement: SentencePiece vs the exported Hugging Face tokenizer, one run.

The Dataset's shards are encoded by the exported ``tokenizer.json`` (``tokenizers``, what
transformers and vLLM run) instead of SentencePiece (issue 19). This measures what that costs on
the fetched corpus: SentencePiece ``encode`` (one thread), ``tokenizers`` ``encode_batch_fast`` with
parallelism off (what each engine worker does) and on, and on how many documents the two give
other ids (unigram near-ties; see llmfab/data/tokenizer.py).

    .venv/bin/python benchmarks/tokenizer_encode.py --corpus data/corpus --type unigram --vocab 8192

Prints MB/s of wall time and of CPU time (the machine is shared: the load average is printed too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llmfab.api.dataset import Tokenizer
from llmfab.data import tokenizer as tok


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timed(label: str, megabytes: float, fn: Callable[[], list[list[int]]]) -> list[list[int]]:
    wall, cpu = time.perf_counter(), time.process_time()
    ids = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:<34} {wall:7.1f} s wall {megabytes / wall:6.2f} MB/s   {cpu:7.1f} s CPU "
          f"{megabytes / cpu:6.2f} MB/s   load {os.getloadavg()[0]:.1f}", flush=True)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("data/corpus"), help="output of scripts/fetch_corpus.py")
    parser.add_argument("--type", choices=["unigram", "bpe"], default="unigram")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--model", type=Path, help="a trained .model to use instead of training one")
    args = parser.parse_args()

    texts = [json.loads(line)["text"] for f in sorted(args.corpus.glob("*.jsonl")) for line in f.open()]
    if not texts:
        raise SystemExit(f"--corpus: no *.jsonl documents in {args.corpus}; run scripts/fetch_corpus.py")
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; {len(texts)} documents, {megabytes:.1f} MB")
    with tempfile.TemporaryDirectory() as work:
        model = args.model or Path(work) / "tokenizer.model"
        if args.model is None:
            start = time.perf_counter()
            tok.train_sentencepiece(Tokenizer(type=args.type, vocab_size=args.vocab), texts, model)
            print(f"trained {args.type} {args.vocab} in {time.perf_counter() - start:.1f} s")
        hf_dir = Path(work) / "hf"
        tok.write_hf_tokenizer(model, hf_dir)
        sp = tok.load_processor(model)
        encoder = tok.Encoder((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
        sp_ids = timed("sentencepiece encode, 1 thread", megabytes, lambda: sp.encode(texts, num_threads=1))
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        hf_ids = timed("tokenizers encode_batch_fast, 1", megabytes, lambda: encoder.encode(texts))
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        timed(f"tokenizers encode_batch_fast, {os.cpu_count()}", megabytes, lambda: encoder.encode(texts))
    differ = sum(a != b for a, b in zip(sp_ids, hf_ids, strict=True))
    tokens = sum(map(len, hf_ids))
    print(f"documents where SentencePiece's ids differ: {differ} of {len(texts)}; "
          f"tokens {sum(map(len, sp_ids))} (SentencePiece) vs {tokens} (tokenizers)")


if __name__ == "__main__":
    main()
