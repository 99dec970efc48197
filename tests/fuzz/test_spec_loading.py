"""The spec loader on hostile YAML and JSON (issue 19): a clear error naming the file, never a traceback.

``load_resources`` (behind ``llmfab validate``, ``llmfab up`` and every workload) either returns
resources or raises :class:`ValidationFailed` whose every line names the file; it never raises
anything else, and its time and memory are bounded by the file's size (capped) and by what its
aliases expand to (capped), not by what a few hundred bytes of anchors can describe.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmfab.api.loading import MAX_SPEC_FILE_BYTES, ValidationFailed, load_resources
from llmfab.cli import app

VALID = {
    "apiVersion": "llmfab.dev/v1alpha1",
    "kind": "Dataset",
    "metadata": {"name": "corpus"},
    "spec": {"sources": [{"path": "data/*.txt", "documentPer": "paragraph"}], "split": {"train": 0.9,
             "val": 0.05, "test": 0.05}},
}
FIELDS = ["apiVersion", "kind", "metadata", "name", "spec", "sources", "path", "huggingface", "maxDocuments",
          "documentPer", "onError", "maxDocumentBytes", "weight", "labels", "tokenizer", "vocabSize", "split",
          "train", "model", "Dataset", "TrainingRun", "llmfab.dev/v1alpha1", "max_documents"]
LAUGHS = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else "lol"] * 9) + "]\n" for i in range(9))


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (not hang) when the loader runs past ``seconds``: unbounded time is the defect."""
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"loading took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


SCRATCH = tempfile.TemporaryDirectory(prefix="fuzz-spec-")  # every example's file; gone with the module


@pytest.fixture(scope="module", autouse=True)
def _remove_scratch() -> Iterator[None]:
    yield
    SCRATCH.cleanup()


def load(raw: bytes, suffix: str = ".yaml") -> tuple[list[str], Path]:
    """Errors of loading ``raw`` from a file ([] when valid); any other exception fails the test."""
    path = Path(tempfile.mkdtemp(prefix="spec-", dir=SCRATCH.name)) / f"spec{suffix}"
    path.write_bytes(raw)
    try:
        with deadline(10):
            load_resources([path])
        return [], path
    except ValidationFailed as e:
        assert e.errors and all(line.startswith(str(path)) for line in e.errors), e.errors
        assert all(len(line) < 2000 for line in e.errors), "an error line is a hint, not a dump"
        return e.errors, path


HOSTILE = {
    "billion laughs": LAUGHS + "apiVersion: llmfab.dev/v1alpha1\nkind: Dataset\nmetadata: {name: x}\n"
                      "spec: {sources: [{path: a}], junk: *l8}\n",
    "deep nesting": "spec: " + "[" * 3000 + "]" * 3000 + "\n",
    "deep mapping": "".join("  " * i + f"k{i}:\n" for i in range(1000)),
    "5000-digit integer": "apiVersion: llmfab.dev/v1alpha1\nkind: Dataset\nmetadata: {name: x}\n"
                          "spec: {sources: [{path: a, maxDocuments: " + "9" * 5000 + "}]}\n",
    "4000-digit integer": "apiVersion: llmfab.dev/v1alpha1\nkind: Dataset\nmetadata: {name: x}\n"
                          "spec: {sources: [{path: a, maxDocuments: " + "9" * 4000 + "}]}\n",
    "4000-digit kind": "apiVersion: llmfab.dev/v1alpha1\nkind: " + "9" * 4000 + "\nmetadata: {name: 7}\n",
    "python tag": "apiVersion: !!python/object/apply:os.system ['true']\n",
    "duplicate key": "apiVersion: llmfab.dev/v1alpha1\nkind: Dataset\nmetadata: {name: x}\n"
                     "spec: {sources: [{path: a}]}\nspec: {sources: [{path: b}]}\n",
    "bad timestamp": "apiVersion: llmfab.dev/v1alpha1\nkind: Dataset\nmetadata: {name: !!timestamp 2001-13-45}\n",
    "binary": "\udcff\udcfekind: Dataset\n",
    "non-string keys": "apiVersion: llmfab.dev/v1alpha1\nkind: Dataset\nmetadata: {name: x, labels: {1: 2}}\n"
                       "spec: {sources: [{path: a}], 3.5: x, null: y}\n",
    "several documents": "--- 1\n--- [a]\n--- !!binary aGk=\n---\n",
}
EXPECTED = {
    "billion laughs": r":1: the document expands to more than 100000 values through its aliases",
    "deep nesting": r": nested too deeply",
    "deep mapping": r": nested too deeply",
    "5000-digit integer": r"an integer of 5000 characters; Kubernetes integers are 64-bit\n.*line 4, column 42",
    "4000-digit integer": r"Dataset/x: spec.sources\[0\].maxDocuments: 13288-bit integer is out of range",
    "4000-digit kind": r"kind: 9{79}… is not an llmfab kind",
    "python tag": r"not valid YAML: could not determine a constructor for the tag .*python/object/apply",
    "duplicate key": r"found the key 'spec' twice; keep one\n.*line 5, column 1",
    "bad timestamp": r"cannot read this timestamp value: month must be in 1..12\n.*line 3",
    "binary": r":1: not UTF-8 text \(invalid start byte at byte 0\)",
    "non-string keys": r"metadata.labels\[1\].*Input should be a valid string",
    "several documents": r"document 1: expected a mapping .*found a int",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_is_a_clear_error_naming_the_file(case: str) -> None:
    """Each of these raised RecursionError, ValueError or UnicodeDecodeError (a traceback), took
    minutes (the laughs), or passed (a duplicate key dropped half the spec, a 4000-digit int)."""
    errors, _ = load(HOSTILE[case].encode("utf-8", "surrogateescape"))
    assert errors, f"{case} was accepted"
    assert any(re.search(EXPECTED[case], line, re.S) for line in errors), errors


def test_a_spec_file_over_the_size_cap_is_refused_unread() -> None:
    errors, path = load(b"# " + b"x" * MAX_SPEC_FILE_BYTES + b"\n")
    assert errors == [f"{path}: {MAX_SPEC_FILE_BYTES + 3} bytes; a spec file is at most {MAX_SPEC_FILE_BYTES} "
                      "bytes (a Kubernetes object at most ~1.5 MiB): split it, or point large data at files the "
                      "spec names"]


def test_a_pipe_over_the_size_cap_is_refused_having_read_only_the_cap(tmp_path: Path) -> None:
    """``-f <(...)`` is a pipe, whose size reads 0: the cap is on what is read, not on st_size
    (before, the whole stream was read into memory, and /dev/zero never ended)."""
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    written: list[int] = []

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), fifo.open("wb") as f:
            for _ in range(8):  # 8 MiB of comments: four times the cap
                f.write(b"#" * ((1 << 20) - 1) + b"\n")
                written.append(1)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with pytest.raises(ValidationFailed) as e:
        load_resources([fifo])
    writer.join(timeout=10)
    assert e.value.errors == [f"{fifo}: more than {MAX_SPEC_FILE_BYTES} bytes; a spec file is at most "
                              f"{MAX_SPEC_FILE_BYTES} bytes (a Kubernetes object at most ~1.5 MiB): split it, "
                              "or point large data at files the spec names"]
    assert len(written) < 8, "the reader read the whole stream"


