"""The training side of stopping, in-process: when a SIGTERM checkpoint is made, and a write that a
stop broke inside torch is reported as the stop. Whole processes being signalled:
tests/local/test_signals.py."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from llmfab import signals
from llmfab.training.components.checkpoint import SIGTERM_SAVE_BUDGET_SECONDS
from llmfab.workload import run_stage

from .test_checkpoint import _manager, _model, _train_step

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def test_sigterm_saves_the_steps_since_the_last_checkpoint_when_the_save_fits(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    _train_step(model, opt)
    manager = _manager(tmp_path, model, keep=5)
    manager.save(1, model, opt, {})
    assert manager.last_save_seconds is not None and manager.last_save_seconds < SIGTERM_SAVE_BUDGET_SECONDS

    saved, done = manager.save_on_sigterm(1, 0.0, model, opt, {})
    assert saved is None and done == "step 1 was already checkpointed"

    _train_step(model, opt)
    saved, done = manager.save_on_sigterm(2, 0.5, model, opt, {})
    assert saved == tmp_path / "step-00000002" and done.startswith("saved step-00000002")
    assert manager.latest() == saved


def test_sigterm_keeps_the_last_checkpoint_when_a_save_would_not_fit_the_budget(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    manager = _manager(tmp_path, model)
    manager.save(1, model, opt, {})
    _train_step(model, opt)
    late = SIGTERM_SAVE_BUDGET_SECONDS - manager.expected_save_seconds(model, opt) + 1  # seconds since SIGTERM
    saved, done = manager.save_on_sigterm(2, late, model, opt, {})
    assert saved is None and "exceeds the 20 s budget" in done
    assert [p.name for p in manager.complete()] == ["step-00000001"]


def test_before_any_save_the_expected_duration_comes_from_the_state_size(tmp_path: Path) -> None:
    model = _model(width=1000)  # ~1M fp32 parameters: 4 MB, plus AdamW's 8 MB after a step
    opt = torch.optim.AdamW(model.parameters())
    _train_step(model, opt)
    manager = _manager(tmp_path, model)
    assert manager.expected_save_seconds(model, opt) == pytest.approx(12e6 / 100e6, rel=0.01)


def test_a_write_that_ctrl_c_broke_inside_torch_is_reported_as_interrupted(
    home: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in a Ctrl-C test: the KeyboardInterrupt raised inside torch's checkpoint writer came
    out as ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598``."""
    from torch.distributed.checkpoint import FileSystemWriter

    def broken_by_ctrl_c(*args, **kwargs):  # type: ignore[no-untyped-def]
        signals._state.signum = signal.SIGINT  # what the handler records as it raises
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(signals._state, "signum", None)
    monkeypatch.setattr(FileSystemWriter, "write_data", broken_by_ctrl_c)
    assert run_stage("train", write_spec()) == 130
    status = json.loads((home / "runs" / "tiny-run.status.json").read_text())
    assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == "Interrupted"
