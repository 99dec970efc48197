"""The MediaWiki reader on a large generated dump: pages/s, and memory (RSS) as the dump goes by.

The dump is written here in the export schema (``tests/data/web_fixtures.py``): each article is the
fixture's three articles' wikitext in one page (~4.3 KB: templates, nested templates, an infobox,
references, a table, files, categories), retitled; a redirect, a disambiguation page and five
pages of other namespaces follow the first copy. bzip2-compressed like Wikimedia's files. The reader
(expat stream here, mwparserfromhell in its child process) runs as the Dataset runs it; CPU
seconds count both processes; this process's RSS is sampled at 10 checkpoints (flat means memory
does not grow with the dump) and the child's peak is printed.

    .venv/bin/python benchmarks/mediawiki_read.py [--pages 20000] [--work /tmp/wiki-bench]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmfab.data.bounded_reading import TooLong, open_decompressed  # noqa: E402
from llmfab.data.mediawiki import mediawiki_documents  # noqa: E402
from llmfab.data.record_sink import SourceCounts  # noqa: E402
from tests.data.web_fixtures import WIKI_ARTICLES, write_wiki_dump  # noqa: E402


class Sink:
    """Counts only: what the benchmark needs of the reader's sink."""

    def __init__(self, converters: int) -> None:
        self.cap = 8 << 20
        self.counts = SourceCounts()
        self.converters = converters

    def skip(self, reason: str, where: str, text: str = "") -> None:
        self.counts.skipped[reason] += 1

    def bad(self, where: str, what: str, fix: str, text: str = "", reason: str = "malformed_record") -> None:
        raise SystemExit(f"{where}: {what}")

    def too_long(self, where: str, what: str, size: int | TooLong) -> None:
        self.counts.skipped["too_long"] += 1


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=20_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/wiki-bench"))
    parser.add_argument("--converters", type=int, nargs="+", default=[1, len(os.sched_getaffinity(0))],
                        help="conversion child processes (a Dataset uses one per engine worker); one run each")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    dump = args.work / f"benchwiki-{args.pages}-pages-articles.xml.bz2"
    body = "\n".join(WIKI_ARTICLES.values())
    if not dump.exists():
        started = time.perf_counter()
        write_wiki_dump(dump, {"Article": body}, copies=args.pages)
        print(f"wrote {dump} in {time.perf_counter() - started:.0f} s")
    xml_bytes = 0
    with open_decompressed(dump) as f:
        while block := f.read(1 << 22):
            xml_bytes += len(block)
    print(f"dump: {args.pages} articles of {len(body.encode())} bytes of wikitext, {xml_bytes / 1e6:.0f} MB of XML, "
          f"{dump.stat().st_size / 1e6:.1f} MB bzip2")
    for converters in args.converters:
        measure(dump, args.pages, xml_bytes, converters)


def measure(dump: Path, articles: int, xml_bytes: int, converters: int) -> None:
    sink = Sink(converters)
    every = max(1, articles // 10)
    samples: list[tuple[int, float]] = [(0, rss_mb())]

    def cpu_seconds() -> float:  # this process and its waited-for children (the conversion children)
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    cpu0, start = cpu_seconds(), time.perf_counter()
    documents = 0
    with open_decompressed(dump) as f:
        for _ in mediawiki_documents(f, dump.name, sink):
            documents += 1
            if documents % every == 0:
                samples.append((documents, rss_mb()))
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    pages = sum(sink.counts.records.values())
    print(f"\n{converters} conversion child(ren), load average {os.getloadavg()[0]:.1f}: {pages} pages read, "
          f"{documents} articles kept, skipped {dict(sink.counts.skipped)}")
    print(f"{pages / wall:.0f} pages/s wall, {pages / cpu:.0f} pages per CPU-second, "
          f"{xml_bytes / 1e6 / cpu:.1f} MB of XML per CPU-second ({wall:.1f} s wall, {cpu:.1f} s CPU)")
    print("RSS (MB) after N articles: " + ", ".join(f"{n}: {mb:.0f}" for n, mb in samples))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, the conversion children's "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
