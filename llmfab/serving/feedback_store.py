"""The human-feedback store: ``services/<name>/feedback.sqlite`` (SQLite in WAL mode, one writer).

Tables: ``prompts`` (what can be shown), ``pairs`` (a prompt, the two completions shown side by side
and the sampling settings that made each), ``votes`` (a | b | tie, an optional edited answer, the
voter, the time; one vote per voter and pair, a second one replaces the first).

One writer: every write takes ``_write_lock`` and runs in ``BEGIN IMMEDIATE … COMMIT`` on the one
write connection. The web app calls the store from a small pool of threads, so a lock around one
connection serialises the writes without a queue thread, and a request answers only after its
commit: a vote the browser saw accepted is on disk (``synchronous=FULL``). ``BEGIN IMMEDIATE`` takes
the database's write lock at the start, so another process writing the same file (``busy_timeout``
waits for it) can never make a transaction fail half-way with "database is locked". Reads open their
own connection: in WAL mode readers neither block the writer nor wait for it. Whatever only reads
a store (``export_preferences``, a RewardModel) opens a :class:`FeedbackReader`, read-only
connections and no writer, and a file without the store's tables is refused
(:class:`NotAFeedbackStore`) rather than read or, by the app, written into.

``export_preferences`` writes the pairs as JSONL ``{prompt, chosen, rejected}``, the RewardModel's
``spec.preferences.path`` format: one line per A/B vote (ties say nothing about which is better and
are skipped); an edited answer is the chosen text.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from llmfab.api.common import utc_now
from llmfab.store import write_text_atomic

Choice = Literal["a", "b", "tie"]
CHOICES: tuple[Choice, ...] = ("a", "b", "tie")
FILENAME = "feedback.sqlite"
BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS prompts (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    prompt_id INTEGER NOT NULL REFERENCES prompts(id),
    completion_a TEXT NOT NULL,
    completion_b TEXT NOT NULL,
    sampling_a TEXT NOT NULL,  -- JSON: model, temperature, top_p, seed, max_tokens
    sampling_b TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie')),
    edited TEXT,
    voter TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (pair_id, voter)
);
CREATE INDEX IF NOT EXISTS votes_by_pair ON votes(pair_id);
"""


class UnknownPair(LookupError):
    """A vote names a pair the store never showed."""


class NotAFeedbackStore(ValueError):
    """A file that is not a llmfab feedback store (garbage, another program's SQLite database)."""


@functools.cache
def _store_columns() -> dict[str, frozenset[str]]:
    """Each table's columns, from ``SCHEMA`` itself (an in-memory database), so the check below
    cannot drift from the tables the store creates."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: frozenset(row[1] for row in db.execute(f"PRAGMA table_info({t})")) for t in tables}
    finally:
        db.close()


def check_store(db: sqlite3.Connection, path: Path) -> None:
    """Raise :class:`NotAFeedbackStore` unless ``db`` has the store's tables and their columns."""
    missing: list[str] = []
    try:
        views = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
        for table, columns in _store_columns().items():
            if table in views:  # table_info describes a view too; a view's query can run without end
                missing.append(f"{table} table (a view stands in its place)")
                continue
            found = {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}
            missing += [table] if not found else [f"{table}.{c}" for c in sorted(columns - found)]
    except sqlite3.DatabaseError as e:  # "file is not a database", a damaged page
        missing.append(f"SQLite database ({e})")
    if missing:
        raise NotAFeedbackStore(
            f"{path}: not a llmfab feedback store (no {', '.join(missing)}); give the {FILENAME} of "
            "an InferenceService with spec.feedback.enabled"
        )


