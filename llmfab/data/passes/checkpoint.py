"""Checkpoints of a Dataset build, so a killed build resumes where it was, not from scratch.

A build runs in its staged directory (``datasets/<name>.tmp-<spec hash>``, see
:func:`llmfab.store.staged_directory`), and its checkpoints live in that directory's ``_work/``:
the spill segments (:mod:`~.spill`), the near-duplicate shingle file and ``checkpoint.json``,
written last and atomically, which says how much of them counts. What it records:

- ``clean``: the input files (units: a file of a path source, or a whole Hugging Face source) the
  clean pass had completed: where reading resumes (source, unit, documents taken from that
  source), the identity of every completed unit (path, size, modification time), the closed
  spill segments, the shingles written, every step's counts and audit sample, and the build's
  extra figures. It is written at the end of a unit when ``LLMFAB_DATA_CHECKPOINT_SECONDS`` (60)
  have passed since the last one, and when the pass ends.
- ``boilerplate``: the same for pass 0 (:mod:`~.boilerplate`), whose counts go to a file per
  checkpoint.
- ``selected``: the clean pass and the whole-corpus filters are done; the keep mask is in
  ``_work/keep.npy``.
- ``tokenizer``: the tokenizer files are written (and fsynced) in the staged directory too.

The shard pass is not checkpointed: it starts again (it is the cheapest pass to redo). On resuming,
the checkpoint is used only if it was written by this format, for this exact spec, and every unit
it counts as done is still the same file; otherwise the build starts again from nothing. The
counts, the spill and the samples are then exactly those an uninterrupted build has at that point:
the driver cuts the workers' results at the checkpointed unit's last document, because the reader
runs ahead of it. Everything after depends only on input order, so the artifact is the same bytes
(a test kills ``llmfab data run`` with SIGKILL at several points and compares).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from llmfab.api.common import NOT_OUTPUT_FIELDS
from llmfab.api.dataset import DatasetSpec
from llmfab.data.readers import expand_paths
from llmfab.data.steps import StepCounter
from llmfab.store import write_text_atomic
from llmfab.temporaries import remove_entry

CHECKPOINT = "checkpoint.json"
FORMAT = 1
SECONDS_ENV = "LLMFAB_DATA_CHECKPOINT_SECONDS"
DEFAULT_SECONDS = 60.0
PHASES = ("boilerplate", "clean", "selected", "tokenizer")

Position = tuple[int, int, int]  # (source, unit within it, documents taken from that source)


def spec_digest(spec: DatasetSpec) -> str:
    """A hash of the fields that change the output (as the store's spec hash: a pod given more
    memory after it was killed for lack of it resumes its build)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude=NOT_OUTPUT_FIELDS)
    payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _identity(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}|absent"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def input_units(spec: DatasetSpec, resolve: Callable[[str], Path]) -> list[list[str]]:
    """Per source, the identity of each unit it is read in, in reading order."""
    units: list[list[str]] = []
    for index, source in enumerate(spec.sources):
        if source.huggingface is not None:
            hf = source.huggingface
            units.append([f"{_identity(resolve(hf.path))}|{hf.split}|{hf.name}|{hf.revision}"])
        else:
            units.append([_identity(p) for p in expand_paths(source, f"spec.sources[{index}].path", resolve)])
    return units


def completed_units(units: list[list[str]], position: Position) -> list[str]:
    """The identities of the units before ``position``."""
    source, unit, _ = position
    return [u for s in units[:source] for u in s] + (units[source][:unit] if source < len(units) else [])


@dataclass
class Boundary:
    """The end of a unit, as the reader saw it: documents yielded so far, where reading resumes
    and the read step's counts then."""

    emitted: int
    position: Position
    read: dict[str, Any]


