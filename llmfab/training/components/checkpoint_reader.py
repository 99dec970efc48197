"""Reading a ``torch.distributed.checkpoint`` directory without trusting it (issue 19).

DCP's own loader is code execution for whoever can write the checkpoint: ``FileSystemReader``
reads ``.metadata`` with plain ``pickle.load`` and ``DefaultLoadPlanner`` reads every non-tensor
value (the optimizer's hyper-parameters) with ``torch.load(weights_only=False)``; the metadata also
names, per tensor, a file path relative to the checkpoint and a byte range, which DCP opens as
given (``../../`` included). Checkpoints live on a shared volume that every Job of the namespace
mounts, so :func:`load_checkpoint` reads them with:

- ``.metadata`` through an unpickler that builds only DCP's metadata classes, ``torch.Size``,
  dtypes and layouts (:data:`ALLOWED_GLOBALS`), anything else an error naming the file;
- ``.metadata`` and every storage entry a regular file of the directory, not a symlink (which
  would lead a read outside it) nor a FIFO or device (a read that hangs or never ends); each
  entry's byte range inside its file;
- non-tensor values through ``torch.load(weights_only=True)``.

Any damage (truncated, tampered, missing files) becomes :class:`CorruptCheckpoint` naming the path
and the fix, never a traceback from deep inside DCP.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import stat
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

METADATA_FILE = ".metadata"
MAX_METADATA_BYTES = 1 << 30
"""A metadata file larger than this is refused before it is read (a model's is kilobytes to a few MB)."""

ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("pathlib", "PosixPath"),
    ("collections", "OrderedDict"),
}


class CorruptCheckpoint(ValueError):
    """A checkpoint directory that is incomplete, damaged or not what DCP writes."""


def _fix(directory: Path) -> str:
    return f"delete {directory} to resume from an older checkpoint (or start over)"


def _enum_member(cls: Any, name: Any) -> Enum:
    """What ``getattr(cls, name)`` means in metadata: a member of one of DCP's own enums, by name.

    Python 3.11.0-3.11.4 pickle an Enum member as ``getattr(EnumClass, "NAME")`` (later versions as
    ``EnumClass(value)``), so Debian 12's python 3.11.2 writes the memory format of every tensor
    that way. A general ``getattr`` would reach any attribute of the classes allowed here (their
    ``__subclasses__``, a function's ``__globals__``): code execution, so only this is allowed.
    """
    if (isinstance(cls, type) and issubclass(cls, Enum) and cls.__module__ == dcp_metadata.__name__
            and isinstance(name, str) and name in cls.__members__):
        return cls[name]
    raise pickle.UnpicklingError(f"getattr({getattr(cls, '__name__', type(cls).__name__)}, {name!r}) is not a "
                                 "member of a checkpoint metadata enum")


