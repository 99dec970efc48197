"""``llmfab feedback export`` fuzzed (issue 19) on files that are not what it wants: bytes, a SQLite
header over garbage, SQLite databases with some of the store's tables and columns or others, and
store-shaped ones whose rows hold what the app never writes (NULL, numbers, blobs). It exits 0 only
for a feedback store and writes only text pairs; otherwise it exits 1 with ``error:`` and the file's
path; the store file's bytes and an earlier ``--out`` are unchanged, and no temporary file is left.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import event, example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from llmfab.cli import app as cli_app

ANY_TEXT = st.text(max_size=40)

STORE_COLUMNS = {
    "prompts": ["id", "text"],
    "pairs": ["id", "prompt_id", "completion_a", "completion_b", "sampling_a", "sampling_b", "created_at"],
    "votes": ["id", "pair_id", "choice", "edited", "voter", "created_at"],
}
SQL_VALUE = (
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | ANY_TEXT
    | st.binary(max_size=8)
)


@dataclass
class StoreFile:
    kind: str
    content: bytes = b""
    tables: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, list[list[Any]]] = field(default_factory=dict)
    wal: bool = False

    @property
    def has_store_tables(self) -> bool:
        return all(set(cols) <= set(self.tables.get(t, [])) for t, cols in STORE_COLUMNS.items())

    def write(self, path: Path) -> None:
        if self.kind != "sqlite":
            path.write_bytes(self.content)
            return
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("PRAGMA synchronous = OFF")  # a fixture: no fsync per statement
            if self.wal:
                db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN")
            for table, columns in self.tables.items():
                db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
                for row in self.rows.get(table, []):
                    db.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})", row)
            db.execute("COMMIT")


@st.composite
def store_files(draw: st.DrawFn) -> StoreFile:
    kind = draw(st.sampled_from(["bytes", "sqlite-header", "sqlite"]))
    if kind == "bytes":
        return StoreFile(kind, draw(st.binary(max_size=2000)))
    if kind == "sqlite-header":
        return StoreFile(kind, b"SQLite format 3\x00" + draw(st.binary(max_size=2000)))
    names = draw(st.sets(st.sampled_from([*STORE_COLUMNS, "users", "prompts_old"]), max_size=5))
    tables: dict[str, list[str]] = {}
    for name in sorted(names):
        known = STORE_COLUMNS.get(name, ["id", "name"])
        kept = (
            draw(st.lists(st.sampled_from(known), unique=True, min_size=1)) if draw(st.booleans()) else known
        )
        tables[name] = kept + draw(st.lists(st.sampled_from(["extra", "note"]), unique=True, max_size=1))
    rows = {
        t: draw(st.lists(st.lists(SQL_VALUE, min_size=len(c), max_size=len(c)), max_size=3))
        for t, c in tables.items()
    }
    if draw(st.booleans()) and all(t in tables for t in STORE_COLUMNS):  # rows that join up: a vote to export
        tables = {t: [*STORE_COLUMNS[t]] for t in STORE_COLUMNS}
        prompt, pair = [1, draw(SQL_VALUE)], [1, 1, draw(SQL_VALUE), draw(SQL_VALUE), "{}", "{}", "t"]
        vote = [1, 1, draw(st.sampled_from(["a", "b", "tie"]) | SQL_VALUE), draw(SQL_VALUE), "ann", "t"]
        rows = {"prompts": [prompt], "pairs": [pair], "votes": [vote]}
    return StoreFile(kind, tables=tables, rows=rows, wal=draw(st.booleans()))


def one_vote(prompt: Any = "P", a: Any = "x", b: Any = "y") -> StoreFile:
    """A store-shaped file holding one vote for A, with these texts."""
    rows = {
        "prompts": [[1, prompt]],
        "pairs": [[1, 1, a, b, "{}", "{}", "t"]],
        "votes": [[1, 1, "a", None, "ann", "t"]],
    }
    return StoreFile("sqlite", tables=STORE_COLUMNS, rows=rows)


# The fuzzer's: texts that are NULL (exported as "chosen": null) or a blob (a TypeError), and a completion
# holding U+0085, a line break to str.splitlines() and so to the RewardModel's JSONL reader, written raw.
@example(one_vote(a=None, b=None))
@example(one_vote(prompt=b"\x00"))
@example(one_vote(b="\x85"))
@given(store=store_files())
def test_export_gives_a_clear_error_for_what_is_no_store_and_changes_no_file(store: StoreFile) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home, out_dir = Path(tmp) / "home", Path(tmp) / "out"
        db = home / "services" / "svc" / "feedback.sqlite"
        db.parent.mkdir(parents=True)
        out_dir.mkdir()
        store.write(db)
        before = db.read_bytes()
        out = out_dir / "prefs.jsonl"
        out.write_text("the previous export\n")
        result = CliRunner().invoke(
            cli_app, ["feedback", "export", "svc", "--out", str(out)], env={"LLMFAB_HOME": str(home)}
        )
        event(f"{store.kind}: exit {result.exit_code}")
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert db.read_bytes() == before, "export changed the store file"
        assert [p.name for p in out_dir.iterdir()] == ["prefs.jsonl"], "a temporary file was left"
        if result.exit_code != 0:
            assert result.exit_code == 1 and result.output.startswith("error: "), result.output
            assert str(db) in result.output.replace("\n", ""), result.output  # rich wraps long lines
            assert out.read_text() == "the previous export\n"
            if not (store.kind == "sqlite" and store.has_store_tables):
                assert "not a llmfab feedback store" in " ".join(result.output.split()), result.output
            return
        assert store.kind == "sqlite" and store.has_store_tables, result.output
        for line in out.read_text().splitlines():  # as the RewardModel reads it (training/inputs/jsonl_rows.py)
            pair = json.loads(line)
            assert set(pair) == {"prompt", "chosen", "rejected"} and all(
                isinstance(v, str) for v in pair.values()
            )
