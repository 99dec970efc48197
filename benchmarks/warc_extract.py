"""WARC → text: llmfab's reader (FastWARC + Resiliparse in a killable child) against datatrove's
``WarcReader`` + ``Trafilatura`` (warcio + trafilatura), same input, one run.

Two inputs, both written here from the HTML pages Debian packages ship under /usr/share/doc:

- **debian**: every page up to 2 MB as a Common Crawl-style response record (``.warc.gz``, one gzip
  member per record), ``--repeat`` times under other URLs. Throughput: documents/s (wall) and CPU-seconds per GB of WARC, each side in
  its own process, CPU counted with its children (llmfab's extraction children, datatrove's
  extraction sandbox); llmfab with one extraction child (``engine.workers: 1``) and with one per core. Agreement of the texts, per document kept by both: token-set Jaccard of
  lowercased ``\\w+`` tokens, mean and median.
- **news**: the ``<p>`` paragraphs of ~120 of those pages set as the article of a news-site template
  (cookie banner, navigation, "most read" sidebar, comments, footer). The article's text is known,
  so each extractor's output is scored against it: token precision and recall (multisets of
  lowercased ``\\w+`` tokens), mean over pages. This decides whether trafilatura (datatrove's
  choice) should be an llmfab option: it would be if it kept the article clearly better.

datatrove runs from its own virtual environment (``--datatrove-python``, default
/tmp/dt-venv/bin/python; create it with ``python -m venv /tmp/dt-venv && /tmp/dt-venv/bin/pip install
datatrove warcio trafilatura lxml_html_clean faust-cchardet python-magic``), so its dependencies never touch .venv.

    .venv/bin/python benchmarks/warc_extract.py [--work /tmp/warc-bench]
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.data.web_fixtures import DOC, http_response, warc_record  # noqa: E402

MAX_PAGE_BYTES = 2_000_000
TOKEN = re.compile(r"\w+")

LLMFAB = """
import json, sys
from pathlib import Path
from llmfab.api.dataset import DatasetSpec
from llmfab.data.readers import read_documents
from llmfab.data.steps import StepCounter
warc, out = Path(sys.argv[1]), Path(sys.argv[2])
spec = DatasetSpec.model_validate({"sources": [{"path": str(warc), "onError": "skip",
                                                "html": {"extractor": "EXTRACTOR"}}],
                                   "engine": {"workers": WORKERS}})
counter = StepCounter("read")
with open(out, "w") as f:
    for batch in read_documents(spec, lambda p: Path(p), counter):
        for row in batch.to_pylist():
            f.write(json.dumps({"url": row["url"], "text": row["text"]}) + "\\n")
print(json.dumps(counter.stats()["sources"][0]), file=sys.stderr)
"""

INPROCESS = """
import json, sys
from fastwarc.warc import ArchiveIterator, WarcRecordType
from llmfab.data.html_text import page_text
warc, out = sys.argv[1], sys.argv[2]
with open(out, "w") as f:
    for r in ArchiveIterator(open(warc, "rb"), record_types=WarcRecordType.response, parse_http=True):
        text, reason = page_text(r.reader.read(), r.http_charset)
        if reason is None:
            f.write(json.dumps({"url": r.headers.get("WARC-Target-URI"), "text": text}) + "\\n")
"""

PARSE_FASTWARC = """
import json, sys
from fastwarc.warc import ArchiveIterator, WarcRecordType
n = size = 0
for r in ArchiveIterator(open(sys.argv[1], "rb"), record_types=WarcRecordType.response, parse_http=True):
    n, size = n + 1, size + len(r.reader.read())
open(sys.argv[2], "w").write(json.dumps({"url": "records", "text": str(n)}) + "\\n")
"""

PARSE_WARCIO = """
import json, sys
from warcio.archiveiterator import ArchiveIterator
n = size = 0
for r in ArchiveIterator(open(sys.argv[1], "rb")):
    if r.rec_type == "response":
        n, size = n + 1, size + len(r.content_stream().read())
open(sys.argv[2], "w").write(json.dumps({"url": "records", "text": str(n)}) + "\\n")
"""

DATATROVE = """
import json, sys
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.extractors import Trafilatura
warc, out = sys.argv[1], sys.argv[2]
reader = WarcReader(data_folder=str(__import__("pathlib").Path(warc).parent),
                    glob_pattern=__import__("pathlib").Path(warc).name)
extractor = Trafilatura(favour_precision=True, timeout=5.0)
with open(out, "w") as f:
    for doc in extractor.run(reader.run()):
        f.write(json.dumps({"url": doc.metadata.get("url"), "text": doc.text}) + "\\n")
from importlib.metadata import version
print("datatrove", version("datatrove"), "trafilatura", version("trafilatura"), "warcio", version("warcio"),
      file=sys.stderr)
