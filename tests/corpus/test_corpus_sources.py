"""Parsers of the registry-package corpus, on tiny inputs (no network)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from llmfab.data import corpus_sources as cs


def test_strip_pos_tags_keeps_slashes_inside_words() -> None:
    assert cs.strip_pos_tags("The/at 1/2/cd inch/nn ./.") == ["The", "1/2", "inch", "."]


def test_brown_to_text_rebuilds_quotes_punctuation_and_paragraphs() -> None:
    tagged = (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, Friday/nr ./.\n"
        "It/pps ended/vbd (/( again/rb )/) ./.\n\n\n\tNew/jj paragraph/nn ?/.\n"
    )
    assert cs.brown_to_text(tagged) == (
        'The jury said "no evidence", Friday. It ended (again).\n\nNew paragraph?'
    )


def test_austen_chapters_split_on_headings_and_drop_title_page_and_volumes() -> None:
    lines = ["EMMA", "", "By Jane Austen", "", "VOLUME I", "", "CHAPTER I", "",
             "Emma Woodhouse, handsome,", "clever, and rich.", "", "Second paragraph.",
             "VOLUME II", "Chapter 2", "", "Next chapter."]
    docs = list(cs.austen_chapters("emma", lines))
    assert [d.id for d in docs] == ["austen/emma/001", "austen/emma/002"]
    assert docs[0].text == "Emma Woodhouse, handsome, clever, and rich.\n\nSecond paragraph."
    assert docs[1].title == "Emma, chapter 2" and docs[1].text == "Next chapter."


def test_clean_osis_keeps_a_space_where_a_footnote_sat_and_ends_paragraphs() -> None:
    raw = (
        '<w lemma="strong:H0430">God</w><note placement="foot"><reference>1:1 </reference>'
        'Elohim.</note><w lemma="x">created</w> <w>it</w> <note>n</note>. <div type="x-p" eID="a"/>'
        '<l level="1"/><w>Yahweh</w><l eID="b"/><l level="2"/><w>is</w> good.'
    )
    assert cs.clean_osis(raw) == "God created it.\n\nYahweh is good."


def test_read_r_lazyload_reads_every_object_of_a_database(tmp_path: Path) -> None:
    rdata = pytest.importorskip("rdata")
    objects = {"emma": np.array(["EMMA", "", "CHAPTER I", "Text."]), "persuasion": np.array(["P"])}
    blob = b""
    variables = {}
    for name, value in objects.items():
        rdata.write_rds(tmp_path / "obj.rds", value, compression=None)
        raw = (tmp_path / "obj.rds").read_bytes()
        record = struct.pack(">I", len(raw)) + zlib.compress(raw)
        variables[name] = np.array([len(blob), len(record)], dtype=np.int32)
        blob += record
    (tmp_path / "Rdata.rdb").write_bytes(blob)
    index = {"variables": variables, "references": {}, "compressed": np.array([True])}
    rdata.write_rds(tmp_path / "Rdata.rdx", index)
    read = cs.read_r_lazyload(tmp_path / "Rdata")
    assert sorted(read) == ["emma", "persuasion"]
    assert [str(x) for x in read["emma"]] == ["EMMA", "", "CHAPTER I", "Text."]


def test_stdlib_parsers_read_json_records_in_reading_order(tmp_path: Path) -> None:
    data = tmp_path / "package" / "data"
    data.mkdir(parents=True)
    (data / "1790_george_washington_n.json").write_text(
        json.dumps({"year": 1790, "name": "George Washington", "text": " Fellow-Citizens. "}))
    sotu = list(cs.parse_sotu(tmp_path))
    assert sotu[0].text == "Fellow-Citizens." and "1790" in sotu[0].title
    (data / "file_list.json").write_text(json.dumps(["contents.txt", "chapter_2.txt",
                                                     "chapter_10.txt"]))
    for stem, label in [("chapter_2", "2"), ("chapter_10", "10")]:
        (data / f"{stem}.json").write_text(
            json.dumps({"chapter": label, "title": "T.", "text": f"Text {label}."}))
    moby = list(cs.parse_moby_dick(tmp_path))
    assert [d.id for d in moby] == ["mobydick/chapter_2", "mobydick/chapter_10"]


def test_brown_parser_reads_category_names(tmp_path: Path) -> None:
    package = tmp_path / "package"
    package.mkdir()
    (package / "cats.txt").write_text("ca01 news\n")
    (package / "ca01").write_text("\n\n\tHello/uh world/nn ./.\n")
    (package / "README").write_text("not a corpus file")
    docs = list(cs.parse_brown(tmp_path))
    assert [(d.id, d.text) for d in docs] == [("brown/ca01", "Hello world.")]
    assert "news" in docs[0].title
