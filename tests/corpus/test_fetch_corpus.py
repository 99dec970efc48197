"""The fetch script's bookkeeping (no network): idempotence and refusing foreign directories."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fetch() -> ModuleType:
    return load(ROOT / "scripts" / "fetch_corpus.py")


def test_complete_marker_makes_a_rerun_do_nothing(fetch: ModuleType, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "corpus"
    out.mkdir()
    (out / ".complete").write_text(json.dumps({"sources": ["austen", "web"]}))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a complete corpus must not be fetched again")

    monkeypatch.setattr(fetch, "fetch_source", no_network)
    assert fetch.fetch_corpus(out, ["austen"]) is False


def test_a_non_empty_directory_without_marker_is_refused(fetch: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    with pytest.raises(SystemExit, match=r"no \.complete marker"):
        fetch.fetch_corpus(out, ["austen"])
    assert (out / "mine.txt").exists()


def test_unknown_source_is_named(fetch: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--sources: unknown"):
        fetch.fetch_corpus(tmp_path / "c", ["wikipedia"])


def test_failed_fetch_leaves_nothing_that_looks_complete(fetch: ModuleType, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("network down")

    monkeypatch.setattr(fetch, "fetch_source", broken)
    with pytest.raises(RuntimeError):
        fetch.fetch_corpus(tmp_path / "corpus", ["austen"])
    assert list(tmp_path.iterdir()) == []


def test_committed_sample_is_a_few_hundred_kb_of_public_domain_paragraphs() -> None:
    sample = ROOT / "examples" / "data"
    files = sorted(sample.glob("*.txt"))
    assert [f.name for f in files] == [
        "austen_pride_and_prejudice.txt", "moby_dick.txt", "web_genesis.txt"]
    assert 200_000 < sum(f.stat().st_size for f in files) < 500_000
    for f in files:
        paragraphs = f.read_text(encoding="utf-8").split("\n\n")
        assert len(paragraphs) > 100 and all(p.strip() for p in paragraphs)
    readme = (sample / "README.md").read_text(encoding="utf-8")
    assert "public domain" in readme and all(f.name in readme for f in files)
