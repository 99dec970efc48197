"""Resumable checkpoints: ``torch.distributed.checkpoint`` of model + optimizer, plus trainer state.

Layout: ``<run>/checkpoints/step-00000042/`` holds DCP's shard files and ``.metadata`` and
``trainer.json`` (step, tokens, data sampler, and a fingerprint of the model and optimizer). Each
is written as ``step-….tmp-save`` (rank 0 holds its lock, :mod:`llmfab.temporaries`) and renamed
once every rank has finished, so a directory without ``.tmp-`` in its name is complete; a
temporary whose writer is gone is removed, a live one never. Checkpoints are read through
:mod:`llmfab.training.components.checkpoint_reader`, which does not execute what a tampered one holds.

DCP stores each tensor with its global shape and the shards' offsets, so a checkpoint written by N
processes loads into M (resharding), and one written with FSDP loads without it.

On SIGTERM (a pod being deleted or preempted) the trainer stops at the next step boundary and
:meth:`CheckpointManager.save_on_sigterm` saves that step when it fits
:data:`SIGTERM_SAVE_BUDGET_SECONDS`.

The checkpoint directory is made once, when the manager starts. A save finds it gone only when
someone removed the run (``llmfab delete``, the clean-up of ``deletionPolicy: Delete``) under a
trainer still running; the save then refuses rather than recreate ``checkpoints/``, from which a
later run of the same name would resume. The operator stops a resource's pods before its clean-up
starts (llmfab/operator/deletion.py): this is the second line, for writers it cannot see. It is a
check before the write, not a lock: a removal during the write itself can still leave a partial
``step-….tmp-save``, which no reader trusts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_saver import async_save, save

from llmfab.api.training_run import CheckpointSpec
from llmfab.store import write_json_atomic
from llmfab.temporaries import (
    TMP_MARKER,
    Temporary,
    TemporaryInUse,
    claim_temporary,
    publish_lock,
    remove_dead_temporaries,
    remove_tree,
)
from llmfab.training.components.checkpoint_reader import CorruptCheckpoint, load_checkpoint
from llmfab.training.components.distributed import DistEnv, broadcast_flag

STEP_DIR = re.compile(r"^step-(\d+)$")
TRAINER_STATE = "trainer.json"

SIGTERM_SAVE_BUDGET_SECONDS = 20.0
"""After SIGTERM, how long a training process may go on before it stops: to finish the step (or
save) in progress and write one more checkpoint. The save is made only if the seconds already spent
since the signal plus the expected duration of the save (this process's last save, else the state's
size at :data:`ASSUMED_WRITE_BYTES_PER_SECOND`) fit in it; past it SIGTERM raises wherever the code
is. Kubernetes' default ``terminationGracePeriodSeconds`` is 30 s: the remaining 10 s are for the
status write, torchrun's shutdown and the exit. A pod with a longer grace period still saves
nothing that takes longer than this."""

ASSUMED_WRITE_BYTES_PER_SECOND = 100e6
"""Write speed assumed for a save before one has been timed: a slow network volume (local NVMe
writes 10-30x faster)."""


class IncompatibleCheckpoint(ValueError):
    """The checkpoint was written for another model shape or optimizer."""


class CheckpointIOError(RuntimeError):
    """DCP failed to write or read a checkpoint on some rank."""


@contextlib.contextmanager
def plain_exceptions() -> Iterator[None]:
    """Turn DCP's ``CheckpointException`` back into what the caller can handle.

    DCP wraps every failure, Ctrl-C included, in ``CheckpointException``, which derives from
    ``BaseException``: an ``except Exception`` does not see it and a ``KeyboardInterrupt`` handler
    does not either, so a Ctrl-C during a save would end the process without reporting it.
    """
    try:
        yield
    except CheckpointException as e:
        causes = [failure[0] if isinstance(failure, tuple) else failure for failure in e.failures.values()]
        for cause in causes:
            if isinstance(cause, KeyboardInterrupt):  # Ctrl-C, or signals.Terminated: as it was
                raise cause from e
        detail = "; ".join(f"rank {rank}: {type(c).__name__}: {c}" for rank, c in zip(e.failures, causes, strict=True))
        raise CheckpointIOError(f"checkpoint I/O failed ({detail or e})") from e


# Fields of ModelArgs that change what the saved tensors mean (dropout, init and context length don't).
ARCHITECTURE_KEYS = ("vocab_size", "layers", "hidden", "heads", "kv_heads", "intermediate", "rope_theta",
                     "norm_eps", "tie_embeddings", "sharing_groups")


def architecture_of(args: Any) -> dict[str, Any]:
    return {key: getattr(args, key) for key in ARCHITECTURE_KEYS}


def parameter_fingerprint(model: nn.Module, optimizer_type: str, architecture: dict[str, Any] | None = None) -> dict[str, Any]:
    """Names and shapes of the parameters (before any wrapping), the architecture and the optimizer.

    Shapes alone are not enough: ``heads`` or ``ropeTheta`` change what the same tensors mean, so a
    checkpoint trained with 8 heads must not be resumed as a 6-head model.
    """
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    return {"parameters": shapes, "optimizer": optimizer_type, "architecture": architecture or {}}


def describe_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    if saved.get("optimizer") != current["optimizer"]:
        return (
            f"spec.optimizer.type is {current['optimizer']!r} but the checkpoint holds "
            f"{saved.get('optimizer')!r} optimizer state"
        )
    old_arch, new_arch = saved.get("architecture", {}), current.get("architecture", {})
    for key in sorted(set(old_arch) | set(new_arch)):
        if old_arch.get(key) != new_arch.get(key):
            return (
                f"spec.model: {key} is {new_arch.get(key)!r} but the checkpoint was trained with "
                f"{old_arch.get(key)!r}"
            )
    old, new = saved.get("parameters", {}), current["parameters"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            return (
                f"spec.model: parameter {name} has shape {new.get(name)} but the checkpoint has "
                f"{old.get(name)} (the model shape or the Dataset's vocabulary changed)"
            )
    return None


def complete_checkpoints(directory: Path) -> dict[int, Path]:
    """step -> directory of every complete checkpoint (DCP metadata and trainer state both written)."""
    found: dict[int, Path] = {}
    for entry in directory.iterdir() if directory.is_dir() else []:
        m = STEP_DIR.match(entry.name)
        if m and (entry / TRAINER_STATE).is_file() and (entry / ".metadata").is_file():
            found[int(m.group(1))] = entry
    return found


def read_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer.json`` of checkpoint ``path``, checked: an object with an integer ``step`` and,
    when present, a fingerprint of the expected shape; :class:`CorruptCheckpoint` naming the file."""
    file = path / TRAINER_STATE
    fix = f"delete {path} to resume from an older checkpoint (or start over)"
    try:
        body = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise CorruptCheckpoint(f"{file}: unreadable ({e.strerror or e}); {fix}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptCheckpoint(f"{file}: not JSON ({e}); {fix}") from None
    if not isinstance(body, dict):
        raise CorruptCheckpoint(f"{file}: holds a JSON {type(body).__name__}, not an object; {fix}")
    step = body.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CorruptCheckpoint(f"{file}: step is {step!r}, not a non-negative integer; {fix}")
    fingerprint = body.get("fingerprint", {})
    if not (isinstance(fingerprint, dict) and all(
            isinstance(fingerprint.get(key, {}), dict) for key in ("parameters", "architecture"))):
        raise CorruptCheckpoint(f"{file}: fingerprint is not what llmfab writes; {fix}")
    return body


class CheckpointManager:
    def __init__(
        self, directory: Path, spec: CheckpointSpec, env: DistEnv, fingerprint: dict[str, Any]
    ) -> None:
        self.directory, self.spec, self.env, self.fingerprint = directory, spec, env, fingerprint
        self._last_save_time = time.monotonic()
        self.saved_step: int | None = None  # the newest step saved or loaded (a background save included)
        self.last_save_seconds: float | None = None  # how long this process's last save took
        self._pending: tuple[Any, Path, Path, dict[str, Any]] | None = None
        self._async_group = None
        if spec.async_save and env.distributed:
            # Background writes must not share a communicator with the training step's collectives.
            self._async_group = dist.new_group(backend="gloo")
        self._temporary: Temporary | None = None  # rank 0's lock on the save being written
        if env.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            remove_dead_temporaries(directory, unlocked_too=True)
        self._barrier()

    def _barrier(self) -> None:
        if self.env.distributed:
            dist.barrier()

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return [path for _, path in sorted(complete_checkpoints(self.directory).items())]

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def due(self, step: int) -> bool:
        """Whether to save after ``step``; all ranks agree (the time rule is rank 0's clock)."""
        by_steps = self.spec.every_steps is not None and step % self.spec.every_steps == 0
        if self.spec.every_minutes is None:
            return by_steps
        by_time = time.monotonic() - self._last_save_time >= self.spec.every_minutes * 60
        return by_steps or broadcast_flag(by_time, self.env)

    def save(self, step: int, model: nn.Module, optimizer: Any, trainer_state: dict[str, Any]) -> Path:
        """Write ``step-N`` (collective); with ``asyncSave`` the write finishes in the background."""
        self.wait()
        if not broadcast_flag(self.directory.is_dir(), self.env):
            raise CheckpointIOError(
                f"{self.directory} was removed while training (the run was deleted, e.g. by `llmfab delete` or "
                f"deletionPolicy: Delete); step {step} is not saved and the directory is not recreated"
            )
        final = self.directory / f"step-{step:08d}"
        if self.env.is_main:
            try:
                self._temporary = claim_temporary(final, "save")
            except TemporaryInUse as e:
                raise CheckpointIOError(f"{e}: another trainer of this run is saving the same step; "
                                        "stop it before starting this one") from None
        tmp = final.with_name(f"{final.name}{TMP_MARKER}save")
        try:
            if self._temporary is not None:
                self._temporary.path.mkdir(mode=0o755)
            self._barrier()
            model_state, optim_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optim": optim_state}
            body = {**trainer_state, "step": step, "fingerprint": self.fingerprint, "worldSize": self.env.world_size}
            started = self._last_save_time = time.monotonic()
            with plain_exceptions():
                if self.spec.async_save:
                    future = async_save(state, checkpoint_id=str(tmp), process_group=self._async_group)
                    if isinstance(future, Future):  # times the write itself, however late wait() comes
                        future.add_done_callback(
                            lambda _: setattr(self, "last_save_seconds", time.monotonic() - started))
                    self._pending = (future, tmp, final, body)
                else:
                    save(state, checkpoint_id=str(tmp))
        except BaseException:
            self._discard_temporary()
            raise
        self.saved_step = step
        if not self.spec.async_save:
            self._publish(tmp, final, body)
            self.last_save_seconds = time.monotonic() - started
        return final

    def save_on_sigterm(self, step: int, waited: float, model: nn.Module, optimizer: Any,
                        trainer_state: dict[str, Any]) -> tuple[Path | None, str]:
        """At the step boundary after SIGTERM (collective): save ``step`` if steps were taken since
        the newest checkpoint (a preempted run would redo them) and the save fits
        :data:`SIGTERM_SAVE_BUDGET_SECONDS` with the ``waited`` seconds already spent; a background
        save in flight is finished either way. Return the new checkpoint or None, and what was done."""
        if self.saved_step == step:
            self.wait()
            return None, f"step {step} was already checkpointed"
        expected = self.expected_save_seconds(model, optimizer)
        if not broadcast_flag(waited + expected <= SIGTERM_SAVE_BUDGET_SECONDS, self.env):
            self.wait()
            return None, (f"no checkpoint of step {step}: {waited:.1f} s since SIGTERM plus a ~{expected:.1f} s "
                          f"save exceeds the {SIGTERM_SAVE_BUDGET_SECONDS:.0f} s budget")
        started = time.monotonic()
        path = self.save(step, model, optimizer, trainer_state)
        self.wait()
        return path, f"saved {path.name} in {time.monotonic() - started:.1f} s"

    def expected_save_seconds(self, model: nn.Module, optimizer: Any) -> float:
        """This process's last save duration, else its share of the state at the assumed speed."""
        if self.last_save_seconds is not None:
            return self.last_save_seconds
        tensors = [*model.state_dict().values(), *(v for s in optimizer.state.values() for v in s.values())]
        size = sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        return size / self.env.world_size / ASSUMED_WRITE_BYTES_PER_SECOND

    def wait(self) -> None:
        """Finish a background save, if one is running, and publish it."""
        if self._pending is not None:
            future, tmp, final, body = self._pending
            self._pending = None
            try:
                with plain_exceptions():
                    future.result()
            except BaseException:
                self._discard_temporary()
                raise
            self._publish(tmp, final, body)

    def _discard_temporary(self) -> None:
        """After a failed save: remove its partial ``step-….tmp-save`` and let go of its lock, rather
        than keep both (and a descriptor) until the process exits or the next save forgets them."""
        temporary, self._temporary = self._temporary, None
        if temporary is not None:
            temporary.discard()

    def _publish(self, tmp: Path, final: Path, body: dict[str, Any]) -> None:
        self._barrier()  # every rank's shard is on disk
        if self.env.is_main:
            try:
                write_json_atomic(tmp / TRAINER_STATE, body)
                with publish_lock(final):  # a half-removed old step-N never keeps its name
                    remove_tree(final)
                    os.replace(tmp, final)
            except BaseException:
                self._discard_temporary()
                raise
            temporary, self._temporary = self._temporary, None
            if temporary is not None:
                temporary.release()
            for old in self.complete()[: -self.spec.keep_last]:
                with publish_lock(old):
                    remove_tree(old)
        self._barrier()

    def load(self, path: Path, model: nn.Module, optimizer: Any) -> dict[str, Any]:
        """Restore model and optimizer from ``path`` (any world size); return the trainer state."""
        body = read_trainer_state(path)
        problem = describe_mismatch(body.get("fingerprint", {}), self.fingerprint)
        if problem:
            raise IncompatibleCheckpoint(
                f"{problem}; the checkpoints in {self.directory} belong to another model. Restore the "
                f"old spec, give the TrainingRun a new name, or delete {self.directory} to start over"
            )
        model_state, optim_state = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_state, "optim": optim_state}
        load_checkpoint(state, path)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self._last_save_time = time.monotonic()
        self.saved_step = int(body["step"])
        return body
