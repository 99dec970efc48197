"""Staged directories keyed by a spec hash: a killed writer's work is continued by the next writer
with the same key, removed by a writer with another key, and never touched by a live one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmfab.store import read_manifest, staged_directory, write_manifest


def killed_writer(final: Path, key: str) -> Path:
    """A real process that starts a keyed staged directory, writes a file and is SIGKILLed."""
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from llmfab.store import staged_directory
        with staged_directory(Path({str(final)!r}), resume_key={key!r}) as tmp:
            (tmp / "partial").write_text("done so far")
            (tmp.parent / "ready").write_text("")
            time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.monotonic() + 60
    while not (final.parent / "ready").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (final.parent / "ready").unlink()
    return final.with_name(f"{final.name}.tmp-{key}")


def test_next_writer_with_the_same_key_continues_in_the_killed_writers_directory(tmp_path: Path) -> None:
    final = tmp_path / "datasets" / "books"
    left = killed_writer(final, "aaaa")
    assert (left / "partial").read_text() == "done so far" and read_manifest(final) is None
    with staged_directory(final, resume_key="aaaa") as tmp:
        assert tmp == left and (tmp / "partial").read_text() == "done so far"
        write_manifest(tmp, {"kind": "Dataset"})
    assert (final / "partial").exists() and sorted(p.name for p in final.parent.iterdir()) == ["books"]


def test_a_writer_with_another_key_removes_the_stale_partial_work(tmp_path: Path) -> None:
    final = tmp_path / "datasets" / "books"
    left = killed_writer(final, "aaaa")
    with staged_directory(final, resume_key="bbbb") as tmp:
        assert tmp.name.endswith("bbbb") and not (tmp / "partial").exists()
        assert not left.exists()
        write_manifest(tmp, {"kind": "Dataset"})
    assert not (final / "partial").exists()


def test_a_stopped_writer_keeps_its_work_and_a_failed_one_does_not(tmp_path: Path) -> None:
    final = tmp_path / "books"
    with pytest.raises(KeyboardInterrupt), staged_directory(final, resume_key="k") as tmp:
        (tmp / "partial").write_text("x")
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM before a pod's SIGKILL
    assert (tmp / "partial").exists() and read_manifest(final) is None
    with pytest.raises(RuntimeError), staged_directory(final, resume_key="k") as again:
        assert (again / "partial").exists()
        raise RuntimeError("bad input")
    assert not again.exists()
    with pytest.raises(KeyboardInterrupt), staged_directory(final) as unkeyed:
        raise KeyboardInterrupt
    assert not unkeyed.exists()  # nothing resumes an unkeyed build: it is removed as before


def test_a_live_writer_of_the_same_key_is_built_beside(tmp_path: Path) -> None:
    final = tmp_path / "books"
    with staged_directory(final, resume_key="k") as first:
        (first / "mine").write_text("1")
        with staged_directory(final, resume_key="k") as second:
            assert second != first and not (second / "mine").exists()
            write_manifest(second, {"kind": "Dataset", "writer": 2})
        assert (first / "mine").exists()
        write_manifest(first, {"kind": "Dataset", "writer": 1})
    assert read_manifest(final)["writer"] == 1  # type: ignore[index]
    assert sorted(p.name for p in final.parent.iterdir()) == ["books"]
