"""``llmfab train run --spec FILE``: one TrainingRun, on one process or under torchrun.

It refuses what no objective supports and hands the run to the objective ``spec.objective`` names
(``objectives.MODULES``, imported by name: only the one a run asks for loads). How a run trains in
this process or starts torchrun on itself, the environment that reads, and what a crash leaves
behind are in ``loop/launcher.py``.
"""

from __future__ import annotations

from llmfab.api.training_run import TrainingRun, TrainingRunSpec
from llmfab.cards import refresh_card
from llmfab.errors import StageNotSupported
from llmfab.training.objectives import MODULES, objective_module
from llmfab.workload import WorkloadContext


def run(ctx: WorkloadContext) -> None:
    resource = ctx.resource
    assert isinstance(resource, TrainingRun)
    refuse_unsupported(resource.spec)
    module = objective_module(resource.spec.objective)
    assert module is not None  # refused above
    module.run(ctx, resource.spec)


def refuse_unsupported(spec: TrainingRunSpec) -> None:
    """Fields that validate but that this trainer cannot honour yet are refused, never ignored."""
    module = objective_module(spec.objective)
    if module is None:
        raise StageNotSupported(
            f"spec.objective: {spec.objective!r} is not implemented by this trainer yet; use {', '.join(MODULES)}"
        )
    module.refuse_unsupported(spec)


def up_to_date(ctx: WorkloadContext) -> None:
    """A finished run with an unchanged spec: its card is written again, with ``spec.release`` as it is now."""
    assert isinstance(ctx.resource, TrainingRun)
    refresh_card(ctx.out_dir / "model", ctx.reporter.current(), release=ctx.resource.spec.release)
