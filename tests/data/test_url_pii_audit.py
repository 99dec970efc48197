"""The URL filter, PII replacement and the audit trail's sample, on small hand-made inputs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from llmfab.api.dataset import DatasetSpec, PiiFilter
from llmfab.api.dataset import UrlFilter as UrlFilterSpec
from llmfab.data.audit import RemovedDocument, RemovedSample, rank, write_removed
from llmfab.data.cleaning import CleanBatch
from llmfab.data.pii import PiiFormatter
from llmfab.data.steps import StepStatsBook, removals_from_arrow, tallies_from_arrow
from llmfab.data.url_filter import UrlFilter

from .corpus import document


@pytest.fixture
def ut1(tmp_path: Path) -> Path:
    """A UT1-layout directory: categories with ``domains`` and ``urls`` files."""
    root = tmp_path / "blacklists"
    (root / "adult").mkdir(parents=True)
    (root / "adult" / "domains").write_text("# comment\nbad.example\nwww.naughty.co.uk\nco.uk\n")
    (root / "adult" / "urls").write_text("fine.example/private/area\n")
    (root / "gambling").mkdir()
    (root / "gambling" / "domains").write_text("casino.example\nblogspot.com\n")
    (root / "gambling" / "usage").write_text("black\n")
    return root


def url_filter(**spec: object) -> UrlFilter:
    return UrlFilter(UrlFilterSpec.model_validate(spec))


def test_url_filter_matches_registered_domains_with_subdomains_only(ut1: Path) -> None:
    f = url_filter(blocklists=[str(ut1)])
    assert f.judge_url("https://bad.example/page") == ("adult_domain", None)
    assert f.judge_url("http://www.sub.bad.example:8080/x?y=1") == ("adult_domain", None)
    assert f.judge_url("https://naughty.co.uk/") == ("adult_domain", None)  # the list's www. is stripped
    assert f.judge_url("https://notbad.example/") == (None, None)  # a suffix of the name is not a subdomain
    assert f.judge_url("https://bad.example.org/") == (None, None)  # datatrove's label-only match would drop it
    # "co.uk" is a public suffix: listing it blocks no site registered under it
    assert f.judge_url("https://someone.co.uk/") == (None, None)
    # private suffixes count as suffixes: one blogspot site is not every blogspot site
    assert f.judge_url("https://x.blogspot.com/") == (None, None)
    assert f.judge_url("https://casino.example/") == ("gambling_domain", None)
    assert f.judge_url("https://fine.example/private/area/page.html") == ("adult_url", None)
    assert f.judge_url("https://www.fine.example/private/area") == ("adult_url", None)
    assert f.judge_url("https://fine.example/private/areas") == (None, None)  # a path prefix, not a string prefix
    assert f.judge_url("https://fine.example/") == (None, None)
    assert f.judge_url(None) == (None, "no_url") and f.judge_url("") == (None, "no_url")
    only = url_filter(blocklists=[str(ut1)], categories=["gambling"])
    assert only.judge_url("https://bad.example/") == (None, None)
    assert only.judge_url("https://casino.example/") == ("gambling_domain", None)


def test_url_filter_plain_lists_patterns_substrings_and_allow_list(tmp_path: Path) -> None:
    plain = tmp_path / "Spam-List.txt.gz"
    plain.write_bytes(gzip.compress(b"spam.example\nham.example/only/this\n"))
    f = url_filter(blocklists=[str(plain)], blockedDomains=["Evil.Example."], patterns=[r"/wp-admin/"],
                   substrings=["CASINO"], allowDomains=["good.spam.example"])
    assert f.judge_url("http://a.spam.example/") == ("spam_list_domain", None)
    assert f.judge_url("http://ham.example/only/this/x") == ("spam_list_url", None)
    assert f.judge_url("http://ham.example/other") == (None, None)
    assert f.judge_url("http://www.evil.example/") == ("blocked_domain", None)
    assert f.judge_url("http://site.example/wp-admin/login") == ("url_pattern", None)
    assert f.judge_url("http://site.example/best-Casino-2024") == ("url_substring", None)
    assert f.judge_url("http://deep.good.spam.example/") == (None, "allow_listed")  # the allow-list wins
    assert f.judge_url("http://192.0.2.1/x") == (None, None)


def test_url_filter_refuses_a_missing_list_naming_the_field(tmp_path: Path) -> None:
    from llmfab.errors import WorkloadError

    with pytest.raises(WorkloadError, match=r"spec.filters.url.blocklists\[0\]: .*nope does not exist"):
        url_filter(blocklists=[str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkloadError, match=r"blocklists\[0\]: .* has no UT1 lists"):
        url_filter(blocklists=[str(tmp_path / "empty")])
    with pytest.raises(ValueError, match=r"patterns\[0\]: 'a\(b' is not a Python regular expression"):
        UrlFilterSpec.model_validate({"patterns": ["a(b"]})


def test_public_suffix_list_is_read_without_network(ut1: Path) -> None:
    """The snapshot inside tldextract, in a fresh process whose sockets all fail loudly."""
    code = f"""