class FeedbackReader:
    """Read-only access to a store, for everything that only reads it (``llmfab feedback export``, a
    RewardModel's ``spec.preferences.inferenceService``): each read opens its own ``mode=ro``
    connection, so a reader can never become a second writer of the file the app writes, and a
    file that is not a feedback store is refused before anything is read from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no feedback store; enable spec.feedback and collect votes first"
            )
        with self._reader() as db:
            check_store(db, path)

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    # Reads.

    def next_prompt(self) -> tuple[int, str]:
        """The prompt shown least often so far (then the oldest)."""
        with self._reader() as db:
            row = db.execute(
                "SELECT p.id, p.text FROM prompts p LEFT JOIN pairs q ON q.prompt_id = p.id "
                "GROUP BY p.id ORDER BY COUNT(q.id), p.id LIMIT 1"
            ).fetchone()
        if row is None:
            raise LookupError(f"{self.path}: no prompts to show")
        return int(row[0]), str(row[1])

    def open_pair(self, voter: str, votes_per_pair: int) -> dict[str, Any] | None:
        """A pair that still wants votes and that ``voter`` has not voted on, oldest first."""
        with self._reader() as db:
            row = db.execute(
                "SELECT q.id FROM pairs q LEFT JOIN votes v ON v.pair_id = q.id GROUP BY q.id "
                "HAVING COUNT(v.id) < ? AND SUM(v.voter = ?) IS NOT 1 ORDER BY q.id LIMIT 1",
                (votes_per_pair, voter),
            ).fetchone()
        return None if row is None else self.pair(int(row[0]))

    def pair(self, pair_id: int) -> dict[str, Any]:
        with self._reader() as db:
            row = db.execute(
                "SELECT q.id, p.text AS prompt, q.completion_a AS a, q.completion_b AS b "
                "FROM pairs q JOIN prompts p ON p.id = q.prompt_id WHERE q.id = ?",
                (pair_id,),
            ).fetchone()
        if row is None:
            raise UnknownPair(f"pair {pair_id} was never shown")
        return dict(row)

    def votes(self) -> list[dict[str, Any]]:
        with self._reader() as db:
            rows = db.execute(
                "SELECT v.id, v.pair_id, v.choice, v.edited, v.voter, v.created_at, p.text AS prompt, "
                "q.completion_a, q.completion_b, q.sampling_a, q.sampling_b FROM votes v "
                "JOIN pairs q ON q.id = v.pair_id JOIN prompts p ON p.id = q.prompt_id ORDER BY v.id"
            ).fetchall()
        return [dict(r) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Progress and agreement: counts, the share of each choice, wins per sampling setting, and
        per pair voted on by several people the share that agrees with the majority."""
        votes = self.votes()
        with self._reader() as db:
            pairs_shown = int(db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0])
            prompts = int(db.execute("SELECT COUNT(*) FROM prompts").fetchone()[0])
        choices = Counter(v["choice"] for v in votes)
        wins: Counter[str] = Counter()
        by_pair: dict[int, list[dict[str, Any]]] = {}
        for v in votes:
            by_pair.setdefault(v["pair_id"], []).append(v)
            if v["choice"] != "tie":
                wins[sampling_label(json.loads(v[f"sampling_{v['choice']}"]))] += 1
        agreement: list[dict[str, Any]] = []
        for pair_id, pv in by_pair.items():
            if len(pv) < 2:
                continue
            counts = Counter(v["choice"] for v in pv)
            row: dict[str, Any] = {"pair": pair_id, "prompt": pv[0]["prompt"], "votes": len(pv)}
            row.update({c: counts[c] for c in CHOICES})
            row["agreement"] = max(counts.values()) / len(pv)
            agreement.append(row)
        total = len(votes)
        return {
            "prompts": prompts,
            "pairsShown": pairs_shown,
            "pairsVoted": len(by_pair),
            "votes": total,
            "voters": len({v["voter"] for v in votes}),
            "share": {c: (choices[c] / total if total else 0.0) for c in CHOICES},
            "winsBySampling": dict(wins.most_common()),
            "meanAgreement": sum(a["agreement"] for a in agreement) / len(agreement) if agreement else None,
            "agreement": agreement,
        }