"""


def pages() -> list[Path]:
    return sorted(p for p in DOC.rglob("*.html") if p.is_file() and 0 < p.stat().st_size <= MAX_PAGE_BYTES)


def write_warc(path: Path, bodies: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as f:
        for i, (uri, body) in enumerate(bodies):
            f.write(gzip.compress(warc_record("response", uri, http_response(body, "text/html"), i + 2,
                                              extra={"WARC-Identified-Payload-Type": "text/html"}), mtime=0))


def article(page: bytes) -> tuple[str, list[str]]:
    """(title, paragraphs) of a Debian page: its <title> and the plain text of its <p> elements."""
    text = page.decode("utf-8", "replace")
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
    paras = [html.unescape(re.sub(r"<[^>]+>", "", m)).split() for m in
             re.findall(r"<p\b[^>]*>(.*?)</p>", text, re.S | re.I)]
    return (html.unescape(title[1]).strip() if title else "Untitled"), [" ".join(p) for p in paras if len(p) >= 8]


NAV = ["World", "Politics", "Business", "Technology", "Science", "Health", "Sport", "Culture", "Opinion"]


def news_page(title: str, paragraphs: list[str], others: list[str], rng: random.Random) -> str:
    esc = html.escape
    nav = "".join(f'<li><a href="/{n.lower()}">{n}</a></li>' for n in NAV)
    most_read = "".join(f'<li><a href="/story/{i}">{esc(t)}</a></li>' for i, t in enumerate(rng.sample(others, 6)))
    body = "".join(f"<p>{esc(p)}</p>\n" for p in paragraphs)
    comments = "".join(f'<div class="comment"><span class="author">reader{i}</span><p>{c}</p></div>' for i, c in
                       enumerate(rng.sample(["Great article, thanks for sharing this.", "I disagree with the "
                                             "second point, but well written.", "Where can I read more about "
                                             "this topic?", "First!", "This was very helpful for my work."], 3)))
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)} | Example News</title>
<script>window.dataLayer = [];</script><style>.ad {{ display: block; }}</style></head><body>
<div class="cookie-banner" id="cookie-consent">We use cookies to improve your experience on our site. By continuing
to browse you agree to our <a href="/cookies">cookie policy</a>. <button>Accept</button></div>
<header class="site-header"><a class="logo" href="/">Example News</a><nav class="main-nav"><ul>{nav}</ul></nav>
<form class="search"><input type="text" placeholder="Search"></form></header>
<div class="container"><main id="main"><article class="story">
<h1 class="headline">{esc(title)}</h1><div class="byline">By Staff Reporter · 1 September 2016</div>
<div class="story-body">{body}</div>
<div class="share">Share this article: <a href="#">Facebook</a> <a href="#">Twitter</a> <a href="#">Email</a></div>
</article>
<section class="comments"><h3>Comments</h3>{comments}</section></main>
<aside class="sidebar"><h3>Most read</h3><ol>{most_read}</ol><div class="ad">Advertisement</div>
<div class="newsletter">Sign up for our newsletter and get the day's top stories in your inbox.</div></aside></div>
<footer class="site-footer"><p>© 2016 Example News Ltd. All rights reserved.</p><ul><li><a href="/privacy">
Privacy policy</a></li><li><a href="/terms">Terms of use</a></li><li><a href="/contact">Contact us</a></li></ul>
</footer></body></html>"""


