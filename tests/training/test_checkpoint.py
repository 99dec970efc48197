"""Checkpoints: atomic, pruned to keepLast, restored exactly, refused for another model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from llmfab.api.training_run import CheckpointSpec
from llmfab.training.components.checkpoint import (
    CheckpointManager,
    IncompatibleCheckpoint,
    parameter_fingerprint,
)
from llmfab.training.components.distributed import DistEnv

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _model(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(width, width), nn.Linear(width, 2))


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    model(torch.ones(3, model[0].in_features)).sum().backward()
    opt.step()
    opt.zero_grad()


def _manager(directory: Path, model: nn.Module, keep: int = 2) -> CheckpointManager:
    spec = CheckpointSpec(every_steps=1, keep_last=keep)
    return CheckpointManager(directory, spec, ENV, parameter_fingerprint(model, "adamw"))


def test_save_then_load_restores_model_and_optimizer_exactly(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    _train_step(model, opt)
    manager = _manager(tmp_path, model)
    path = manager.save(1, model, opt, {"sampler": {"consumed": 8}})
    _train_step(model, opt)
    expected = [p.detach().clone() for p in model.parameters()]

    fresh = _model()
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state = _manager(tmp_path, fresh).load(path, fresh, fresh_opt)
    assert state["step"] == 1 and state["sampler"] == {"consumed": 8}
    _train_step(fresh, fresh_opt)
    for a, b in zip(fresh.parameters(), expected, strict=True):
        assert torch.equal(a, b)


def test_only_the_last_k_complete_checkpoints_are_kept(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    manager = _manager(tmp_path, model, keep=2)
    for step in (1, 2, 3):
        manager.save(step, model, opt, {})
    assert [p.name for p in manager.complete()] == ["step-00000002", "step-00000003"]
    assert manager.latest() == tmp_path / "step-00000003"


def test_an_interrupted_save_is_never_taken_as_complete_and_is_cleaned_up(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    manager = _manager(tmp_path, model)
    manager.save(1, model, opt, {})
    crashed = tmp_path / "step-00000002.tmp-save"
    crashed.mkdir()
    (crashed / "__0_0.distcp").write_bytes(b"partial")
    half = tmp_path / "step-00000003"  # renamed but without trainer state: not complete
    half.mkdir()
    assert manager.latest() == tmp_path / "step-00000001"
    _manager(tmp_path, model)
    assert not crashed.exists()


def test_a_checkpoint_of_another_model_shape_is_refused_with_the_fix(tmp_path: Path) -> None:
    model = _model(8)
    opt = torch.optim.AdamW(model.parameters())
    path = _manager(tmp_path, model).save(1, model, opt, {})
    other = _model(16)
    with pytest.raises(IncompatibleCheckpoint, match=r"spec.model: parameter 0.bias has shape \[16\] but the checkpoint has \[8\]"):
        _manager(tmp_path, other).load(path, other, torch.optim.AdamW(other.parameters()))


def test_a_checkpoint_of_another_optimizer_is_refused(tmp_path: Path) -> None:
    model = _model()
    path = _manager(tmp_path, model).save(1, model, torch.optim.AdamW(model.parameters()), {})
    manager = CheckpointManager(tmp_path, CheckpointSpec(), ENV, parameter_fingerprint(model, "adafactor"))
    with pytest.raises(IncompatibleCheckpoint, match=r"spec\.optimizer\.type is 'adafactor'"):
        manager.load(path, model, torch.optim.Adafactor(model.parameters()))


def test_async_save_is_published_on_wait(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    _train_step(model, opt)
    manager = CheckpointManager(tmp_path, CheckpointSpec(every_steps=1, async_save=True), ENV,
                                parameter_fingerprint(model, "adamw"))
    manager.save(1, model, opt, {})
    manager.wait()
    assert manager.latest() == tmp_path / "step-00000001"


def test_same_shapes_but_other_heads_is_refused() -> None:
    """8 and 6 heads over hidden 192 have identical tensors; resuming one as the other is wrong."""
    from llmfab.model.transformer import ModelArgs
    from llmfab.training.components.checkpoint import architecture_of, describe_mismatch

    eight = ModelArgs(vocab_size=64, layers=1, hidden=192, heads=8, kv_heads=8, intermediate=256, sharing_groups=1)
    six = ModelArgs(vocab_size=64, layers=1, hidden=192, heads=6, kv_heads=6, intermediate=256, sharing_groups=1)
    model = nn.Linear(2, 2)
    saved = parameter_fingerprint(model, "adamw", architecture_of(eight))
    assert describe_mismatch(saved, parameter_fingerprint(model, "adamw", architecture_of(eight))) is None
    problem = describe_mismatch(saved, parameter_fingerprint(model, "adamw", architecture_of(six)))
    assert problem == "spec.model: heads is 6 but the checkpoint was trained with 8"


def test_ctrl_c_during_a_save_reaches_the_caller_as_keyboard_interrupt(tmp_path: Path, monkeypatch) -> None:
    """DCP wraps every failure in a BaseException; a Ctrl-C mid-save must still be a Ctrl-C."""
    from torch.distributed.checkpoint import FileSystemWriter

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    manager = _manager(tmp_path, model)
    monkeypatch.setattr(FileSystemWriter, "write_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        manager.save(1, model, opt, {})
    assert manager.complete() == []


def test_a_failed_write_is_an_ordinary_exception_naming_the_cause(tmp_path: Path, monkeypatch) -> None:
    from torch.distributed.checkpoint import FileSystemWriter

    from llmfab.training.components.checkpoint import CheckpointIOError

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    manager = _manager(tmp_path, model)
    monkeypatch.setattr(FileSystemWriter, "write_data", full)
    with pytest.raises(CheckpointIOError, match="No space left on device"):
        manager.save(1, model, opt, {})
    assert manager.complete() == []


def test_a_save_after_the_run_was_deleted_refuses_to_recreate_its_directory(tmp_path: Path) -> None:
    """``llmfab delete`` removed the run under a trainer still running (issue 19, item 7): its next
    save must not bring ``checkpoints/`` back for a later run of the same name to resume from."""
    from llmfab.store import delete_artifacts
    from llmfab.training.components.checkpoint import CheckpointIOError

    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    manager = _manager(tmp_path / "runs" / "tiny" / "checkpoints", model)
    manager.save(1, model, opt, {})
    assert delete_artifacts("runs", "tiny", tmp_path) == [tmp_path / "runs" / "tiny"]
    with pytest.raises(CheckpointIOError, match=r"was removed while training.*not recreated"):
        manager.save(2, model, opt, {})
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_failed_save_removes_its_partial_directory_and_lets_go_of_its_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, async_save: bool) -> None:
    """The failed save's ``step-….tmp-save`` and its lock stayed (and its descriptor open) until the
    process exited; the next save forgot them."""
    from torch.distributed.checkpoint import FileSystemWriter

    from llmfab.training.components.checkpoint import CheckpointIOError

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    manager = CheckpointManager(tmp_path, CheckpointSpec(every_steps=1, async_save=async_save), ENV,
                                parameter_fingerprint(model, "adamw"))
    with monkeypatch.context() as patch:
        patch.setattr(FileSystemWriter, "write_data", full)
        with pytest.raises(CheckpointIOError, match="No space left on device"):
            manager.save(1, model, opt, {})
            manager.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    manager.save(2, model, opt, {})
    manager.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002"]