class UnitTracker:
    """The reader's side (a :class:`llmfab.data.readers.ReadProgress`): notes a :class:`Boundary`
    at the end of a unit when a checkpoint is due, for the driver to cut its results at."""

    def __init__(self, start: Position, counter: StepCounter, seconds: float | None = None) -> None:
        self.start = start
        self.position = start
        self.counter = counter
        self.seconds = float(os.environ.get(SECONDS_ENV, DEFAULT_SECONDS)) if seconds is None else seconds
        self.last = time.monotonic()
        self.pending: list[Boundary] = []

    def unit_done(self, source: int, unit: int, taken: int, source_done: bool, emitted: int) -> None:
        self.position = (source + 1, 0, 0) if source_done else (source, unit + 1, taken)
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.last = now
            self.pending.append(Boundary(emitted, self.position, copy.deepcopy(self.counter.state())))

    def final(self, emitted: int) -> Boundary:
        """The boundary after the last unit (reading is over: the live counts are final)."""
        return Boundary(emitted, self.position, self.counter.state())

    def cut(self, table: pa.Table, done: int) -> Iterator[tuple[pa.Table, Boundary | None]]:
        """``table`` (results of the documents after the first ``done``) in pieces, each followed by
        the boundary it ends at, if any."""
        offset = 0
        while self.pending and self.pending[0].emitted <= done + table.num_rows:
            boundary = self.pending.pop(0)
            end = max(boundary.emitted - done, offset)
            yield table.slice(offset, end - offset), boundary
            offset = end
        if offset < table.num_rows:
            yield table.slice(offset), None


class Checkpoints:
    """``_work/checkpoint.json`` of one build: loaded only if it fits the spec and the inputs."""

    def __init__(self, work: Path, spec: DatasetSpec, units: list[list[str]], other_files: tuple[str, ...] = ()) -> None:
        """``other_files``: identities of files besides the inputs that the passes read as they go
        (the URL filter's lists): a change to one makes the checkpoint stale too."""
        self.path = work / CHECKPOINT
        self.digest = hashlib.sha256("\n".join([spec_digest(spec), *other_files]).encode()).hexdigest()
        self.units = units
        self.position: Position = (0, 0, 0)  # of the last checkpoint loaded or saved

    def load(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if state.get("format") != FORMAT or state.get("spec") != self.digest or state.get("phase") not in PHASES:
            return None
        position: Position = (state["position"][0], state["position"][1], state["position"][2])
        if state["inputs"] != completed_units(self.units, position):
            return None  # an input file changed, moved or is gone: its results cannot be trusted
        self.position = position
        return state

    def save(self, phase: str, position: Position | None = None, **fields: Any) -> None:
        """Write the checkpoint (atomically, fsynced); ``position`` defaults to the last one (the
        phases after the clean pass). Keys keep their order: ``stats.json`` is written from
        these dicts and must come out the same bytes."""
        position = self.position = position or self.position
        state = {"format": FORMAT, "spec": self.digest, "phase": phase, "position": list(position),
                 "inputs": completed_units(self.units, position), **fields}
        write_text_atomic(self.path, json.dumps(state, ensure_ascii=False) + "\n")


BUILD_OUTPUTS = ("train", "val", "test", "tokenizer", "tokenizer.model", "stats.json", "removed")


def prepare(out: Path, work: Path, checkpoints: Checkpoints, fresh: bool = False) -> dict[str, Any] | None:
    """The checkpoint to resume from (None: start afresh), with the build directory cleared of
    everything the checkpoint does not vouch for: partial shards, a dead local Ray's directory,
    and, starting afresh, all of ``_work``. Only what a build writes is removed."""
    state = None if fresh else checkpoints.load()
    if state is not None and not _files_present(work, state):
        state = None
    keep = {"tokenizer", "tokenizer.model"} if state is not None and state["phase"] == "tokenizer" else set()
    for name in BUILD_OUTPUTS:
        if name not in keep:
            remove_entry(out / name)
    for ray_dir in out.glob("ray-*"):
        remove_entry(ray_dir)
    if state is None and work.exists():
        for entry in work.iterdir():
            remove_entry(entry)
    return state


def _files_present(work: Path, state: dict[str, Any]) -> bool:
    """Whether the files the checkpoint counts are all there (a checkpoint is written after them,
    so this fails only if someone removed them)."""
    segments = all((work / f"spill-{n:05d}.arrow").is_file() for n in range(state.get("segments", 0)))
    segments &= all((work / f"linekeys-{n:05d}.arrow").is_file() for n in range(state.get("lineKeySegments", 0)))
    segments &= state["phase"] == "boilerplate" or (work / "boilerplate.bin").is_file()
    shingles = work / "shingles.u64"
    enough = not state.get("shingles") or (shingles.is_file() and shingles.stat().st_size >= 8 * state["shingles"])
    mask = state["phase"] in ("boilerplate", "clean") or (work / "keep.npy").is_file()
    return segments and enough and mask


def fsync_tree(*paths: Path) -> None:
    """Flush files to disk before a checkpoint counts them (a lost node, not only a killed process)."""
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
