"""Writers side by side on one store (issue 19, #5): Dataset Jobs share a volume, so one build must
never remove another's temporary, and two writers of one path must never publish half a tree.

The builds are real Dataset builds (small corpora of different sizes), on threads and on processes,
compared byte for byte with the same builds made alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llmfab.store import (
    TMP_MARKER,
    delete_artifacts,
    read_manifest,
    staged_directory,
    write_json_atomic,
    write_manifest,
)
from llmfab.temporaries import remove_dead_temporaries
from llmfab.workload import run_stage
from tests.data.corpus import write_corpus

# The first build is the largest, so it is still running when the smaller ones start beside it.
SIZES = {"large": 240, "small": 40, "medium": 90}


def write_spec(directory: Path, name: str, documents: int) -> Path:
    write_corpus(directory / name, documents=documents, seed=documents)
    body = {"sources": [{"path": f"{name}/corpus.jsonl"}], "tokenizer": {"type": "bpe", "vocabSize": 400},
            "output": {"shardTokens": 20000}}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": "Dataset",
                                    "metadata": {"name": name}, "spec": body}))
    return path


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file of a Dataset artifact by relative path; the manifest without its creation time."""
    out: dict[str, bytes] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name == "manifest.json":
                manifest = json.loads(data)
                manifest.pop("createdAt")
                data = json.dumps(manifest, sort_keys=True).encode()
            out[str(path.relative_to(directory))] = data
    return out


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("specs")
    return {name: write_spec(directory, name, n) for name, n in SIZES.items()}


