"""The JSONL reader of post-training data (instruction examples, preference pairs, RL prompts) on
any bytes: rows, or one WorkloadError naming the spec field and ``file:line``; never another
exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llmfab.errors import WorkloadError
from llmfab.training.inputs import jsonl_rows
from llmfab.training.inputs.jsonl_rows import read_rows

FIELD = "spec.sft.data"

_json_lines = st.lists(
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=8).map(json.dumps),
    max_size=5,
).map(lambda lines: "\n".join(lines).encode())


@given(content=st.binary(max_size=300) | _json_lines)
@example(content=b'{"a": ' + b"9" * 5000 + b"}\n")  # int() refuses 5000 digits: ValueError, not JSONDecodeError
@example(content=b"[" * 100_000 + b"]" * 100_000 + b"\n")  # nesting past the parser's recursion limit
@example(content=b'{"prompt": "caf\xe9"}\n')  # Latin-1, not UTF-8
@example(content='{"prompt": "one\u2028line"}\n'.encode())  # U+2028 inside a string is still one line
def test_any_bytes_give_rows_or_an_error_naming_the_field_and_line(tmp_path_factory: pytest.TempPathFactory,
                                                                    content: bytes) -> None:
    file = tmp_path_factory.mktemp("rows") / "data.jsonl"
    file.write_bytes(content)
    try:
        rows = list(read_rows(FIELD, [file]))
    except WorkloadError as e:
        assert str(e).startswith(f"{FIELD}: {file}:")
        assert "fix" in str(e) or "one JSON object per line" in str(e)
        return
    assert all(isinstance(row, dict) and where.startswith(f"{file}:") for where, row in rows)


def test_a_text_holding_a_unicode_line_separator_is_one_row(tmp_path: Path) -> None:
    """JSON writers leave U+2028/U+0085 unescaped; ``str.splitlines`` cut such a row in two."""
    file = tmp_path / "pairs.jsonl"
    file.write_text(json.dumps({"prompt": "a\u2028b\u0085c"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [row for _, row in read_rows(FIELD, [file])] == [{"prompt": "a\u2028b\u0085c"}]


def test_a_line_longer_than_the_cap_is_refused_before_it_is_read_whole(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl_rows, "MAX_LINE_BYTES", 64)
    file = tmp_path / "big.jsonl"
    file.write_text('{"ok": 1}\n' + json.dumps({"prompt": "x" * 100}) + "\n")
    with pytest.raises(WorkloadError, match=rf"{FIELD}: {file}:2 is longer than 64 bytes"):
        list(read_rows(FIELD, [file]))