def run(python: str, script: str, warc: Path, out: Path) -> dict[str, float | str]:
    """Run ``script`` in its own process; wall seconds and CPU seconds with all its children."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as stderr:  # a file, not a pipe: datatrove logs a lot, and a full pipe would block it
        proc = subprocess.Popen([python, "-c", script, str(warc), str(out)], env=env, stderr=stderr)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = log.read_text()
    if status != 0:
        raise SystemExit(f"{python} failed ({status}):\n{err[-3000:]}")
    lines = [line for line in err.splitlines() if "datatrove" in line.lower() or line.startswith("{")]
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "log": "\n".join(lines[-2:])}


def load(path: Path) -> dict[str, str]:
    return {d["url"]: d["text"] for d in map(json.loads, path.read_text().splitlines())}


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def jaccard(a: str, b: str) -> float:
    sa, sb = set(tokens(a)), set(tokens(b))
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def precision_recall(out: str, truth: str) -> tuple[float, float]:
    o, t = Counter(tokens(out)), Counter(tokens(truth))
    common = sum((o & t).values())
    return (common / sum(o.values()) if o else 0.0), (common / sum(t.values()) if t else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/warc-bench"))
    parser.add_argument("--datatrove-python", default="/tmp/dt-venv/bin/python")
    parser.add_argument("--news-pages", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3, help="each Debian page this many times (new URLs), "
                        "so start-up costs are small beside the work")
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    files = pages()
    debian = work / "debian.warc.gz"
    write_warc(debian, [(f"https://docs{k}.example.org/{p.relative_to(DOC)}", p.read_bytes())
                        for k in range(args.repeat) for p in files])
    rng = random.Random(0)
    articles = [a for a in (article(p.read_bytes()) for p in files) if sum(len(x) for x in a[1]) >= 500]
    rng.shuffle(articles)
    articles = articles[: args.news_pages]
    titles = [t for t, _ in articles]
    truth = {f"https://news.example.org/{i}": t + "\n" + "\n".join(ps) for i, (t, ps) in enumerate(articles)}
    news = work / "news.warc.gz"
    write_warc(news, [(url, news_page(t, ps, [x for x in titles if x != t], rng).encode())
                      for url, (t, ps) in zip(truth, articles, strict=True)])
    gb = debian.stat().st_size / 1e9
    gb_html = args.repeat * sum(p.stat().st_size for p in files) / 1e9
    print(f"input debian: {len(files)} pages x {args.repeat}, {debian.stat().st_size / 1e6:.1f} MB gzip'd WARC "
          f"({args.repeat * sum(p.stat().st_size for p in files) / 1e6:.1f} MB of HTML); news: {len(articles)} pages")

    cores = len(os.sched_getaffinity(0))

    def llmfab(extractor: str, workers: int) -> str:
        return LLMFAB.replace("EXTRACTOR", extractor).replace("WORKERS", str(workers))

    sides = {"llmfab (FastWARC + Resiliparse, 1 child process)": (sys.executable, llmfab("resiliparse", 1)),
             "llmfab extraction in-process (no time bound)": (sys.executable, INPROCESS),
             "datatrove (warcio + Trafilatura)": (args.datatrove_python, DATATROVE),
             "llmfab, html.extractor: trafilatura (1 child)": (sys.executable, llmfab("trafilatura", 1)),
             f"llmfab, Resiliparse, {cores} children (engine.workers: {cores})": (sys.executable,
                                                                                  llmfab("resiliparse", cores))}
    results: dict[str, dict[str, float | str]] = {}
    texts: dict[str, dict[str, dict[str, str]]] = {}
    for name, (python, script) in sides.items():
        for corpus, warc in (("debian", debian), ("news", news)):
            slug = re.sub(r"\W+", "_", name)
            out = work / f"{slug}-{corpus}.jsonl"
            if corpus == "news" and "children" in name:
                continue  # the same text as with one child
            r = run(python, script, warc, out)
            texts.setdefault(name, {})[corpus] = load(out)
            if not texts[name][corpus]:
                raise SystemExit(f"{name} extracted no text from {warc}; its log ({out.with_suffix('.log')}) ends:\n"
                                 f"{out.with_suffix('.log').read_text()[-2000:]}")
            if corpus == "debian":
                results[name] = r
    llm, _, dt, llm_traf, llm_pool = sides
    print("\n| reader + extractor | documents | documents/s | CPU-s per GB of WARC (gzip'd) | CPU-s per GB of HTML "
          "| wall s | CPU s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        n, cpu_s = len(texts[name]["debian"]), float(r["cpu"])
        print(f"| {name} | {n} | {n / float(r['wall']):.1f} | {cpu_s / gb:.0f} | {cpu_s / gb_html:.0f} | "
              f"{float(r['wall']):.1f} | {cpu_s:.1f} |")
    speed = (len(texts[llm]["debian"]) / float(results[llm]["wall"])) / (
        len(texts[dt]["debian"]) / float(results[dt]["wall"]))
    cpu = (float(results[dt]["cpu"]) / len(texts[dt]["debian"])) / (float(results[llm]["cpu"]) / len(texts[llm]["debian"]))
    print(f"\nllmfab (1 child) / datatrove: {speed:.1f}x documents/s, {cpu:.1f}x less CPU per document")
    pool = (len(texts[llm_pool]["debian"]) / float(results[llm_pool]["wall"])) / (
        len(texts[dt]["debian"]) / float(results[dt]["wall"]))
    print(f"llmfab ({cores} children) / datatrove: {pool:.1f}x documents/s")
    for name in (llm, llm_traf):
        mine, theirs = texts[name]["debian"], texts[dt]["debian"]
        both = sorted(set(mine) & set(theirs))
        sims = [jaccard(mine[u], theirs[u]) for u in both]
        print(f"{name}: agreement with datatrove's text (token-set Jaccard, {len(both)} documents kept by both; "
              f"only llmfab {len(set(mine) - set(both))}, only datatrove {len(set(theirs) - set(both))}): "
              f"mean {statistics.mean(sims):.3f}, median {statistics.median(sims):.3f}")
    print("\n| extractor on the news template | pages with text | token precision | token recall |")
    print("| --- | --- | --- | --- |")
    for name in (llm, dt, llm_traf):
        got = texts[name]["news"]
        pr = [precision_recall(got.get(u, ""), t) for u, t in truth.items()]
        print(f"| {name} | {len(got)} | {statistics.mean(p for p, _ in pr):.3f} | "
              f"{statistics.mean(r for _, r in pr):.3f} |")
    print("\n| WARC parsing only (response records, payload read) | documents/s | CPU-s per GB of WARC |")
    print("| --- | --- | --- |")
    for name, python, script in (("FastWARC", sys.executable, PARSE_FASTWARC),
                                 ("warcio", args.datatrove_python, PARSE_WARCIO)):
        out = work / f"parse-{name}.jsonl"
        r = run(python, script, debian, out)
        n = int(load(out)["records"])
        print(f"| {name} | {n / float(r['wall']):.0f} | {float(r['cpu']) / gb:.0f} |")
    print(f"\nlogs: {results[llm]['log']}\n{results[dt]['log']}")
    print(f"this process's peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