import socket
def refuse(*a, **k):
    raise SystemExit("network attempted: " + repr(a)[:80])
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from llmfab.api.dataset import UrlFilter as S
from llmfab.data.url_filter import UrlFilter
f = UrlFilter(S(blocklists=[{str(ut1)!r}]))
assert f.judge_url("https://a.b.naughty.co.uk/") == ("adult_domain", None)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "HOME": str(ut1)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert not any(ut1.rglob("*.tldextract.json")), "a suffix-list cache was written"


def test_pii_replaces_emails_and_public_addresses_with_fineweb_placeholders() -> None:
    pii = PiiFormatter(PiiFilter())
    text = ("Mail John.Smith@Example.com or a@b.org; servers 8.8.8.8, 1.1.1.1 and 9.9.9.9 answer, "
            "but 192.168.1.10, 10.0.0.1, 127.0.0.1 and 203.0.113.5 are not public; version 1.2.3.4.5 "
            "and 1234.5.6.78 are no addresses. IPv6 2606:4700:4700::1111 is public, fe80::1 and ::1 are not; "
            "at 12:30:45 std::vector.")
    out, counts = pii.format(text)
    assert counts == {"email": 2, "ip": 4, "documents": 1}
    assert "email@example.com" in out and "firstname.lastname@example.org" in out  # taken in turn
    assert "John.Smith" not in out and "a@b.org" not in out
    assert "22.214.171.124" in out and "126.96.36.199" in out and "188.8.131.52" in out
    for kept in ("192.168.1.10", "10.0.0.1", "127.0.0.1", "203.0.113.5", "1.2.3.4.5", "1234.5.6.78", "fe80::1",
                 "::1", "12:30:45", "std::vector"):
        assert kept in out, kept
    assert "2606:4700" not in out and "2001:db8::1" in out
    # the turn restarts per document: the same text gives the same output whatever came before
    assert pii.format(text) == (out, counts)
    assert pii.format("nothing here") == ("nothing here", {})
    assert PiiFormatter(PiiFilter(emails=False)).format("x@y.com 8.8.8.8")[0] == "x@y.com 22.214.171.124"


def test_clean_batch_reads_an_optional_url_column_and_counts_what_it_let_through(tmp_path: Path) -> None:
    import random

    rng = random.Random(1)
    spec = DatasetSpec.model_validate({"sources": [{"path": "x"}], "filters": {"url": {"blockedDomains": ["bad.example"]}},
                                      "dedup": {"near": {"enabled": False}}})
    texts = [document(rng) + " Contact me at me@home.example please." for _ in range(3)]
    with_url = pa.table({"text": texts, "source": ["web"] * 3, "id": ["a", "b", "c"],
                         "url": ["https://bad.example/x", None, "https://ok.example/"]})
    out = CleanBatch(spec)(with_url)
    removals = removals_from_arrow(out.column("removal"))
    assert [r.reason if r else None for r in removals] == ["blocked_domain", None, None]
    tallies = tallies_from_arrow(out.column("tallies"))
    assert [(t.step, t.what) for t in tallies[1]] == [("url", "no_url"), ("pii", "email"), ("pii", "documents")]
    assert out.column("url").to_pylist()[0] == "https://bad.example/x"
    assert "email@example.com" in out.column("text")[2].as_py()
    without = CleanBatch(spec)(with_url.drop_columns(["url"]))  # readers without URLs: every document passes
    assert all(r is None for r in removals_from_arrow(without.column("removal")))


