"""The artifact store: atomic publication, manifests last, crash safety with a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmfab.store import (
    is_complete,
    read_manifest,
    staged_directory,
    write_json_atomic,
    write_manifest,
)
from llmfab.temporaries import remove_dead_temporaries


def test_staged_directory_publishes_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "datasets" / "books"
    with staged_directory(final) as tmp:
        (tmp / "data.bin").write_bytes(b"x" * 10)
        assert not final.exists()
        write_manifest(tmp, {"kind": "Dataset"}, "abc")
    assert is_complete(final, "abc") and not is_complete(final, "other")
    assert (final / "data.bin").read_bytes() == b"x" * 10
    assert [p.name for p in final.parent.iterdir()] == ["books"]


def test_failed_writer_leaves_previous_version_untouched(tmp_path: Path) -> None:
    final = tmp_path / "books"
    with staged_directory(final) as tmp:
        (tmp / "v").write_text("1")
        write_manifest(tmp, {}, "h1")
    with pytest.raises(RuntimeError), staged_directory(final) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("boom")
    assert (final / "v").read_text() == "1" and is_complete(final, "h1")
    assert [p.name for p in tmp_path.iterdir()] == ["books"]


def test_writer_without_manifest_publishes_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="without a manifest"), staged_directory(tmp_path / "x") as tmp:
        (tmp / "a").write_text("a")
    assert not (tmp_path / "x").exists()


def test_sigkilled_writer_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    """Kill a real writer process midway; the next writer neither trusts nor trips over its debris."""
    final = tmp_path / "datasets" / "books"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from llmfab.store import staged_directory, write_manifest
        with staged_directory(Path({str(final)!r})) as tmp:
            (tmp / "shard-0.bin").write_bytes(b"0" * 1000)
            print("writing", flush=True)
            time.sleep(60)
            write_manifest(tmp, {{}}, "h")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists() and read_manifest(final) is None
    debris = list(final.parent.iterdir())
    assert debris and all(".tmp-" in p.name for p in debris)
    with staged_directory(final) as tmp:
        write_manifest(tmp, {"ok": True}, "h2")
    assert is_complete(final, "h2")
    assert [p.name for p in final.parent.iterdir()] == ["books"]


def test_write_json_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": 2})
    assert path.read_text().strip().startswith("{") and '"b": 2' in path.read_text()
    remove_dead_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_manifest_records_creation_time(tmp_path: Path) -> None:
    write_manifest(tmp_path, {"kind": "X"}, "h")
    manifest = read_manifest(tmp_path)
    assert manifest is not None and manifest["specHash"] == "h"
    assert time.strptime(manifest["createdAt"], "%Y-%m-%dT%H:%M:%SZ")


def test_published_directory_is_readable_by_others(tmp_path: Path) -> None:
    final = tmp_path / "model"
    with staged_directory(final) as tmp:
        private = tmp / "weights.bin"
        private.write_bytes(b"w")
        private.chmod(0o600)
        write_manifest(tmp, {}, "h")
    assert final.stat().st_mode & 0o777 == 0o755
    assert (final / "weights.bin").stat().st_mode & 0o044 == 0o044
    assert (final / "manifest.json").stat().st_mode & 0o044 == 0o044


def test_llmfab_delete_removes_artifacts_and_records_but_not_other_resources(tmp_path: Path) -> None:
    """What the operator's clean-up Job runs for ``deletionPolicy: Delete``."""
    for name in ("tiny", "tiny-2"):
        with staged_directory(tmp_path / "runs" / name) as tmp:
            write_manifest(tmp, {"kind": "TrainingRun"})
        for suffix in (".spec.yaml", ".status.json", ".events.jsonl", ".log"):
            (tmp_path / "runs" / f"{name}{suffix}").write_text("{}")
    env = {**os.environ, "LLMFAB_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "llmfab", "delete", "ltr", "tiny"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "tiny-2", "tiny-2.events.jsonl", "tiny-2.log", "tiny-2.spec.yaml", "tiny-2.status.json"]
    again = subprocess.run([sys.executable, "-m", "llmfab", "delete", "trainingrun", "tiny"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "nothing to delete" in again.stdout
    bad = subprocess.run([sys.executable, "-m", "llmfab", "delete", "trainingrunz", "tiny"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown kind 'trainingrunz'" in bad.stderr


def test_a_status_write_does_not_list_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer writes its status every step into a kind's folder of hundreds of entries: looking
    there for dead temporaries each time cost more than the write itself."""
    for i in range(20):
        (tmp_path / f"run-{i}.status.json").write_text("{}")
    listed: list[str] = []
    real_listdir, real_scandir = os.listdir, os.scandir

    def recording_listdir(path=".", *args, **kwargs):  # type: ignore[no-untyped-def]
        listed.append(os.fspath(path))
        return real_listdir(path, *args, **kwargs)

    def recording_scandir(path=".", *args, **kwargs):  # type: ignore[no-untyped-def]
        listed.append(os.fspath(path))
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "listdir", recording_listdir)
    monkeypatch.setattr(os, "scandir", recording_scandir)
    write_json_atomic(tmp_path / "run-7.status.json", {"step": 1})
    assert listed == []
    monkeypatch.undo()
    assert json.loads((tmp_path / "run-7.status.json").read_text()) == {"step": 1}
    assert len(list(tmp_path.iterdir())) == 20
