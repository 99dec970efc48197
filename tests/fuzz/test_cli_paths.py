"""Every CLI argument that names a resource or a path (issue 19, #6): the answer is success or a
clear error (exit 2 naming the argument; exit 1 naming a resource that does not exist), never a
traceback, and nothing outside the named resource's own files changes (the store and a directory
beside it are snapshotted before and after)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmfab.api import KINDS, resource_class
from llmfab.api.common import DNS1123_LABEL
from llmfab.cli import app
from llmfab.store import staged_directory, write_manifest

RESOURCES = {"datasets": ["books", "poems"], "runs": ["tiny"], "rewardmodels": ["judge"], "services": ["tiny-chat"]}
RUN_SPEC = """apiVersion: llmfab.dev/v1alpha1
kind: TrainingRun
metadata: {name: tiny}
spec: {dataset: {name: books}, release: {license: apache-2.0}}
"""


def make_store(base: Path) -> Path:
    home = base / "home"
    for kind_dir, names in RESOURCES.items():
        for name in names:
            with staged_directory(home / kind_dir / name) as tmp:
                (tmp / "data.bin").write_bytes(name.encode())
                write_manifest(tmp, {"kind": kind_dir})
            (home / kind_dir / f"{name}.status.json").write_text('{"phase": "Succeeded"}')
    (home / "runs" / "tiny.spec.yaml").write_text(RUN_SPEC)
    (base / "outside").mkdir()
    (base / "outside" / "keep.txt").write_text("not llmfab's")
    (base / "outside.tmp-editor").write_text("another program's temporary")
    return home


def snapshot(base: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(base)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(base.rglob("*"))}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("cli")


SPECIAL_NAMES = ["", ".", "..", "/", "~", "*", "books", "poems", "tiny", "tiny-chat", "nope", "../outside",
                 "books/../poems", "books\n", "Books", "a" * 64, "-f", "--help", "{base}/outside", "{home}/datasets",
                 "{home}", "datasets/books", "books.tmp-x", "outside.tmp-editor"]
KIND_NAMES = ["dataset", "datasets", "trainingrun", "ltr", "rewardmodel", "inferenceservice", "isvc", "", "..", "x"]
names = st.one_of(st.sampled_from(SPECIAL_NAMES), st.from_regex(DNS1123_LABEL, fullmatch=True),
                  st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
kinds = st.one_of(st.sampled_from(KIND_NAMES), st.text(max_size=8))
paths = st.one_of(st.sampled_from(["{base}/outside", "{base}/new-dir", "{home}/datasets", "{home}/runs/tiny/model",
                                   "{base}/outside.tmp-editor", "{home}", "{base}/outside/keep.txt", ""]),
                  st.text(max_size=12))


@st.composite
def commands(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(["delete", "get", "get-kind", "get-name", "describe", "export", "export-out", "down"]))
    kind, name = draw(kinds), draw(names)
    if command == "delete":
        return ["delete", "--", kind, name]
    if command == "get":
        return ["get"]
    if command == "get-kind":
        return ["get", "--", kind]
    if command == "get-name":
        return ["get", "--", kind, name]
    if command == "describe":
        return ["describe", "--", kind, name]
    if command == "export":
        return ["export", "--", name]
    if command == "export-out":
        return ["export", "--out", draw(paths), "--", name]
    return ["down", "--", name]


def allowed_changes(args: list[str], base: Path) -> set[str]:
    """What a successful command may change: ``delete KIND NAME`` its resource's own files."""
    if args[0] != "delete":
        return set()
    kind_dir = resource_class(args[2]).ARTIFACT_DIR
    return {f"home/{kind_dir}/{args[3]}", f"home/{kind_dir}/{args[3]}."}


def changed_ok(path: str, allowed: set[str]) -> bool:
    return any(path == a or path.startswith(a if a.endswith(".") else a + "/") for a in allowed)


@given(args=commands())
@example(args=["delete", "--", "dataset", ""])  # the reported defect: removed datasets/
@example(args=["delete", "--", "dataset", "{home}/datasets/poems"])  # an absolute path as the name
@example(args=["delete", "--", "dataset", "{base}/outside"])
@example(args=["delete", "--", "dataset", ".."])
@example(args=["delete", "--", "dataset", "books"])
@example(args=["get", "--", "x"])  # found: an unknown kind was a traceback (ValidationFailed)
@example(args=["describe", "--", "dataset", "../outside"])
@example(args=["export", "--out", "{base}/outside", "--", "tiny"])
@example(args=["export", "--out", "{base}/outside.tmp-editor", "--", "tiny"])
@example(args=["export", "--", "../outside"])
@example(args=["down", "--", "{home}"])
def test_cli_names_and_paths_get_an_answer_and_touch_nothing_else(scratch: Path, args: list[str]) -> None:
    base = Path(tempfile.mkdtemp(dir=scratch))
    home = make_store(base)
    args = [a.replace("{base}", str(base)).replace("{home}", str(home)) for a in args]
    before = snapshot(base)
    result = CliRunner().invoke(app, args, env={"LLMFAB_HOME": str(home), "COLUMNS": "200"})
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: {type(result.exception).__name__}: {result.exception}\n{output}")
    assert result.exit_code in (0, 1, 2), (args, result.exit_code, output)
    if result.exit_code == 2:
        assert "Invalid value for" in output or "Usage:" in output, (args, output)
    if result.exit_code == 1:
        named = args[-1]
        assert named in output or "not found" in output, (args, output)
    after = snapshot(base)
    changed = {p for p in set(before) | set(after) if before.get(p, b"-") != after.get(p, b"-")}
    allowed = allowed_changes(args, base) if result.exit_code == 0 else set()
    assert all(changed_ok(p, allowed) for p in changed), (args, sorted(changed))
    shutil.rmtree(base)


def test_every_kind_has_a_directory_the_fuzzer_populates() -> None:
    assert {cls.ARTIFACT_DIR for cls in KINDS.values()} == set(RESOURCES)
