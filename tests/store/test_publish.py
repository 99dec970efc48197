"""Publishing a tree over an older one (staged_directory): the name is never missing, and the old
tree is deleted after the publish lock is let go."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmfab import rename_exchange, temporaries
from llmfab.store import TMP_MARKER, read_manifest, staged_directory, write_manifest


def publish(final: Path, version: int, files: int = 3) -> None:
    with staged_directory(final) as tmp:
        for i in range(files):
            (tmp / f"part-{i}").write_text(f"{version}")
        write_manifest(tmp, {"version": version})


def test_a_writer_killed_right_after_its_first_rename_leaves_the_name_in_place(tmp_path: Path) -> None:
    """Two renames (old away, new in) killed between them left no ``final``: the old tree was then
    only a temporary, removed by the next writer, and the artifact was lost."""
    final = tmp_path / "datasets" / "books"
    publish(final, 1)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import llmfab.store as store
        final = Path({str(final)!r})

        def killed_after(step):
            def wrapper(a, b, *args, **kwargs):
                result = step(a, b, *args, **kwargs)
                if final in (Path(a), Path(b)):
                    os.kill(os.getpid(), signal.SIGKILL)
                return result
            return wrapper

        os.replace = killed_after(os.replace)
        if hasattr(store, "exchange"):
            store.exchange = killed_after(store.exchange)
        with store.staged_directory(final) as tmp:
            (tmp / "part-0").write_text("2")
            store.write_manifest(tmp, {{"version": 2}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    manifest = read_manifest(final)
    assert manifest is not None, sorted(p.name for p in final.parent.iterdir())
    assert (final / "part-0").read_text() == str(manifest["version"])
    publish(final, 3)  # the next writer removes the killed one's debris
    assert sorted(p.name for p in final.parent.iterdir()) == ["books"]


def test_without_an_atomic_exchange_the_two_renames_still_publish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A system or filesystem (NFS) without renameat2's exchange: the old way, and no debris."""
    monkeypatch.setattr(rename_exchange, "_renameat2", None)
    final = tmp_path / "runs" / "tiny"
    for version in range(3):
        publish(final, version)
        assert (final / "part-2").read_text() == str(version)
    assert sorted(p.name for p in final.parent.iterdir()) == ["tiny"]


def test_exchange_swaps_two_trees_and_refuses_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").touch()
    (tmp_path / "b").write_text("b")
    assert rename_exchange.exchange(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_text() == "b" and (tmp_path / "b" / "x").exists()
    with pytest.raises(FileNotFoundError):
        rename_exchange.exchange(tmp_path / "a", tmp_path / "c")


@pytest.mark.parametrize("atomic", [True, False], ids=["exchange", "two-renames"])
def test_the_old_tree_is_deleted_after_the_publish_lock_is_let_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, atomic: bool) -> None:
    """Deleting a large old tree can take minutes; other writers of the name must not wait on it.
    It is deleted under a temporary name, with the new tree already in place."""
    if not atomic:
        monkeypatch.setattr(rename_exchange, "_renameat2", None)
    final = tmp_path / "runs" / "tiny"
    publish_lock_file = final.with_name(f"tiny{TMP_MARKER}publish.lock")
    publish(final, 1)
    seen: list[tuple[str, bool, object]] = []
    real_rmtree = shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        manifest = read_manifest(final)
        seen.append((Path(path).name, os.path.lexists(publish_lock_file), manifest and manifest["version"]))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(temporaries.shutil, "rmtree", recording_rmtree)
    publish(final, 2)
    assert len(seen) == 1
    name, lock_held, published = seen[0]
    assert name.startswith(f"tiny{TMP_MARKER}") and not lock_held and published == 2
    assert sorted(p.name for p in final.parent.iterdir()) == ["tiny"]


def test_delete_removes_the_tree_after_the_publish_lock_is_let_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmfab.store import delete_artifacts

    final = tmp_path / "runs" / "tiny"
    publish(final, 1)
    held: list[bool] = []
    real_rmtree = shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        held.append(os.path.lexists(final.with_name(f"tiny{TMP_MARKER}publish.lock")))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(temporaries.shutil, "rmtree", recording_rmtree)
    assert delete_artifacts("runs", "tiny", tmp_path) == [final]
    assert held == [False]
    assert list(final.parent.iterdir()) == []