def test_the_largest_nesting_a_spec_file_can_hold_is_refused_in_bounded_time() -> None:
    half = MAX_SPEC_FILE_BYTES // 2 - 8
    started = time.monotonic()
    errors, _ = load(b"a: " + b"[" * half + b"]" * half + b"\n")
    assert any("nested too deeply" in e for e in errors) and time.monotonic() - started < 10


def test_validate_command_prints_the_error_and_exits_2_without_a_traceback() -> None:
    for case in ("deep nesting", "5000-digit integer", "binary", "billion laughs"):
        path = Path(tempfile.mkdtemp(prefix="cli-", dir=SCRATCH.name)) / "spec.yaml"
        path.write_bytes(HOSTILE[case].encode("utf-8", "surrogateescape"))
        result = CliRunner().invoke(app, ["validate", "-f", str(path)])
        assert result.exit_code == 2, (case, result.output, result.exception)
        assert "Traceback" not in result.output and "error" in result.output


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**30),
                    st.floats(), st.text(max_size=30), st.sampled_from(FIELDS))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), kids, max_size=5),
                      max_leaves=25)


def _mutated(data: st.DataObject) -> dict:
    """The valid spec with a few fields replaced by random values or added."""
    spec = json.loads(json.dumps(VALID))
    targets = [spec, spec["metadata"], spec["spec"], spec["spec"]["sources"][0]]
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(targets))
        target[data.draw(st.sampled_from(FIELDS) | st.text(max_size=8))] = data.draw(values)
    return spec


@given(st.data(), st.sampled_from(["yaml", "json"]))
def test_a_mutated_spec_loads_or_fails_naming_the_file(data: st.DataObject, form: str) -> None:
    doc = _mutated(data)
    text = json.dumps(doc, allow_nan=True) if form == "json" else yaml.safe_dump(doc, allow_unicode=True)
    load(text.encode(), f".{form}")


YAML_TOKENS = [*"[]{}:,-&*!|>'\"#%@`?\n\t ab01.~", "!!python/name:os.system", "<<: ", "&a ", "*a", "---\n",
               "apiVersion: ", "kind: ", "!!binary ", "!!timestamp ", "!!int ", "!!float ", "!!set "]
yaml_syntax = st.lists(st.sampled_from(YAML_TOKENS), max_size=80).map("".join)


@given(st.one_of(st.binary(max_size=300), yaml_syntax.map(str.encode)))
@example(b"&a [*a]")  # an alias inside its own anchor: the expansion count never ended
@example(b"!!timestamp")  # AttributeError from PyYAML's constructor
@example(b"\x00")  # ReaderError raised before parsing starts
@example(b"!!set .")  # ValueError: a scalar where the duplicate-key check expected a mapping
@example(b"- &a [a]\n- &b [*a, *a]\n- {<<: *b}\n")
@example(b"? [a, b]\n: c\n")
@example(b"a: !!float 1e99999\nb: !!int 0b" + b"1" * 20000 + b"\n")
def test_random_bytes_and_yaml_syntax_load_or_fail_naming_the_file(raw: bytes) -> None:
    load(raw)
