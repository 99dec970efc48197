"""Raw web text as people download it: WARC/WET, MediaWiki XML dumps, tar archives of xz files.

Readers on fixture files (:mod:`tests.data.web_fixtures`: real Debian HTML pages in Common
Crawl-style records, a dump in the MediaWiki export schema, OpenWebText's nesting), then each
raw form through the whole Dataset pipeline (tokenizer, shards, splits).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from llmfab.data.mediawiki import is_disambiguation, wikitext_to_text
from llmfab.data.shards import open_split
from llmfab.data.tokenizer import load_processor
from llmfab.errors import WorkloadError
from llmfab.store import read_manifest
from llmfab.workload import run_stage

from .corpus import document
from .test_readers import read
from .test_workload import write_spec
from .web_fixtures import (
    FOREIGN,
    WIKI_ARTICLES,
    WIKI_HEADER,
    WIKI_SPECIAL,
    http_response,
    tar_bytes,
    warc_record,
    wiki_page_xml,
    write_crawl,
    write_openwebtext,
    write_wet,
    write_wiki_dump,
)

ROOT = Path(__file__).resolve().parents[2]


def read_full(tmp_path: Path, *sources: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows with every column, and the read step's stats (its ``sources`` included)."""
    from llmfab.api.dataset import DatasetSpec
    from llmfab.data.readers import read_documents
    from llmfab.data.steps import StepCounter

    spec = DatasetSpec.model_validate({"sources": list(sources)})
    counter = StepCounter("read")
    rows = [row for batch in read_documents(spec, lambda p: (tmp_path / p).resolve(), counter)
            for row in batch.to_pylist()]
    return rows, counter.stats()


@pytest.fixture(scope="module")
def crawl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crawl")


def test_warc_pages_keep_url_date_and_charset_and_count_what_is_left_out(crawl_dir: Path) -> None:
    crawl = write_crawl(crawl_dir / "CC-NEWS-20160901120000-00000.warc.gz")
    rows, stats = read_full(crawl_dir, {"path": crawl.path.name, "onError": "skip"})
    assert [r["url"] for r in rows] == list(crawl.pages)  # every page, in record order, nothing else
    assert all(r["id"].startswith("<urn:uuid:") for r in rows) and len({r["id"] for r in rows}) == len(rows)
    assert json.loads(rows[0]["meta"]) == {"date": "2016-09-01T12:00:04Z"}
    by_url = {r["url"]: r["text"] for r in rows}
    for (_, _, sentence), (url, planted) in zip(FOREIGN, crawl.foreign.items(), strict=True):
        assert sentence == planted and sentence in by_url[url], url  # cp1252 and Shift_JIS by header, KOI8-R by <meta>
    assert all("<body" not in t and "<p>" not in t for t in by_url.values())
    [source] = stats["sources"]
    assert source["skipped"] == {"bad_charset": 1, "broken_record": 1, "http_status": 1, "non_html": 2}
    assert source["records"] == {"broken": 1, "metadata": 3, "request": 12, "response": 16, "warcinfo": 1}
    assert source["documents"] == 12 and source["formats"] == ["warc"]
    assert stats["removed"] == source["skipped"]  # the read step shows them too, with examples
    assert stats["examples"]["non_html"][0]["text"] == "application/pdf https://docs.example.org/manual.pdf"
    assert stats["examples"]["non_html"][1]["text"] == "unknown https://docs.example.org/logo.png"  # sniffed

    everything, _ = read_full(crawl_dir, {"path": crawl.path.name, "onError": "skip", "html": {"mainContent": False}})
    lengths = [(len(a["text"]), len(b["text"])) for a, b in zip(rows, everything, strict=True)]
    assert all(main <= full for main, full in lengths) and any(main < full for main, full in lengths)


