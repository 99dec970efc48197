"""Names and paths the CLI takes are checked before anything is touched (issue 19, #6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmfab.store import InvalidName, delete_artifacts, staged_directory, write_manifest


def llmfab(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMFAB_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "llmfab", *args], env=env, text=True, capture_output=True,
                          timeout=120)


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    for name in ("books", "poems"):
        with staged_directory(home / "datasets" / name) as tmp:
            (tmp / "tokenizer.model").write_bytes(b"model")
            write_manifest(tmp, {"kind": "Dataset"})
        (home / "datasets" / f"{name}.status.json").write_text("{}")
    return home


@pytest.mark.parametrize("name", ["", ".", "..", "../datasets", "Books", "books/", "books-", "a" * 64])
def test_delete_refuses_a_name_that_is_not_a_resource_name(store: Path, name: str) -> None:
    """``llmfab delete dataset ""`` removed ``datasets/``: every Dataset."""
    before = snapshot(store.parent)
    out = llmfab("delete", "dataset", name, home=store)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Invalid value for 'name'" in out.stderr and "DNS-1123 label" in out.stderr
    assert snapshot(store.parent) == before


def test_delete_refuses_an_absolute_path_as_the_name(store: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    for name in (str(victim), str(store / "datasets" / "books")):
        out = llmfab("delete", "dataset", name, home=store)
        assert out.returncode == 2 and "Invalid value for 'name'" in out.stderr
    assert (victim / "keep.txt").read_text() == "mine" and (store / "datasets" / "books" / "tokenizer.model").exists()


def test_the_store_refuses_a_bad_name_whoever_calls_it(store: Path) -> None:
    with pytest.raises(InvalidName, match=r"name '' is not a resource name: use a DNS-1123 label"):
        delete_artifacts("datasets", "", store)
    assert (store / "datasets" / "books").is_dir()


def test_a_good_name_still_deletes_only_its_resource(store: Path) -> None:
    out = llmfab("delete", "dataset", "books", home=store)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (store / "datasets").iterdir()) == ["poems", "poems.status.json"]


def test_export_refuses_to_replace_a_directory_llmfab_did_not_make(store: Path, tmp_path: Path) -> None:
    mine = tmp_path / "my-model"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    sibling = tmp_path / "my-model.tmp-editor"  # another program's temporary beside it
    sibling.write_text("draft")
    before = snapshot(tmp_path)
    for out_dir in (mine, tmp_path / "empty", sibling):
        (tmp_path / "empty").mkdir(exist_ok=True)
        before = snapshot(tmp_path)
        out = llmfab("export", "tiny", "--out", str(out_dir), home=store)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "Invalid value for '--out'" in out.stderr and "--force" in out.stderr
        assert snapshot(tmp_path) == before


def test_a_writer_leaves_other_programs_temporaries_beside_its_output(tmp_path: Path) -> None:
    """``--out DIR`` may sit among a user's files: a ``DIR.tmp-*`` that llmfab did not lock is not
    llmfab's to remove, nor is anything of another name."""
    foreign = [tmp_path / "model.tmp-editor", tmp_path / "other.tmp-1"]
    foreign[0].mkdir()
    (foreign[0] / "draft").write_text("draft")
    foreign[1].write_text("x")
    with staged_directory(tmp_path / "model") as tmp:
        write_manifest(tmp, {"kind": "HFModel"})
    assert (foreign[0] / "draft").read_text() == "draft" and foreign[1].read_text() == "x"


def test_feedback_export_checks_its_name_like_every_other_command(store: Path, tmp_path: Path) -> None:
    """It took its NAME unchecked and failed later with exit 1; every other command exits 2 naming
    the argument before anything runs."""
    out = llmfab("feedback", "export", "../datasets", "--out", str(tmp_path / "prefs.jsonl"), home=store)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Invalid value for 'name'" in out.stderr and "DNS-1123 label" in out.stderr
    assert not (tmp_path / "prefs.jsonl").exists()