def test_audit_sample_is_the_bottom_k_by_hash_whatever_the_order_or_split() -> None:
    docs = [RemovedDocument(f"text {i}", "src", f"doc{i}") for i in range(200)]
    want = sorted(docs, key=lambda d: rank(d.label))[:5]
    forward, backward = RemovedSample(5), RemovedSample(5)
    for d in docs:
        forward.offer(d)
    for d in reversed(docs):
        backward.offer(d)
    assert forward.documents() == backward.documents() == want
    halves = RemovedSample(5, RemovedSample(5, docs[:100]).documents() + RemovedSample(5, docs[100:]).documents())
    assert halves.documents() == want  # mergeable: what a resumed build relies on
    assert RemovedSample.from_state(5, forward.state()).documents() == want


def test_removed_files_hold_capped_records_and_the_book_round_trips(tmp_path: Path) -> None:
    book = StepStatsBook(["read", "language"], sample_size=2)
    for i in range(5):
        book.step("language").drop("language_de", RemovedDocument("Der alte Mann " * 50, "books", f"d{i}",
                                                                    url=f"https://x.example/{i}"))
    book.step("language").count("no_url", 3)
    again = StepStatsBook.from_state(json.loads(json.dumps(book.state())))
    assert again.stats() == book.stats() and again.state() == book.state()
    summary = write_removed(tmp_path, book.samples(), book.removed(), 2, 30)
    assert summary["files"] == {"language": {"language_de": {"removed": 5, "sampled": 2,
                                                             "file": "removed/language/language_de.jsonl"}}}
    records = [json.loads(x) for x in (tmp_path / "removed/language/language_de.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(len(r["text"]) == 30 and r["truncated"] for r in records)
    assert {r["step"] for r in records} == {"language"} and all(r["url"].startswith("https://x.example/")
                                                                for r in records)


def test_checkpoint_is_trusted_only_for_its_spec_completed_inputs_and_lists(tmp_path: Path) -> None:
    from llmfab.data.passes.checkpoint import Checkpoints, input_units

    src, work = tmp_path / "src", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    for name in ("a.jsonl", "b.jsonl"):
        (src / name).write_text('{"text": "x"}\n')
    spec = DatasetSpec.model_validate({"sources": [{"path": str(src)}]})
    units = input_units(spec, Path)
    Checkpoints(work, spec, units, ("list|1|2",)).save("clean", (0, 1, 1), segments=0)
    state = Checkpoints(work, spec, units, ("list|1|2",)).load()
    assert state is not None and state["position"] == [0, 1, 1] and state["inputs"] == units[0][:1]
    assert Checkpoints(work, spec, units, ("list|1|3",)).load() is None  # a block list changed
    other = spec.model_copy(update={"audit": spec.audit.model_copy(update={"samples_per_reason": 3})})
    assert Checkpoints(work, other, units, ("list|1|2",)).load() is None  # another spec
    roomier = spec.model_copy(update={"pod": spec.pod.model_copy(update={"node_selector": {"big": "yes"}})})
    assert Checkpoints(work, roomier, units, ("list|1|2",)).load() is not None  # not an output field
    (src / "b.jsonl").write_text('{"text": "y"}\n\n')  # not completed yet: the checkpoint holds
    assert Checkpoints(work, spec, input_units(spec, Path), ("list|1|2",)).load() is not None
    (src / "a.jsonl").write_text('{"text": "changed"}\n')  # completed: it does not
    assert Checkpoints(work, spec, input_units(spec, Path), ("list|1|2",)).load() is None