def test_trafilatura_as_the_extractor(crawl_dir: Path) -> None:
    crawl = write_crawl(crawl_dir / "traf.warc.gz", count=4, broken=False)
    rows, stats = read_full(crawl_dir, {"path": "traf.warc.gz", "html": {"extractor": "trafilatura"}})
    texts = {r["url"]: r["text"] for r in rows}
    for url, sentence in crawl.foreign.items():
        assert sentence in texts[url], url
    assert set(texts) <= set(crawl.pages) and len(texts) >= 3
    assert stats["sources"][0]["skipped"]["bad_charset"] == 1


def test_a_broken_warc_record_fails_naming_file_and_offset_unless_skipped(crawl_dir: Path) -> None:
    crawl = write_crawl(crawl_dir / "broken.warc.gz", count=4)
    with pytest.raises(WorkloadError, match=r"spec.sources\[0\]: broken.warc.gz@\d+: a WARC record whose header "
                                            r"cannot be parsed; fix or drop the record, or set onError: skip"):
        read(crawl_dir, {"path": crawl.path.name})


def test_wet_text_and_warc_compressed_whole_with_xz_or_bz2(tmp_path: Path) -> None:
    texts = {"https://news.example/a": "Line one of a story.\nLine two.", "https://news.example/b": "Another."}
    write_wet(tmp_path / "CC-MAIN-00000.warc.wet.gz", texts)
    rows, stats = read_full(tmp_path, {"path": "CC-MAIN-00000.warc.wet.gz"})
    assert [(r["url"], r["text"]) for r in rows] == list(texts.items())
    assert stats["sources"][0]["records"] == {"conversion": 2, "warcinfo": 1}
    crawl = write_crawl(tmp_path / "c.warc.gz", count=3, broken=False)
    plain = gzip.decompress(crawl.path.read_bytes())  # every member
    (tmp_path / "c.warc.xz").write_bytes(lzma.compress(plain))
    (tmp_path / "c.warc.bz2").write_bytes(bz2.compress(plain))
    (tmp_path / "c.warc").write_bytes(plain)
    urls = [[r["url"] for r in read_full(tmp_path, {"path": name, "onError": "skip"})[0]]
            for name in ("c.warc.gz", "c.warc.xz", "c.warc.bz2", "c.warc")]
    assert urls[0] == list(crawl.pages) and all(u == urls[0] for u in urls)


