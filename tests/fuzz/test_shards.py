"""The token-shard reader on damaged Dataset artifacts (issue 19): truncated or tampered shards,
index files and manifests give a :class:`DataFormatError` naming the file, never another exception,
a hang or an allocation the files cannot back (an index that claims 2^40 documents)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from llmfab.data.shards import DataFormatError, DatasetInfo, token_dtype, write_split

SPLIT_FILES = ("train/shard-00000.bin", "train/shard-00000.idx.npy", "train/shard-00001.bin",
               "train/shard-00001.idx.npy", "val/shard-00000.bin", "val/shard-00000.idx.npy", "manifest.json")


def build(directory: Path) -> None:
    rng = np.random.default_rng(0)
    dtype = token_dtype(300)
    splits = {}
    for split, docs in (("train", 12), ("val", 3)):
        documents = [rng.integers(3, 300, size=int(rng.integers(1, 30))) for _ in range(docs)]
        splits[split] = write_split(directory, split, documents, dtype, eos_id=2, shard_tokens=120)
    manifest = {"kind": "Dataset", "dtype": "uint16", "eosId": 2, "vocabSize": 300, "splits": splits}
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("dataset") / "books"
    build(directory)
    for name in SPLIT_FILES:
        assert (directory / name).exists(), name
    return directory


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("scratch")


def read_everything(directory: Path) -> None:
    info = DatasetInfo.load(directory)
    assert info.vocab_size > 0 and info.eos_id >= 0
    for name in info.manifest["splits"]:
        reader = info.split(name)
        tokens = reader.tokens()
        assert len(tokens) == reader.num_tokens
        docs = list(reader.documents())
        assert sum(len(d) + 1 for d in docs) <= reader.num_tokens + len(docs)


def check(directory: Path) -> None:
    """Read everything; a failure must be a DataFormatError that names a file of the artifact."""
    try:
        read_everything(directory)
    except DataFormatError as e:
        assert str(directory) in str(e), str(e)


def npy_header(shape: tuple[int, ...], dtype: str = "<i8") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


MANIFEST_EDITS: list[tuple[str, Any]] = [
    ("splits.train.shards.0.tokens", 1 << 40), ("splits.train.shards.0.tokens", -1),
    ("splits.train.shards.0.tokens", "12"), ("splits.train.shards.0.file", "../../../etc/passwd"),
    ("splits.train.shards.0.file", "/etc/passwd"), ("splits.train.shards.0.index", "../outside.npy"),
    ("splits.train.shards.0", None), ("splits.train.shards", {}), ("splits.train", []),
    ("splits", None), ("dtype", "float64"), ("dtype", ["uint16"]), ("eosId", "x"), ("eosId", 1 << 70),
    ("vocabSize", None), ("vocabSize", -5), ("splits.train.documents", 1 << 40),
    ("splits.train.shards.0.documents", 1 << 40), ("splits.val.shards.0.index", None),
]


def edit(manifest: Any, dotted: str, value: Any) -> Any:
    *parents, last = dotted.split(".")
    node = manifest
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return manifest


@st.composite
def damage(draw: st.DrawFn) -> list[tuple[str, Any]]:
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "replace", "delete", "manifest", "index"]))
        name = draw(st.sampled_from(SPLIT_FILES))
        if kind == "truncate":
            ops.append((kind, (name, draw(st.integers(0, 300)))))
        elif kind == "flip":
            ops.append((kind, (name, draw(st.integers(0, 400)), draw(st.integers(1, 255)))))
        elif kind == "replace":
            ops.append((kind, (name, draw(st.binary(max_size=200)))))
        elif kind == "delete":
            ops.append((kind, name))
        elif kind == "manifest":
            ops.append((kind, draw(st.sampled_from(MANIFEST_EDITS))))
        else:
            shape = draw(st.sampled_from([(1 << 40,), (3, 4), (), (5,)]))
            dtype = draw(st.sampled_from(["<i8", "<f8", "|O", "<u2"]))
            values = draw(st.lists(st.integers(-(1 << 62), 1 << 62), max_size=6))
            ops.append((kind, (draw(st.sampled_from([n for n in SPLIT_FILES if n.endswith(".npy")])),
                               shape, dtype, values)))
    return ops


def apply(directory: Path, ops: list[tuple[str, Any]]) -> None:
    for kind, arg in ops:
        if kind == "truncate":
            name, size = arg
            path = directory / name
            if path.exists():
                path.write_bytes(path.read_bytes()[:size])
        elif kind == "flip":
            name, pos, mask = arg
            path = directory / name
            if path.exists() and path.stat().st_size:
                data = bytearray(path.read_bytes())
                data[pos % len(data)] ^= mask
                path.write_bytes(bytes(data))
        elif kind == "replace":
            name, data = arg
            (directory / name).write_bytes(data)
        elif kind == "delete":
            (directory / arg).unlink(missing_ok=True)
        elif kind == "manifest":
            path = directory / "manifest.json"
            try:
                manifest = json.loads(path.read_text())
                path.write_text(json.dumps(edit(manifest, *arg)))
            except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError, FileNotFoundError):
                pass  # an earlier edit already broke the structure this one walks
        else:
            name, shape, dtype, values = arg
            body = np.asarray(values, dtype=np.int64).astype(np.dtype(dtype) if dtype != "|O" else np.int64).tobytes()
            (directory / name).write_bytes(npy_header(shape, dtype) + body)


@given(ops=damage())
@example(ops=[("index", ("train/shard-00000.idx.npy", (1 << 40,), "<i8", [0, 5]))])  # 2^40 documents claimed
@example(ops=[("manifest", ("splits.train.shards.0.file", "../../../etc/passwd"))])
@example(ops=[("manifest", ("splits.train.shards.0.tokens", 1 << 40))])
@example(ops=[("truncate", ("train/shard-00000.bin", 7))])  # half a token
@example(ops=[("index", ("train/shard-00000.idx.npy", (5,), "|O", [1, 2]))])  # a pickled index
@example(ops=[("index", ("train/shard-00001.idx.npy", (5,), "<i8", [0, 9, 3, 2, 1 << 40]))])  # not increasing
@example(ops=[("index", ("val/shard-00000.idx.npy", (3, 4), "<i8", list(range(12))))])  # two-dimensional
@example(ops=[("flip", ("train/shard-00000.idx.npy", 63, 1))])  # found: numpy raised TokenError on the header
@example(ops=[("manifest", ("splits", None))])
@example(ops=[("manifest", ("eosId", "x"))])
@example(ops=[("replace", ("manifest.json", b"[1, 2]"))])
def test_a_damaged_dataset_is_refused_naming_the_file(pristine: Path, scratch: Path, ops: list[tuple[str, Any]]) -> None:
    directory = Path(tempfile.mkdtemp(dir=scratch)) / "books"
    shutil.copytree(pristine, directory)
    apply(directory, ops)
    check(directory)
    shutil.rmtree(directory.parent)


def test_the_pristine_dataset_reads(pristine: Path) -> None:
    read_everything(pristine)