class _MetadataUnpickler(pickle.Unpickler):
    """Builds the classes a DCP ``.metadata`` holds and nothing else (no ``os.system``, no ``eval``)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if (module, name) in (("builtins", "getattr"), ("__builtin__", "getattr")):
            return _enum_member
        found = getattr(dcp_metadata, name, None)
        # Only the classes the module defines: it also imports Enum, typing.Any and Sequence.
        if module == dcp_metadata.__name__ and isinstance(found, type) and found.__module__ == module:
            return found
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which checkpoint metadata never holds")


def _not_regular(mode: int) -> str:
    what = "a symlink" if stat.S_ISLNK(mode) else "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
    return f"is {what}, not a regular file of the checkpoint (DCP writes only regular files)"


def _read_regular_file(file: Path, directory: Path) -> bytes:
    """``file``'s bytes if it is a regular file (not a symlink) of at most :data:`MAX_METADATA_BYTES`.

    Opened without following a symlink and without blocking (a FIFO would), checked on the open
    descriptor, read at most one byte past the cap (the file may grow after the check).
    """
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptCheckpoint(f"{file}: {_not_regular(stat.S_IFLNK)}; {_fix(directory)}") from None
        raise
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CorruptCheckpoint(f"{file}: {_not_regular(mode)}; {_fix(directory)}")
        data = f.read(MAX_METADATA_BYTES + 1)
    if len(data) > MAX_METADATA_BYTES:
        raise CorruptCheckpoint(f"{file}: over {MAX_METADATA_BYTES} bytes is too large for checkpoint metadata; "
                                f"{_fix(directory)}")
    return data


def read_metadata(directory: Path, file: Path | None = None) -> dcp_metadata.Metadata:
    """The checkpoint's ``.metadata``, unpickled safely and checked against the directory."""
    file = file or directory / METADATA_FILE
    try:
        metadata = _MetadataUnpickler(io.BytesIO(_read_regular_file(file, directory))).load()
    except CorruptCheckpoint:
        raise
    except OSError as e:
        raise CorruptCheckpoint(f"{file}: unreadable ({e.strerror or e}); {_fix(directory)}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            ImportError, OverflowError, RecursionError, MemoryError, UnicodeDecodeError) as e:
        raise CorruptCheckpoint(f"{file}: not checkpoint metadata ({type(e).__name__}: {e}); "
                                f"{_fix(directory)}") from None
    if not isinstance(metadata, dcp_metadata.Metadata) or not isinstance(metadata.storage_data, dict):
        raise CorruptCheckpoint(f"{file}: holds a {type(metadata).__name__}, not checkpoint metadata; "
                                f"{_fix(directory)}")
    sizes: dict[str, int] = {}
    for index, info in metadata.storage_data.items():
        if not isinstance(info, _StorageInfo) or not isinstance(info.relative_path, str):
            raise CorruptCheckpoint(f"{file}: storage entry {index!r} is not a file location; {_fix(directory)}")
        name = info.relative_path
        if not name or name != os.path.basename(name) or name in (".", "..") or name == METADATA_FILE:
            raise CorruptCheckpoint(f"{file}: storage entry names {name!r}, not a file of {directory}; "
                                    f"{_fix(directory)}")
        if name not in sizes:
            try:
                st = os.stat(directory / name, follow_symlinks=False)
            except OSError:
                raise CorruptCheckpoint(f"{directory / name}: missing (the checkpoint's metadata lists it); "
                                        f"{_fix(directory)}") from None
            if not stat.S_ISREG(st.st_mode):
                raise CorruptCheckpoint(f"{directory / name}: {_not_regular(st.st_mode)}; {_fix(directory)}")
            sizes[name] = st.st_size
        offset, length = info.offset, info.length
        if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset
                and 0 <= length and offset + length <= sizes[name]):
            raise CorruptCheckpoint(f"{directory / name}: {sizes[name]} bytes, but the metadata reads bytes "
                                    f"[{offset}, {offset}+{length}); the file is truncated; {_fix(directory)}")
    return metadata


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with :func:`read_metadata` in place of its ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        directory = Path(self.path)
        rank = kwargs.get("rank")
        metadata = read_metadata(directory, Path(self._get_metadata_path(rank)))
        storage_meta = metadata.storage_meta or dcp_metadata.StorageMeta()
        storage_meta.load_id = self.load_id
        metadata.storage_meta = storage_meta
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner with non-tensor values read by ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)  # the parent's, but without weights_only=False
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def load_checkpoint(state: dict[str, Any], directory: Path) -> None:
    """Fill ``state`` in place from the checkpoint in ``directory`` (DCP's ``load``, read safely)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CorruptCheckpoint(f"{directory}: not a checkpoint directory")
    read_metadata(directory)  # the named error, before DCP wraps it in its own
    try:
        dcp_load(state, storage_reader=SafeFileSystemReader(str(directory)), planner=SafeLoadPlanner())
    except CheckpointException as e:
        causes = [f[0] if isinstance(f, tuple) else f for f in e.failures.values()]
        for cause in causes:
            if isinstance(cause, KeyboardInterrupt):
                raise cause from e
        detail = "; ".join(f"{type(c).__name__}: {c}" for c in causes) or str(e)
        raise CorruptCheckpoint(f"{directory}: cannot be read ({detail}); {_fix(directory)}") from None
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, KeyError, AssertionError) as e:
        raise CorruptCheckpoint(f"{directory}: cannot be read ({type(e).__name__}: {e}); {_fix(directory)}") from None
