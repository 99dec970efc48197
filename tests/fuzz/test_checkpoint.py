"""Checkpoint loading on damaged checkpoints (issue 19): a truncated or tampered checkpoint
directory or ``trainer.json`` is refused with an error naming the checkpoint, never another
exception, and nothing it holds is executed (see tests/training/test_checkpoint_tampering.py)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import nn

from llmfab.api.training_run import CheckpointSpec
from llmfab.training.components.checkpoint import (
    CheckpointManager,
    IncompatibleCheckpoint,
    parameter_fingerprint,
)
from llmfab.training.components.checkpoint_reader import CorruptCheckpoint
from llmfab.training.components.distributed import DistEnv

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
FILES = (".metadata", "__0_0.distcp", "trainer.json")


def model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    return model, torch.optim.AdamW(model.parameters())


def manager(directory: Path, model: nn.Module) -> CheckpointManager:
    return CheckpointManager(directory, CheckpointSpec(every_steps=1), ENV, parameter_fingerprint(model, "adamw"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, opt = model_and_optimizer()
    model(torch.ones(3, 8)).sum().backward()
    opt.step()
    path = manager(tmp_path_factory.mktemp("ckpt"), model).save(1, model, opt, {"sampler": {"consumed": 8}})
    assert sorted(p.name for p in path.iterdir()) == sorted(FILES)
    return path


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("scratch")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def damage(draw: st.DrawFn) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "replace", "delete", "append", "trainer"]))
        name = draw(st.sampled_from(FILES))
        if kind == "truncate":
            ops.append((kind, (name, draw(st.integers(0, 4000)))))
        elif kind == "flip":
            ops.append((kind, (name, draw(st.integers(0, 1 << 20)), draw(st.integers(1, 255)))))
        elif kind == "replace":
            ops.append((kind, (name, draw(st.binary(max_size=64)))))
        elif kind == "delete":
            ops.append((kind, name))
        elif kind == "append":
            ops.append((kind, (name, draw(st.binary(min_size=1, max_size=64)))))
        else:
            key = draw(st.sampled_from(["step", "fingerprint", "sampler", "worldSize", None]))
            ops.append((kind, (key, draw(json_values))))
    return ops


def apply(path: Path, ops: list[tuple[str, Any]]) -> None:
    for kind, arg in ops:
        if kind == "delete":
            (path / arg).unlink(missing_ok=True)
            continue
        if kind == "trainer":
            key, value = arg
            file = path / "trainer.json"
            try:
                body = json.loads(file.read_text())
            except (ValueError, FileNotFoundError):
                body = {}
            if key is None or not isinstance(body, dict):
                body = value
            else:
                body[key] = value
            file.write_text(json.dumps(body))
            continue
        name = arg[0]
        file = path / name
        data = bytearray(file.read_bytes()) if file.exists() else bytearray()
        if kind == "truncate":
            data = data[: arg[1]]
        elif kind == "flip" and data:
            data[arg[1] % len(data)] ^= arg[2]
        elif kind == "replace":
            data = bytearray(arg[1])
        elif kind == "append":
            data += arg[1]
        file.write_bytes(bytes(data))


@given(ops=damage())
@example(ops=[("truncate", ("__0_0.distcp", 100))])  # found: CheckpointIOError from deep in DCP, no fix named
@example(ops=[("truncate", (".metadata", 10))])
@example(ops=[("replace", (".metadata", b""))])
@example(ops=[("delete", "__0_0.distcp")])
@example(ops=[("trainer", (None, []))])  # found: AttributeError (list.get) on the old reader
@example(ops=[("trainer", ("step", "1"))])  # found: the old reader returned step "1"
@example(ops=[("trainer", ("fingerprint", {"architecture": []}))])  # not the shape llmfab writes
@example(ops=[("replace", ("trainer.json", b"\xff\xfe"))])  # found: UnicodeDecodeError
def test_a_damaged_checkpoint_is_refused_naming_it(pristine: Path, scratch: Path, ops: list[tuple[str, Any]]) -> None:
    directory = Path(tempfile.mkdtemp(dir=scratch))
    path = directory / pristine.name
    shutil.copytree(pristine, path)
    apply(path, ops)
    model, opt = model_and_optimizer()
    try:
        state = manager(directory, model).load(path, model, opt)
    except (CorruptCheckpoint, IncompatibleCheckpoint) as e:
        assert str(path) in str(e) or str(directory) in str(e), str(e)
    else:
        assert isinstance(state, dict) and isinstance(state["step"], int)
    shutil.rmtree(directory)
