"""Pass 0 (only with ``normalize.removeBoilerplateLines``): the lines found in many documents.

A line is boilerplate only relative to the whole corpus, so this pass reads every source once to
count in how many documents each normalised line occurs, before the clean pass can start. It
resumes like the clean pass (:mod:`~.checkpoint`): at each checkpoint the counts gathered since
the last one go to a file of their own (``_work/linekeys-<n>.arrow``, keys and counts), and a
resumed pass sums those files and reads on from the checkpointed input file. Its result, the
keys of the boilerplate lines, is kept in ``_work/boilerplate.bin`` for the clean pass and any
resumption of it.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmfab.data.cleaning import LineKeysBatch
from llmfab.data.passes.checkpoint import Checkpoints, Position, UnitTracker, fsync_tree
from llmfab.data.passes.context import BuildContext
from llmfab.data.readers import read_documents
from llmfab.data.registry import READ
from llmfab.data.steps import StepCounter

KEY_BYTES = 8
RESULT = "boilerplate.bin"


def _segment(work: Path, n: int) -> Path:
    return work / f"linekeys-{n:05d}.arrow"


def _save_counts(path: Path, counts: collections.Counter[bytes]) -> None:
    keys = sorted(counts)
    table = pa.table({"key": pa.array(keys, pa.binary(KEY_BYTES)), "count": pa.array([counts[k] for k in keys],
                                                                                     pa.int64())})
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        writer.write_table(table)
    fsync_tree(path)


def _load_counts(path: Path) -> collections.Counter[bytes]:
    with pa.memory_map(str(path), "r") as source:
        table = pa.ipc.open_file(source).read_all()
    return collections.Counter(dict(zip(table.column("key").to_pylist(), table.column("count").to_pylist(),
                                        strict=True)))


def count_lines(ctx: BuildContext, checkpoints: Checkpoints, state: dict[str, Any] | None) -> frozenset[bytes]:
    """Keys of the lines found in at least ``boilerplateMinDocuments`` documents; ``state``, a
    ``boilerplate`` checkpoint to resume from."""
    counts: collections.Counter[bytes] = collections.Counter()
    segments = 0
    position: Position = (0, 0, 0)
    if state is not None:
        segments = state["lineKeySegments"]
        position = (state["position"][0], state["position"][1], state["position"][2])
        for n in range(segments):
            counts.update(_load_counts(_segment(ctx.work, n)))
    # pass 1 reads the documents again and counts them then: this reading's counts are not kept
    tracker = UnitTracker(position, StepCounter(READ))
    documents = read_documents(ctx.spec, ctx.resolve, tracker.counter, progress=tracker)
    since: collections.Counter[bytes] = collections.Counter()
    done = 0
    for table in ctx.engine.map(LineKeysBatch(ctx.spec), documents):
        for part, boundary in tracker.cut(table, done):
            for keys in part.column("keys").to_pylist():
                since.update(keys)
            done += part.num_rows
            if boundary is not None:
                _save_counts(_segment(ctx.work, segments), since)
                segments += 1
                counts.update(since)
                since.clear()
                checkpoints.save("boilerplate", boundary.position, lineKeySegments=segments,
                                 book=ctx.book.state(), extra=ctx.extra)
    counts.update(since)
    threshold = ctx.spec.normalize.boilerplate_min_documents
    lines = frozenset(k for k, c in counts.items() if c >= threshold)
    ctx.extra["boilerplateLines"] = len(lines)
    return lines


def boilerplate_lines(ctx: BuildContext, checkpoints: Checkpoints, state: dict[str, Any] | None
                      ) -> frozenset[bytes]:
    """Pass 0's result: read back once computed (``state`` of the clean pass), else counted (or
    its counting resumed) and kept, with a ``clean`` checkpoint that starts the next pass."""
    path = ctx.work / RESULT
    if state is not None and state["phase"] == "clean":
        data = path.read_bytes() if path.exists() else b""
        return frozenset(data[i: i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES))
    lines: frozenset[bytes] = frozenset()
    if ctx.spec.normalize.remove_boilerplate_lines:
        lines = count_lines(ctx, checkpoints, state)
    path.write_bytes(b"".join(sorted(lines)))
    fsync_tree(path)
    checkpoints.save("clean", (0, 0, 0), segments=0, shingles=0, book=ctx.book.state(), extra=ctx.extra)
    return lines