@pytest.fixture(scope="module")
def solo(specs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Each Dataset built alone, each in its own store."""
    trees = {}
    for name, spec in specs.items():
        home = tmp_path_factory.mktemp(f"solo-{name}")
        out = subprocess.run([sys.executable, "-m", "llmfab", "data", "run", "--spec", str(spec)],
                             env={**os.environ, "LLMFAB_HOME": str(home)}, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        trees[name] = tree_bytes(home / "datasets" / name)
    return trees


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def building(home: Path, name: str) -> bool:
    """Whether ``name``'s build has started writing into its temporary directory."""
    folder = home / "datasets"
    return folder.is_dir() and any(p.is_dir() and any(p.iterdir()) for p in folder.glob(f"{name}{TMP_MARKER}*"))


def check_published(home: Path, solo: dict[str, dict[str, bytes]]) -> None:
    for name, expected in solo.items():
        assert read_manifest(home / "datasets" / name) is not None, name
        assert tree_bytes(home / "datasets" / name) == expected, f"{name} differs from its solo build"
    leftovers = [p.name for p in (home / "datasets").iterdir() if TMP_MARKER in p.name]
    assert leftovers == []


def test_dataset_builds_on_threads_leave_each_other_alone(
    specs: dict[str, Path], solo: dict[str, dict[str, bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The confirmed failure: a second, smaller build started beside a running one deleted its
    staged files (``FileNotFoundError`` on ``tokenizer.model``)."""
    home = tmp_path / "home"
    monkeypatch.setenv("LLMFAB_HOME", str(home))
    codes: dict[str, int | BaseException] = {}

    def build(name: str) -> None:
        try:
            codes[name] = run_stage("data", specs[name])
        except BaseException as e:
            codes[name] = e

    first, *rest = SIZES
    threads = {name: threading.Thread(target=build, args=(name,)) for name in SIZES}
    threads[first].start()
    wait_for(lambda: building(home, first) or first in codes, f"{first}'s build to start writing")
    for name in rest:
        threads[name].start()
    for t in threads.values():
        t.join(timeout=600)
    assert codes == dict.fromkeys(SIZES, 0)
    check_published(home, solo)


def test_dataset_builds_in_processes_leave_each_other_alone(
    specs: dict[str, Path], solo: dict[str, dict[str, bytes]], tmp_path: Path
) -> None:
    """As on a cluster: separate processes (pods) building different Datasets into one volume."""
    home = tmp_path / "home"
    env = {**os.environ, "LLMFAB_HOME": str(home)}
    first, *rest = SIZES
    logs = {name: (tmp_path / f"{name}.log").open("w") for name in SIZES}

    def start(name: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "llmfab", "data", "run", "--spec", str(specs[name])],
                                env=env, stdout=logs[name], stderr=subprocess.STDOUT, text=True)

    procs = {first: start(first)}
    wait_for(lambda: building(home, first) or procs[first].poll() is not None, f"{first}'s build to start writing")
    procs.update({name: start(name) for name in rest})
    codes = {name: proc.wait(timeout=600) for name, proc in procs.items()}
    for f in logs.values():
        f.close()
    assert codes == dict.fromkeys(SIZES, 0), {n: (tmp_path / f"{n}.log").read_text()[-2000:] for n in SIZES}
    check_published(home, solo)


def test_live_writers_temporary_survives_a_cleaner_in_another_process(tmp_path: Path) -> None:
    """A writer in another process holds its temporary; a cleaner removes it only once that writer is
    gone (here killed), and removes nothing of a writer of another name."""
    final = tmp_path / "datasets" / "books"
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from llmfab.store import staged_directory, write_manifest
        with staged_directory(Path({str(final)!r})) as tmp:
            (tmp / "shard-0.bin").write_bytes(b"0" * 1000)
            print(tmp, flush=True)
            sys.stdin.read()
            write_manifest(tmp, {{}}, "h")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    staged = Path(proc.stdout.readline().strip())
    remove_dead_temporaries(final.parent)
    with staged_directory(final) as tmp:  # another writer of the same name: cleans only the dead
        write_manifest(tmp, {"v": 1}, "h1")
    assert (staged / "shard-0.bin").read_bytes() == b"0" * 1000
    proc.stdin.close()  # the writer finishes and publishes: the later whole tree stays
    assert proc.wait(timeout=60) == 0
    manifest = read_manifest(final)
    assert manifest is not None and manifest["specHash"] == "h" and (final / "shard-0.bin").exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["books"]


def read_tree_once(final: Path) -> tuple[dict[str, object], set[str]] | None:
    """The manifest and part contents of ``final`` read through one directory descriptor: one
    tree, even if ``final`` is replaced meanwhile. None while nothing is published."""
    try:
        fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        def read(name: str) -> str:
            f = os.open(name, os.O_RDONLY, dir_fd=fd)
            with os.fdopen(f) as fh:
                return fh.read()
        try:
            return json.loads(read("manifest.json")), {read(f"part-{j}") for j in range(20)}
        except FileNotFoundError:
            # Files go only from a tree that was renamed away first: if ``final`` is still this tree,
            # a published tree lacked a file.
            try:
                still_final = os.path.samestat(os.fstat(fd), os.stat(final))
            except FileNotFoundError:
                still_final = False
            if still_final:
                raise
            return None
    finally:
        os.close(fd)


def test_two_writers_of_one_path_publish_only_whole_trees(tmp_path: Path) -> None:
    """Eight writers of the same resource at once: every tree a reader ever sees is one writer's
    whole tree (manifest and all parts of one round), and no temporary is left behind."""
    final = tmp_path / "runs" / "tiny"
    errors: list[BaseException] = []
    seen: list[tuple[dict[str, object], set[str]]] = []
    done = threading.Event()

    def write(i: int) -> None:
        try:
            for round_ in range(6):
                with staged_directory(final) as tmp:
                    for j in range(20):
                        (tmp / f"part-{j}").write_text(f"{i}-{round_}")
                    write_manifest(tmp, {"writer": i, "round": round_})
        except BaseException as e:
            errors.append(e)

    def read() -> None:
        try:
            while not done.is_set():
                tree = read_tree_once(final)
                if tree is not None:
                    seen.append(tree)
        except BaseException as e:
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    reader.join(timeout=60)
    assert errors == []
    assert len(seen) > 10
    seen.append(read_tree_once(final) or ({}, set()))
    for manifest, parts in seen:
        assert parts == {f"{manifest['writer']}-{manifest['round']}"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["tiny"]


def test_status_writes_beside_a_build_are_not_removed(tmp_path: Path) -> None:
    """Status files (``<name>.status.json``) are written atomically in the same folder as the
    builds; many writers at once never lose a write to another's clean-up."""
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for i in range(200):
                write_json_atomic(tmp_path / f"{name}.status.json", {"i": i})
                if i % 20 == 0:
                    with staged_directory(tmp_path / name) as tmp:
                        write_manifest(tmp, {"i": i})
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(f"r{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"r{k}" for k in range(4)] + [f"r{k}.status.json" for k in range(4)])


def test_delete_removes_a_crashed_writers_temporaries_but_not_a_live_ones(tmp_path: Path) -> None:
    """Only the next writer of a name removed its dead temporaries; after ``llmfab delete`` none
    may come, so a crashed build's tree and lock files stayed forever."""
    kind = tmp_path / "datasets"
    crash = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from llmfab.store import staged_directory, write_text_atomic
        from llmfab.temporaries import claim_temporary
        with staged_directory(Path({str(kind / "books")!r})) as tmp:
            (tmp / "shard-0.bin").write_bytes(b"0" * 1000)
            claim_temporary(Path({str(kind / "books.status.json")!r}))
            os._exit(1)  # as SIGKILL: no clean-up runs
    """)
    assert subprocess.run([sys.executable, "-c", crash], timeout=60).returncode == 1
    with staged_directory(kind / "books-2") as live:  # another resource's build, still running
        write_manifest(live, {}, "h")
        dead = sorted(p.name for p in kind.iterdir() if p.name.startswith("books."))
        assert len(dead) == 3 and all(TMP_MARKER in n for n in dead), dead  # tree, its lock, the status lock
        removed = delete_artifacts("datasets", "books", tmp_path)
        assert sorted(p.name for p in removed) == sorted(n for n in dead if not n.endswith(".lock"))
        assert sorted(p.name for p in kind.iterdir() if p.name.startswith("books.")) == []
        assert live.is_dir()
    assert sorted(p.name for p in kind.iterdir()) == ["books-2"]