def test_a_truncated_warc_keeps_the_pages_before_the_cut(tmp_path: Path) -> None:
    crawl = write_crawl(tmp_path / "c.warc.gz", count=8, broken=False)
    data = crawl.path.read_bytes()
    (tmp_path / "t.warc.gz").write_bytes(data[: len(data) * 3 // 4])
    rows, stats = read_full(tmp_path, {"path": "t.warc.gz", "onError": "skip"})
    assert rows and [r["url"] for r in rows] == list(crawl.pages)[: len(rows)]  # those sent ahead are not lost
    assert stats["removed"]["unreadable_file"] == 1
    with pytest.raises(WorkloadError, match=r"cannot read .*t.warc.gz .*Compressed file ended"):
        read(tmp_path, {"path": "t.warc.gz"})


def test_a_page_that_stalls_the_extractor_is_skipped_and_the_next_one_read(tmp_path: Path) -> None:
    """10^4+ nested <div>s make Resiliparse's main-content pass take seconds (it is quadratic in depth)."""
    stall = b"<html><body>" + b"<div>" * 30_000 + b"deep" + b"</div>" * 30_000 + b"</body></html>"
    fine = b"<html><body><article><p>A short page that is read after the stalled one.</p></article></body></html>"
    records = [warc_record("response", f"https://x.example/{i}", http_response(body, "text/html"), i)
               for i, body in enumerate([fine, stall, fine, fine])]
    (tmp_path / "s.warc").write_bytes(b"".join(records))
    rows, stats = read_full(tmp_path, {"path": "s.warc", "html": {"timeoutSeconds": 0.5}})
    assert [r["url"] for r in rows] == ["https://x.example/0", "https://x.example/2", "https://x.example/3"]
    assert rows[1]["text"] == "A short page that is read after the stalled one."
    [source] = stats["sources"]
    assert source["skipped"] == {"extraction_timeout": 1} and source["extractionRestarts"] == 1


def test_warc_payload_over_the_cap_is_too_long_without_being_read(tmp_path: Path) -> None:
    body = b"<html><body><p>" + b"word " * 4000 + b"</p></body></html>"
    small = b"<html><body><p>small page</p></body></html>"
    (tmp_path / "t.warc").write_bytes(b"".join(warc_record("response", f"https://x.example/{i}",
                                                           http_response(b, "text/html"), i)
                                               for i, b in enumerate([body, small])))
    rows, stats = read_full(tmp_path, {"path": "t.warc", "maxDocumentBytes": 10_000, "onError": "skip"})
    assert [r["text"] for r in rows] == ["small page"]
    assert stats["removed"] == {"too_long": 1}
    with pytest.raises(WorkloadError, match=r"t.warc@0 https://x.example/0: the record's payload is longer than "
                                            r"maxDocumentBytes \(20\d\d\d bytes or more, cap 10000\)"):
        read(tmp_path, {"path": "t.warc", "maxDocumentBytes": 10_000})


def test_mediawiki_articles_become_plain_text_with_title_and_page_id(tmp_path: Path) -> None:
    write_wiki_dump(tmp_path / "enwiki-20240301-pages-articles1.xml-p1p41242.bz2")
    rows, stats = read_full(tmp_path, {"path": "enwiki-20240301-pages-articles1.xml-p1p41242.bz2"})
    assert [json.loads(r["meta"])["title"] for r in rows] == list(WIKI_ARTICLES)
    assert [r["id"] for r in rows] == ["10", "11", "12"]
    assert rows[0]["url"] == "https://en.wikipedia.org/wiki/Ada_Lovelace"
    assert json.loads(rows[0]["meta"]) == {"title": "Ada Lovelace", "pageId": "10", "revisionId": "10007",
                                           "timestamp": "2024-03-02T12:00:00Z"}
    ada = rows[0]["text"]
    assert ada.startswith("Augusta Ada King, Countess of Lovelace (née Byron) was an English mathematician and "
                          "writer, chiefly known for her work on Charles Babbage's proposed")  # links: shown text
    lines = ada.split("\n")
    assert {"Early life", "Education", "Work on the Analytical Engine"} <= set(lines)  # section titles as lines
    assert "References" not in lines and "Notes by length" not in ada  # empty sections and tables dropped
    for gone in ("{{", "}}", "[[", "]]", "<ref", "cite", "Toole", "Infobox", "wikitable", "thumb", "Chalon",
                 "Category", "de:Ada", "'''", "sfn", "&amp;"):
        assert gone not in ada, gone
    assert "Lord Byron" in ada and "Bernoulli numbers" in ada  # piped link text; link + suffix
    punched = rows[2]["text"]
    assert "Cards were read by electrical contacts passing through the holes." in punched.split("\n")
    assert "census of 1890" not in punched and "Also called" not in punched  # <references> and group refs
    assert stats["removed"] == {"disambiguation": 2, "other_namespace": 4, "redirect": 2}
    assert stats["sources"][0]["records"] == {"page": 3 + len(WIKI_SPECIAL) + 1}


def test_disambiguation_and_wikitext_details() -> None:
    assert is_disambiguation("Mercury", "'''Mercury''' may refer to:\n* [[Mercury (planet)]]\n{{Dab}}")
    assert is_disambiguation("Mercury", "x\n{{ disambiguation | geo }}") and is_disambiguation("A", "__DISAMBIG__")
    assert is_disambiguation("Mercury (disambiguation)", "anything")
    assert not is_disambiguation("Mercury (planet)", "{{Infobox planet}} {{About|the planet|the element}}")
    assert wikitext_to_text("a {{x|{{y|z}}|w}} b<ref>{{c}}</ref> [[:Category:Foo|cats]] [[Image:I.png|left|"
                            "[[nested]] caption]] c&nbsp;d") == "a b cats c\xa0d"
    assert wikitext_to_text("== Only ==\n{{Reflist}}\n") == ""


def test_mediawiki_page_over_the_cap_and_xml_that_is_not_a_dump(tmp_path: Path) -> None:
    write_wiki_dump(tmp_path / "w-pages-articles.xml")
    rows, stats = read_full(tmp_path, {"path": "w-pages-articles.xml", "maxDocumentBytes": 1000,
                                       "onError": "skip"})
    assert [json.loads(r["meta"])["title"] for r in rows] == ["Punched card"]  # 969 bytes of wikitext
    assert stats["removed"]["too_long"] == 2  # <text bytes=...> over 1000: not read
    (tmp_path / "feed.xml").write_text("<rss><channel><title>x</title></channel></rss>")
    with pytest.raises(WorkloadError, match=r"spec.sources\[0\].format: feed.xml: its root element is <rss>, not "
                                            r"<mediawiki>: not a MediaWiki XML dump; set format"):
        read(tmp_path, {"path": "feed.xml"})


def test_openwebtext_tar_of_xz_tars_is_read_member_by_member(tmp_path: Path) -> None:
    subsets = [{"0001-a.txt": "First story.", "0002-b.txt": "Second story."}, {"0003-c.txt": "Third story."}]
    write_openwebtext(tmp_path / "openwebtext.tar.xz", subsets)
    rows, stats = read_full(tmp_path, {"path": "openwebtext.tar.xz"})
    assert [(r["text"], r["id"]) for r in rows] == [
        ("First story.", "openwebtext.tar.xz!openwebtext/urlsf_subset00-1_data.xz!0001-a.txt"),
        ("Second story.", "openwebtext.tar.xz!openwebtext/urlsf_subset00-1_data.xz!0002-b.txt"),
        ("Third story.", "openwebtext.tar.xz!openwebtext/urlsf_subset01-1_data.xz!0003-c.txt")]
    assert stats["sources"][0]["records"] == {"member": 3} and stats["sources"][0]["formats"] == ["archive", "text"]


def test_archive_members_by_their_own_format_compression_and_cap(tmp_path: Path) -> None:
    jsonl = b"".join(json.dumps({"text": f"json doc {i}"}).encode() + b"\n" for i in range(2))
    crawl = write_crawl(tmp_path / "c.warc.gz", count=2, broken=False)
    members = {"docs/a.txt": b"plain text member", "docs/b.jsonl.gz": gzip.compress(jsonl, mtime=0),
               "docs/c.warc.gz": crawl.path.read_bytes(), "docs/big.txt": b"x" * 200_000, "README": b"not a document",
               "docs/inner.tar.bz2": bz2.compress(tar_bytes({"d.md": b"# markdown member"}))}
    for name, compress in (("m.tar", bytes), ("m.tar.gz", gzip.compress), ("m.tgz", gzip.compress),
                           ("m.tar.bz2", bz2.compress), ("m.tar.xz", lzma.compress)):
        (tmp_path / name).write_bytes(compress(tar_bytes(members)))
        rows, stats = read_full(tmp_path, {"path": name, "maxDocumentBytes": 160_000, "onError": "skip"})
        assert [r["text"] for r in rows][:3] == ["plain text member", "json doc 0", "json doc 1"], name
        assert [r["url"] for r in rows][3:5] == list(crawl.pages), name
        assert [r["text"] for r in rows][5:] == ["# markdown member"], name
        assert stats["removed"] == {"non_html": 2, "http_status": 1, "bad_charset": 1, "too_long": 1,
                                    "unknown_member_format": 1}, name
        assert stats["sources"][0]["formats"] == ["archive", "jsonl", "text", "warc"], name
    with pytest.raises(WorkloadError, match=r"m.tar!docs/big.txt.*longer than maxDocumentBytes"):
        read(tmp_path, {"path": "m.tar", "maxDocumentBytes": 160_000})
    (tmp_path / "t.tar.gz").write_bytes(gzip.compress(tar_bytes(members))[:300])  # truncated
    with pytest.raises(WorkloadError, match=r"cannot read .*t.tar.gz"):
        read(tmp_path, {"path": "t.tar.gz"})


def test_a_tar_nested_too_deep_is_refused(tmp_path: Path) -> None:
    data = b"deep"
    name = "x.txt"
    for depth in range(5):
        data, name = tar_bytes({name: data}), f"level{depth}.tar"
    (tmp_path / "deep.tar").write_bytes(data)
    with pytest.raises(WorkloadError, match="archives nested more than 4 deep"):
        read(tmp_path, {"path": "deep.tar"})


# --- each raw form through the whole pipeline ------------------------------------------------------

PIPELINE = {"tokenizer": {"type": "bpe", "vocabSize": 400}, "output": {"shardTokens": 4000},
            "filters": {name: {"enabled": False} for name in ("language", "gopherRepetition", "gopherQuality",
                                                               "c4", "fineweb")},
            "dedup": {"near": {"enabled": False}}, "split": {"train": 0.6, "val": 0.2, "test": 0.2, "seed": 0}}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMFAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("form", ["cc-news", "wikipedia", "openwebtext"])
def test_each_raw_form_builds_a_dataset(form: str, home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if form == "cc-news":
        write_crawl(src / "CC-NEWS-20160901120000-00000.warc.gz", count=16)
        source, expect = {"path": "src/*.warc.gz", "onError": "skip"}, 16
    elif form == "wikipedia":
        articles = {f"{title} {i}": f"{text}\nThis is copy {i} of the page about {title}."
                    for i in range(4) for title, text in WIKI_ARTICLES.items()}
        write_wiki_dump(src / "enwiki-20240301-pages-articles.xml.bz2", articles)
        source, expect = {"path": "src/enwiki-20240301-pages-articles.xml.bz2"}, 12
    else:
        stories = [{f"{i:04d}-{j}.txt": f"Story {i}-{j}.\n\n" + document(random.Random(i * 10 + j))
                    for j in range(4)} for i in range(4)]
        write_openwebtext(src / "openwebtext.tar.xz", stories)
        source, expect = {"path": "src/openwebtext.tar.xz"}, 16
    spec = write_spec(tmp_path, name=form, sources=[source], **PIPELINE)
    assert run_stage("data", spec) == 0
    out = home / "datasets" / form
    manifest = read_manifest(out)
    assert manifest is not None
    assert sum(s["documents"] for s in manifest["splits"].values()) == expect
    assert all(manifest["splits"][s]["tokens"] > 0 for s in ("train", "val", "test"))
    stats = json.loads((out / "stats.json").read_text())
    read_step = stats["steps"][0]
    assert read_step["name"] == "read" and read_step["documentsOut"] == expect
    assert read_step["sources"][0]["documents"] == expect
    sp = load_processor(out / "tokenizer.model")
    train = open_split(out, "train")
    text = sp.decode(train.read(0, train.num_tokens).tolist())
    assert {"cc-news": "XSLT", "wikipedia": "Babbage", "openwebtext": "Story"}[form] in text


BOMB_CHILD = """
import json, resource, sys
from pathlib import Path
from llmfab.api.dataset import DatasetSpec
from llmfab.data.readers import read_documents
from llmfab.data.steps import StepCounter
limit = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize() + (512 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # MemoryError, not a full machine, if unbounded
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
spec = DatasetSpec.model_validate({"sources": [{"path": sys.argv[1], "onError": "skip", "maxDocumentBytes": 1 << 20}]})
counter = StepCounter("read")
texts = [t for b in read_documents(spec, Path, counter) for t in b.column("text").to_pylist()]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"texts": texts, "removed": counter.removed, "grew": peak - before}))
"""


def _bomb(path: Path, head: bytes, tail: bytes, mib: int = 256) -> Path:
    """``head`` + ``mib`` MiB of "a" + ``tail``, gzip'd a MiB per member (~1 KiB each)."""
    member = gzip.compress(b"a" * (1 << 20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(mib):
            f.write(member)
        f.write(gzip.compress(tail))
    return path


@pytest.mark.parametrize("form", ["warc", "mediawiki", "tar"])
def test_a_record_of_256_mib_is_skipped_in_bounded_memory(form: str, tmp_path: Path) -> None:
    """One WARC payload, wiki page or archive member of 256 MiB (a ~300 KB gzip bomb) between two
    small ones: counted as too_long, and the reader's peak RSS grows by far less than the record."""
    size = 256 << 20
    small = b"<html><body><p>small page after the big one</p></body></html>"
    if form == "warc":
        http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
        big = warc_record("response", "https://x.example/big", b"", 1).replace(b"Content-Length: 0",
                                                                               f"Content-Length: {len(http) + size}".encode())
        path = _bomb(tmp_path / "bomb.warc.gz", big.removesuffix(b"\r\n\r\n") + http,
                     b"\r\n\r\n" + warc_record("response", "https://x.example/ok", http_response(small, "text/html"), 2))
        expected = ["small page after the big one"]
    elif form == "mediawiki":
        page = wiki_page_xml("Big", "0", 1, "").split("</text>")
        path = _bomb(tmp_path / "bomb-pages-articles.xml.gz", (WIKI_HEADER + page[0].replace('bytes="0" ', "")).encode(),
                     ("</text>" + page[1] + wiki_page_xml("Small", "0", 2, "A small article.") + "</mediawiki>").encode())
        expected = ["A small article."]
    else:
        header = tarfile.TarInfo("big.txt")
        header.size = size
        tail = b"\0" * (-size % 512) + tar_bytes({"small.txt": b"small member"})
        path = _bomb(tmp_path / "bomb.tar.gz", header.tobuf(format=tarfile.GNU_FORMAT), tail)
        expected = ["small member"]
    assert path.stat().st_size < 1 << 20
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", BOMB_CHILD, str(path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["texts"] == expected and result["removed"] == {"too_long": 1}, result
    assert result["grew"] < 64 << 20, result


def test_an_archive_of_many_members_is_read_in_flat_memory() -> None:
    """A stream-mode TarFile keeps every member's header unless told not to: 20,000 would be ~8 MB.
    Counted: the memory tarfile and the archive reader hold (allocations traced to their files)."""
    import io
    import tracemalloc

    from llmfab.data import archives

    def held() -> int:
        files = [tracemalloc.Filter(True, tarfile.__file__), tracemalloc.Filter(True, archives.__file__)]
        return sum(s.size for s in tracemalloc.take_snapshot().filter_traces(files).statistics("filename"))

    data = tar_bytes({f"d/{i}.txt": b"x" for i in range(20_000)})
    tracemalloc.start()
    try:
        for n, (_, member) in enumerate(archives.tar_members(io.BytesIO(data), "many.tar"), 1):
            member.read()
            if n == 1_000:
                early = held()
            if n == 20_000:  # still inside the archive (once it is closed, everything is freed)
                late = held()
    finally:
        tracemalloc.stop()
    assert n == 20_000 and late - early < 1 << 20, (early, late)


def test_isolated_converter_keeps_order_across_children_timeouts_crashes_and_errors() -> None:
    from llmfab.data.isolated import IsolatedConverter

    records = [(i, None if p is None else p.encode(), "as is" if p is None else None)
               for i, p in enumerate(["a", "crash", "b", "raise", None, "hang", "c", "d"])]
    with IsolatedConverter("tests.data.isolated_tasks:make", ["!"], timeout=1.0, reason="x", workers=2) as pool:
        out = list(pool.convert(records))
    assert out == [(0, "A!", None), (1, "", "x_crashed"), (2, "B!", None), (3, "", "x_error"), (4, "as is", None),
                   (5, "", "x_timeout"), (6, "C!", None), (7, "D!", None)]
    assert pool.restarts == 2
