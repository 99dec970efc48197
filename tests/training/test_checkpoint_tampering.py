"""A checkpoint on the shared volume is input: a tampered one is refused with the path and the fix,
and nothing in it runs (issue 19). DCP's own loader unpickles ``.metadata`` and every non-tensor
value without restriction and opens whatever file the metadata names."""

from __future__ import annotations

import enum
import io
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

from llmfab.api.training_run import CheckpointSpec
from llmfab.training.components.checkpoint import CheckpointManager, parameter_fingerprint
from llmfab.training.components.checkpoint_reader import CorruptCheckpoint, _MetadataUnpickler
from llmfab.training.components.distributed import DistEnv

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


class Payload:
    """Unpickling this creates ``marker``: what an attacker's ``os.system`` would do, observably."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def saved(tmp_path: Path) -> tuple[CheckpointManager, Path, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(3, 8)).sum().backward()
    opt.step()
    manager = CheckpointManager(tmp_path / "ckpt", CheckpointSpec(every_steps=1), ENV, parameter_fingerprint(model, "adamw"))
    return manager, manager.save(1, model, opt, {}), model, opt


def metadata_of(path: Path) -> Any:
    return pickle.loads((path / ".metadata").read_bytes())


def test_pickled_code_in_metadata_is_not_run(tmp_path: Path) -> None:
    manager, path, model, opt = saved(tmp_path)
    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CorruptCheckpoint, match=r"\.metadata: not checkpoint metadata .*refers to posix\.mkdir"):
        manager.load(path, model, opt)
    assert not marker.exists()


def test_pickled_code_in_a_non_tensor_value_is_not_run(tmp_path: Path) -> None:
    """The optimizer's hyper-parameters are stored as pickled bytes; a value pointing at a file
    of the attacker's is read with ``weights_only=True``."""
    manager, path, model, opt = saved(tmp_path)
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    (path / "evil.distcp").write_bytes(buffer.getvalue())
    metadata = metadata_of(path)
    byte_entries = [k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)]
    assert byte_entries
    for index, info in metadata.storage_data.items():
        if index.fqn in byte_entries:
            info.relative_path, info.offset, info.length = "evil.distcp", 0, len(buffer.getvalue())
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CorruptCheckpoint, match=str(path)):
        manager.load(path, model, opt)
    assert not marker.exists()


def test_metadata_naming_a_file_outside_the_checkpoint_is_refused(tmp_path: Path) -> None:
    manager, path, model, opt = saved(tmp_path)
    outside = tmp_path / "outside.distcp"
    outside.write_bytes((path / "__0_0.distcp").read_bytes())
    metadata = metadata_of(path)
    for info in metadata.storage_data.values():
        info.relative_path = "../../outside.distcp"
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CorruptCheckpoint, match=r"storage entry names '\.\./\.\./outside\.distcp', not a file of"):
        manager.load(path, model, opt)


def test_a_truncated_shard_is_named_with_the_fix(tmp_path: Path) -> None:
    manager, path, model, opt = saved(tmp_path)
    shard = path / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptCheckpoint, match=rf"{shard}: 100 bytes, .* truncated; delete {path} to resume"):
        manager.load(path, model, opt)


def test_a_symlinked_metadata_file_is_refused(tmp_path: Path) -> None:
    """A link would lead the read outside the directory (or to /dev/zero, a FIFO: no end)."""
    manager, path, model, opt = saved(tmp_path)
    outside = tmp_path / "outside.metadata"
    os.replace(path / ".metadata", outside)
    (path / ".metadata").symlink_to(outside)
    with pytest.raises(CorruptCheckpoint, match=r"\.metadata: is a symlink, not a regular file"):
        manager.load(path, model, opt)


def test_a_fifo_as_metadata_is_refused_without_hanging(tmp_path: Path) -> None:
    manager, path, model, opt = saved(tmp_path)
    (path / ".metadata").unlink()
    os.mkfifo(path / ".metadata")
    with pytest.raises(CorruptCheckpoint, match=r"\.metadata: is a FIFO, socket or device"):
        manager.load(path, model, opt)


def test_a_storage_entry_that_is_a_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    """The range check alone measured the link, not its target: a link whose target path is
    longer than the entry's bytes passed, and DCP read the file outside."""
    manager, path, model, opt = saved(tmp_path)
    metadata = metadata_of(path)
    byte_entries = {k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata)}
    shard = (path / "__0_0.distcp").read_bytes()
    info = next(i for ix, i in metadata.storage_data.items() if ix.fqn in byte_entries)
    moved = shard[info.offset : info.offset + info.length]  # one pickled value, about 1 KiB, copied outside
    info.relative_path, info.offset = "link.distcp", 0
    (tmp_path / "outside.distcp").write_bytes(moved)
    padding = "./" * (len(moved) // 2 + 1)  # the link's own size (its target's length) covers every range
    (path / "link.distcp").symlink_to(f"{tmp_path}/{padding}outside.distcp")
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(CorruptCheckpoint, match=r"link\.distcp: is a symlink, not a regular file"):
        manager.load(path, model, opt)


def test_metadata_may_build_only_the_classes_dcp_defines() -> None:
    """The metadata module also imports ``Enum`` (whose call builds new classes) and typing names."""
    module = "torch.distributed.checkpoint.metadata"
    unpickler = _MetadataUnpickler(io.BytesIO(b""))
    for name in ("Enum", "Sequence", "Any"):
        with pytest.raises(pickle.UnpicklingError, match=rf"{module}\.{name}, which"):
            unpickler.find_class(module, name)
    assert unpickler.find_class(module, "Metadata") is Metadata


class _EnumByName(pickle.Pickler):
    """Pickles Enum members as Python 3.11.0-3.11.4 do (Debian 12's 3.11.2): ``getattr(cls, "NAME")``."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, enum.Enum):
            return getattr, (type(obj), obj.name)
        return NotImplemented


def test_metadata_written_by_python_3_11_2_loads(tmp_path: Path) -> None:
    """Such a python wrote every checkpoint's tensor memory formats this way, and resume refused them."""
    manager, path, model, opt = saved(tmp_path)
    buffer = io.BytesIO()
    _EnumByName(buffer, protocol=2).dump(metadata_of(path))
    assert b"getattr" in buffer.getvalue()
    (path / ".metadata").write_bytes(buffer.getvalue())
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    manager.load(path, model, opt)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())


class _Reach:
    """``getattr(torch.Size, "__mro__")``: the first step of a getattr chain to code execution."""

    def __reduce__(self) -> tuple[Any, ...]:
        return getattr, (torch.Size, "__mro__")


def test_getattr_in_metadata_reaches_only_checkpoint_enum_members(tmp_path: Path) -> None:
    manager, path, model, opt = saved(tmp_path)
    (path / ".metadata").write_bytes(pickle.dumps(_Reach(), protocol=2))
    with pytest.raises(CorruptCheckpoint, match=r"getattr\(Size, '__mro__'\) is not a member of a checkpoint "
                                                r"metadata enum"):
        manager.load(path, model, opt)
