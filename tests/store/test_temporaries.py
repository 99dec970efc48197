"""The locks that mark a writer alive (llmfab.temporaries): what this process holds stays its own."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmfab import temporaries
from llmfab.temporaries import LOCK_SUFFIX, claim_temporary, publish_lock, remove_dead_temporaries


def test_a_lock_reached_by_another_spelling_is_never_opened_by_its_own_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On NFS, flock is a POSIX lock, which a process's own second open and close of the file drops:
    a cleaner in the writer's process must recognise the lock however its folder is spelt."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    temp = claim_temporary(real / "books")
    opened: list[str] = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(os.fspath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.chdir(tmp_path)
    try:
        for spelling in (tmp_path / "link", Path("real"), Path("link"), real):
            assert remove_dead_temporaries(spelling) == []
        assert [p for p in opened if p.endswith(LOCK_SUFFIX)] == []
        assert temp.lock.exists()
    finally:
        temp.release()


def test_publish_locks_of_paths_no_longer_published_are_forgotten(tmp_path: Path) -> None:
    """One per checkpoint step: a long run must not keep a lock for every step it ever saved."""
    before = len(temporaries._thread_locks)
    for step in range(50):
        with publish_lock(tmp_path / f"step-{step:08d}"):
            assert len(temporaries._thread_locks) == before + 1
    assert len(temporaries._thread_locks) == before
