"""The post-training data built from WordNet (Debian wordnet-base, `make tools`) and the sample corpus:
byte-identical reruns, rows that say what they claim, provenance that matches the files, atomic
writes, and a clear error when WordNet is not installed."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llmfab.api.reward_model import Preferences
from llmfab.api.training_run import SftSpec
from llmfab.data import instruction_data as D
from llmfab.training.objectives.reward.pairs import read_pairs
from llmfab.training.objectives.sft.examples import read_chats

FILES = ("sft.jsonl", "preferences.jsonl", "rl-prompts.jsonl", "manifest.json", "WORDNET-LICENSE.txt")


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("post-training") / "data"
    assert D.write(out) is True
    return out


def test_a_rebuild_writes_the_same_bytes_and_a_rerun_does_nothing(built: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    again = tmp_path / "again"
    assert D.write(again) is True
    for name in FILES:
        assert (again / name).read_bytes() == (built / name).read_bytes(), name
    before = {name: (again / name).stat().st_mtime_ns for name in FILES}
    assert D.write(again) is False and "up to date" in capsys.readouterr().out
    assert {name: (again / name).stat().st_mtime_ns for name in FILES} == before
    other_seed = tmp_path / "seed1"
    D.write(other_seed, options=D.Options(seed=1))
    assert (other_seed / "sft.jsonl").read_bytes() != (built / "sft.jsonl").read_bytes()


def test_the_files_read_as_sft_examples_and_preference_pairs(built: Path) -> None:
    chats = read_chats([built / "sft.jsonl"], SftSpec(path="sft.jsonl"))
    pairs = read_pairs([built / "preferences.jsonl"], Preferences(path="preferences.jsonl"))
    assert len(chats) > 1000 and len(pairs) > 800
    tasks = {r["task"] for r in rows(built / "sft.jsonl")} | {r["task"] for r in rows(built / "preferences.jsonl")}
    assert tasks == {"define", "continue", "which-book"}
    prompts = [{r["prompt"] for r in rows(built / name)} for name in ("sft.jsonl", "preferences.jsonl", "rl-prompts.jsonl")]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])  # held apart
    for row in rows(built / "sft.jsonl") + rows(built / "preferences.jsonl"):
        for text in (row["prompt"], row.get("response", ""), row.get("chosen", ""), row.get("rejected", "")):
            assert len(text.split()) <= D.Options().max_words + 8  # the prompt's task words on top


def wordnet_definitions(word: str) -> list[str]:
    """Every definition WordNet gives ``word``, found by a plain scan (not the module's index walk)."""
    found = []
    for pos, _ in D.POS_FILES:
        for line in (D.WORDNET_DIR / f"data.{pos}").read_text(encoding="utf-8").splitlines():
            if not line.startswith(" ") and word in D.synset_words(line):
                found.append(D.sentence_case(D.definition(line)))
    return found


def defined_word(prompt: str) -> str:
    for template in D.DEFINE_PROMPTS:
        head, tail = template.split("{word}")
        if prompt.startswith(head) and prompt.endswith(tail):
            return prompt[len(head): len(prompt) - len(tail)]
    raise AssertionError(f"{prompt!r} is no define prompt")


def test_define_rows_give_a_wordnet_gloss_of_the_word_and_another_words_gloss_as_rejected(built: Path) -> None:
    define = [r for r in rows(built / "preferences.jsonl") if r["task"] == "define"][:4]
    for row in define:
        word = defined_word(row["prompt"])
        glosses = wordnet_definitions(word)
        assert row["chosen"] in glosses, (word, row["chosen"])
        assert row["rejected"] != row["chosen"] and row["rejected"] not in glosses
    for row in [r for r in rows(built / "sft.jsonl") if r["task"] == "define"][:3]:
        assert row["response"] in wordnet_definitions(defined_word(row["prompt"]))


def normalized(text: str) -> str:
    return " ".join(text.split())


def test_passage_rows_continue_their_book_and_name_it(built: Path) -> None:
    books = {name: normalized((D.CORPUS_DIR / name).read_text(encoding="utf-8")) for name in D.BOOKS}
    continues = [r for r in rows(built / "preferences.jsonl") if r["task"] == "continue"]
    assert {r["source"] for r in continues} == set(D.BOOKS)
    for row in continues[:20]:
        passage = row["prompt"].removeprefix("Continue this passage: ")
        assert passage + " " + row["chosen"] in books[row["source"]]  # the sentence that follows it
        assert row["rejected"] not in books[row["source"]]  # a sentence of another book
    answers = [r.get("chosen") or r["response"] for name in ("sft.jsonl", "preferences.jsonl")
               for r in rows(built / name) if r["task"] == "continue"]
    prompts = " | ".join(r["prompt"] for name in ("sft.jsonl", "preferences.jsonl", "rl-prompts.jsonl")
                         for r in rows(built / name) if r["task"] != "define")
    assert not [a for a in answers if len(a.split()) >= 6 and a in prompts]  # no answer given away elsewhere
    which = [r for r in rows(built / "sft.jsonl") if r["task"] == "which-book"]
    for row in which[:20]:
        assert row["prompt"].removeprefix("Which book is this passage from? ") in books[row["source"]]
        assert row["response"] == f"It is from {D.BOOKS[row['source']]}."


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_records_package_version_licence_and_hashes(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["generator"] == "llmfab.data.instruction_data" and manifest["version"] == D.VERSION
    assert manifest["options"] == D.Options().to_json()
    wordnet, corpus = manifest["sources"]
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "wordnet-base"], capture_output=True,
                               text=True, check=True).stdout
    assert wordnet["package"] == "wordnet-base" and wordnet["version"] == installed
    assert "WordNet 3.0" in wordnet["licence"]
    assert wordnet["files"] == {f.name: sha256(f) for f in D.wordnet_files(D.WORDNET_DIR)}
    assert corpus["files"] == {name: sha256(D.CORPUS_DIR / name) for name in D.BOOKS}
    assert "public domain" in corpus["licence"]
    for name, record in manifest["outputs"].items():
        assert record["sha256"] == sha256(built / name) and record["rows"] == len(rows(built / name))
    notice = (built / "WORDNET-LICENSE.txt").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in notice and "ALL copies" in notice


def test_missing_wordnet_is_an_error_naming_the_package_and_the_make_target(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data"
    assert D.main(["--out", str(out), "--wordnet-dir", str(tmp_path / "no-wordnet")]) == 1
    err = capsys.readouterr().err
    assert "wordnet-base" in err and "make tools" in err and "--wordnet-dir" in err and "Traceback" not in err
    assert not out.exists()


def test_a_failed_build_leaves_nothing_that_looks_complete(built: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    calls = []
    real = D.write_text_atomic

    def fail_on_second(path: Path, text: str) -> None:  # the second data file, inside the staged directory
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(path, text)

    monkeypatch.setattr(D, "write_text_atomic", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        D.write(out)
    assert len(calls) == 2 and calls[0].parent != out  # it was writing in a temporary sibling
    assert not out.exists() and list(tmp_path.iterdir()) == []
