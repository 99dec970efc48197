"""Slow points in the training workload, so that a test can signal it there (tests/local/test_signals.py).

On ``PYTHONPATH`` this runs at the start of every Python process, and does nothing unless
``LLMFAB_TEST_SLOW`` is set, e.g. ``build=2,step=0.2,save=3``: seconds to sleep at the start of
the model build, of every training step and of the first checkpoint write. Each point touches
``$LLMFAB_TEST_MARKS/<point>`` as it starts. The patches go in once ``llmfab.training.loop.trainer`` is
imported, so processes that never train are not slowed down.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

SLOW = {k: float(v) for k, v in (item.split("=") for item in os.environ.get("LLMFAB_TEST_SLOW", "").split(",") if item)}


def _slowed(point: str, fn: Callable[..., Any], once: bool = False) -> Callable[..., Any]:
    calls = []

    def slowed(*args: Any, **kwargs: Any) -> Any:
        if not (once and calls):
            calls.append(point)
            if marks := os.environ.get("LLMFAB_TEST_MARKS"):
                (Path(marks) / point).touch()
            time.sleep(SLOW[point])
        return fn(*args, **kwargs)

    return slowed


def _patch(trainer: ModuleType) -> None:
    if "build" in SLOW:
        trainer.build = _slowed("build", trainer.build)
    if "step" in SLOW:
        trainer.train_step = _slowed("step", trainer.train_step)
    if "save" in SLOW:
        from torch.distributed.checkpoint import FileSystemWriter

        FileSystemWriter.write_data = _slowed("save", FileSystemWriter.write_data, once=True)


class _PatchTrainerOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name != "llmfab.training.loop.trainer":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if SLOW:
    sys.meta_path.insert(0, _PatchTrainerOnImport())