class FeedbackStore(FeedbackReader):
    """The app's store: the one writer of the file, and the reads the app itself makes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size > 0:
            FeedbackReader(path)  # never add our tables to another program's database
        self._write_lock = threading.Lock()
        # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread=False: the lock
        # above, not the creating thread, owns the connection.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(
                f"{path}: SQLite refused WAL mode (got {mode!r}); put the store on a local filesystem"
            )
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        with self._write_lock:
            self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._write_lock:
            self._conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # Writes.

    def add_prompts(self, texts: Iterable[str]) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO prompts(text) VALUES (?)", [(t,) for t in texts])

    def add_pair(
        self, prompt_id: int, completions: tuple[str, str], samplings: tuple[dict[str, Any], dict[str, Any]]
    ) -> int:
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO pairs(prompt_id, completion_a, completion_b, sampling_a, sampling_b, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (prompt_id, *completions, *(json.dumps(s, sort_keys=True) for s in samplings), utc_now()),
            )
            return int(cur.lastrowid or 0)

    def vote(self, pair_id: int, choice: Choice, voter: str, edited: str | None = None) -> int:
        """Record (or replace) ``voter``'s vote on a pair; returns the vote's row id."""
        if choice not in CHOICES:
            raise ValueError(f"choice: {choice!r} is not one of {', '.join(CHOICES)}")
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is None:
                raise UnknownPair(f"pair {pair_id} was never shown")
            row = db.execute(
                "INSERT INTO votes(pair_id, choice, edited, voter, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(pair_id, voter) DO UPDATE SET choice = excluded.choice, "
                "edited = excluded.edited, created_at = excluded.created_at RETURNING id",
                (pair_id, choice, edited or None, voter, utc_now()),
            ).fetchone()
            return int(row[0])


def sampling_label(sampling: dict[str, Any]) -> str:
    return f"temperature {sampling['temperature']}, top_p {sampling['top_p']}"


def preference_pairs(store: FeedbackReader) -> Iterator[dict[str, str]]:
    """``{prompt, chosen, rejected}`` for every A/B vote; ties skipped, an edit is the chosen text.
    A vote whose texts are not text, or whose choice is none of a, b, tie, is refused by its row id
    (the app never writes one: the file was written by something else, or damaged)."""
    try:
        votes = store.votes()
    except sqlite3.DatabaseError as e:  # a page damaged past the schema that check_store read
        raise NotAFeedbackStore(
            f"{store.path}: not a readable llmfab feedback store (SQLite says: {e})"
        ) from None
    for v in votes:
        texts = {"prompt": v["prompt"], "completion_a": v["completion_a"], "completion_b": v["completion_b"]}
        wrong = [k for k, t in texts.items() if not isinstance(t, str)]
        wrong += ["edited"] if not isinstance(v["edited"], str | None) else []
        if wrong or v["choice"] not in CHOICES:
            what = f"{', '.join(wrong)} not text" if wrong else f"choice {v['choice']!r} not one of a, b, tie"
            raise NotAFeedbackStore(
                f"{store.path}: vote {v['id']} has {what}; the app writes no such vote, so the file was "
                "written by something else or is damaged: export from the service's own store"
            )
        if v["choice"] == "tie":
            continue
        chosen, rejected = (v["completion_a"], v["completion_b"])[:: 1 if v["choice"] == "a" else -1]
        yield {"prompt": v["prompt"], "chosen": v["edited"] or chosen, "rejected": rejected}


def export_preferences(db_path: Path, out: Path) -> int:
    """Write the store's preference pairs to ``out`` (JSONL) and return how many. The store is only
    read (``mode=ro``) and ``out`` is written to a temporary sibling and renamed, so a failed export
    leaves the old ``out`` (or none) and the store as they were."""
    store = FeedbackReader(db_path)
    if out.resolve() == db_path.resolve():
        raise ValueError(f"--out {out}: that is the feedback store itself; give another file")
    pairs = [jsonl_line(pair) for pair in preference_pairs(store)]
    write_text_atomic(out, "".join(pairs))
    return len(pairs)


# Line breaks to str.splitlines() (and so to readers of JSONL that split with it, as
# ``training.jsonl_rows`` does) that json.dumps leaves raw when ensure_ascii=False.
_RAW_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


def jsonl_line(obj: dict[str, str]) -> str:
    """One JSONL line, readable text, and one line to every reader: a completion or an edit holding
    U+2028 (common in text pasted from the web) would otherwise split its line in two."""
    return json.dumps(obj, ensure_ascii=False).translate(_RAW_LINE_BREAKS) + "\n"
