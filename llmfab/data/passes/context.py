"""What every pass of one Dataset build shares: the spec, the output and work directories, the
engine, the step counts and the extra fields of ``stats.json``.

One object instead of a class holding every pass, so each pass is a module of its own that says
in its signature which results of earlier passes it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmfab.api.dataset import DatasetSpec
from llmfab.data.engine import LocalEngine, RayEngine
from llmfab.data.registry import READ
from llmfab.data.steps import StepStatsBook
from llmfab.status import StatusReporter

WORK_DIR = "_work"


@dataclass
class BuildContext:
    spec: DatasetSpec
    out: Path
    resolve: Callable[[str], Path]
    engine: LocalEngine | RayEngine
    book: StepStatsBook
    reporter: StatusReporter | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # stats.json fields besides the steps

    @property
    def work(self) -> Path:
        """Scratch files between passes and the build's checkpoints; removed when it succeeds."""
        return self.out / WORK_DIR

    def progress(self, **fields: Any) -> None:
        if self.reporter is not None:
            self.reporter.progress(documentsRead=self.book.step(READ).documents_out,
                                   steps=self.book.status(), **fields)
