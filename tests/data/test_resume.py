"""A killed `llmfab data run` resumes from its checkpoints and ends with the same bytes.

The build is a real ``python -m llmfab data run`` subprocess, SIGKILLed at several points (after
some input files, after a later file, after the clean pass, during the shard pass), each time
resumed by the next run; the artifact is compared byte for byte with an uninterrupted build's.
A completed input file is overwritten (same size, same modification time) after the first kill:
if the resumed build read it again, its output would differ.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmfab.store import read_manifest
from llmfab.workload import run_stage

from .corpus import write_corpus
from .test_workload import write_spec

REPO = Path(__file__).resolve().parents[2]
FILES = 10
KILL_DEADLINE_S = 120


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The generated corpus split over ``FILES`` JSONL files, a few documents with PII."""
    monkeypatch.setenv("LLMFAB_HOME", str(tmp_path / "home"))
    write_corpus(tmp_path / "whole", documents=400, seed=5)
    lines = (tmp_path / "whole" / "corpus.jsonl").read_text().splitlines()
    for n in range(0, len(lines), 25):
        record = json.loads(lines[n])
        record["text"] += f"\nWrite to editor{n}@example.net or visit 8.8.{n % 200}.8 for more."
        lines[n] = json.dumps(record)
    out = tmp_path / "src" / "parts"
    out.mkdir(parents=True)
    per = -(-len(lines) // FILES)
    for i in range(FILES):
        (out / f"part-{i:02d}.jsonl").write_text("".join(x + "\n" for x in lines[i * per:(i + 1) * per]))
    return out


def artifact_bytes(directory: Path) -> dict[str, bytes]:
    files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
    manifest = json.loads(files.pop("manifest.json"))
    for varying in ("createdAt", "name", "specHash"):
        manifest.pop(varying)
    files["manifest.json"] = json.dumps(manifest, sort_keys=True).encode()
    return files


def checkpoint(datasets: Path, name: str) -> dict[str, Any] | None:
    for path in datasets.glob(f"{name}.tmp-*/_work/checkpoint.json"):
        try:
            state: dict[str, Any] = json.loads(path.read_text())
            return state
        except (OSError, ValueError):
            return None
    return None


def run_and_kill(spec: Path, when: Callable[[Path], bool], datasets: Path) -> None:
    """Start the build, SIGKILL it as soon as ``when(staged directory)`` holds."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLMFAB_DATA_CHECKPOINT_SECONDS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "llmfab", "data", "run", "--spec", str(spec)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + KILL_DEADLINE_S
        while time.monotonic() < deadline and proc.poll() is None:
            staged = [p for p in datasets.glob("killed.tmp-*") if p.is_dir()]
            if staged and when(staged[0]):
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def resumes(datasets: Path, name: str) -> int:
    """How many ``Resumed`` events the builds of ``name`` have written."""
    try:
        lines = (datasets / f"{name}.events.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if '"Resumed"' in line)


def units_done(staged: Path, phase: str = "clean") -> int:
    """Input files the checkpoint counts as done in ``phase``; more than all once past it."""
    try:
        state = json.loads((staged / "_work" / "checkpoint.json").read_text())
    except (OSError, ValueError):
        return -1
    order = ("boilerplate", "clean", "selected", "tokenizer")
    if state["phase"] == phase:
        return len(state["inputs"])
    return FILES + 1 if order.index(state["phase"]) > order.index(phase) else -1


@pytest.mark.slow
def test_killed_build_resumes_from_completed_files_to_identical_bytes(parts: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    datasets = home / "datasets"
    common: dict[str, Any] = {"sources": [{"path": "src/parts"}], "engine": {"workers": 1},
                              "audit": {"samplesPerReason": 4, "maxCharacters": 300}}
    assert run_stage("data", write_spec(tmp_path, name="whole", **common)) == 0
    killed = write_spec(tmp_path, name="killed", **common)

    landed: list[tuple[str, int]] = []

    def kill_at(when: Callable[[Path], bool]) -> None:
        # Not before this run has said it resumes: where the last kill came late (a loaded
        # machine), ``when`` may already hold for the checkpoint this run starts from.
        run_and_kill(killed, lambda staged: resumes(datasets, "killed") >= len(landed) and when(staged), datasets)
        assert read_manifest(datasets / "killed") is None, "the build finished before the kill"
        state = checkpoint(datasets, "killed")
        assert state is not None
        landed.append((state["phase"], len(state["inputs"])))

    kill_at(lambda staged: units_done(staged) >= 2)
    # A file the checkpoint counts as done is never read again: garble it, keeping size and mtime.
    done_file = parts / "part-00.jsonl"
    st = done_file.stat()
    done_file.write_bytes(b" " * (st.st_size - 1) + b"\n")
    os.utime(done_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    kill_at(lambda staged: units_done(staged) >= 6)
    kill_at(lambda staged: units_done(staged) > FILES)  # the clean pass is over
    kill_at(lambda staged: any((staged / split).is_dir() for split in ("train", "val", "test")))
    assert landed[0][0] == "clean" and 2 <= landed[0][1] < FILES, landed
    assert [n for _, n in landed] == sorted(n for _, n in landed), landed  # it moved on each time

    assert run_stage("data", killed) == 0
    assert artifact_bytes(datasets / "killed") == artifact_bytes(datasets / "whole")
    assert not list(datasets.glob("killed.tmp-*"))
    events = [json.loads(x) for x in (datasets / "killed.events.jsonl").read_text().splitlines()]
    resumed = [e["message"] for e in events if e["reason"] == "Resumed"]
    assert len(resumed) == 4 and f"{landed[0][1]} of {FILES} input files done" in resumed[0], resumed
    stats = json.loads((datasets / "killed" / "stats.json").read_text())
    pii = next(s for s in stats["steps"] if s["name"] == "pii")
    assert pii["counted"]["email"] >= 10 and pii["counted"]["ip"] >= 10


@pytest.mark.slow
def test_a_build_killed_while_counting_boilerplate_lines_resumes_that_pass(parts: Path, tmp_path: Path) -> None:
    datasets = tmp_path / "home" / "datasets"
    common: dict[str, Any] = {"sources": [{"path": "src/parts"}], "engine": {"workers": 1},
                              "normalize": {"removeBoilerplateLines": True, "boilerplateMinDocuments": 3}}
    for part in sorted(parts.iterdir()):  # a footer in every document: boilerplate to find
        lines = [json.loads(x) for x in part.read_text().splitlines()]
        part.write_text("".join(json.dumps({**r, "text": r["text"] + "\nPrinted by the Example Press."}) + "\n"
                                for r in lines))
    assert run_stage("data", write_spec(tmp_path, name="whole", **common)) == 0
    killed = write_spec(tmp_path, name="killed", **common)
    run_and_kill(killed, lambda staged: units_done(staged, "boilerplate") >= 3, datasets)
    state = checkpoint(datasets, "killed")
    assert state is not None and state["phase"] == "boilerplate" and 3 <= len(state["inputs"]) < FILES, state
    assert run_stage("data", killed) == 0
    assert artifact_bytes(datasets / "killed") == artifact_bytes(datasets / "whole")
    assert json.loads((datasets / "whole" / "stats.json").read_text())["boilerplateLines"] >= 1
    assert "(boilerplate): " in (datasets / "killed.events.jsonl").read_text()


@pytest.mark.slow
def test_changed_input_or_spec_starts_afresh(parts: Path, tmp_path: Path) -> None:
    datasets = tmp_path / "home" / "datasets"
    spec = write_spec(tmp_path, name="killed", sources=[{"path": "src/parts"}], engine={"workers": 1})
    run_and_kill(spec, lambda staged: units_done(staged) >= 3, datasets)
    before = checkpoint(datasets, "killed")
    assert before is not None and before["phase"] == "clean"
    (parts / "part-00.jsonl").write_text((parts / "part-00.jsonl").read_text() + "\n")  # a done file changed
    changed = write_spec(tmp_path, name="killed", sources=[{"path": "src/parts"}], engine={"workers": 1},
                         tokenizer={"type": "bpe", "vocabSize": 420})
    old = [p.name for p in datasets.glob("killed.tmp-*") if p.is_dir()]
    assert run_stage("data", changed) == 0
    events = (datasets / "killed.events.jsonl").read_text()
    assert "Resumed" not in events  # another spec: the old partial build was removed, not resumed
    assert not [p for p in datasets.iterdir() if p.name in old]
    run_and_kill(spec, lambda staged: units_done(staged) >= 3, datasets)
    (parts / "part-01.jsonl").write_text((parts / "part-01.jsonl").read_text() + "\n")
    assert run_stage("data", spec) == 0
    events = (datasets / "killed.events.jsonl").read_text()
    assert "Resumed" not in events  # same spec, but a completed input file changed: from scratch
