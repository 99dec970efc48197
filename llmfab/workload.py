"""``llmfab <stage> run --spec FILE``: the one entrypoint of every container image and local process.

This module owns what every stage shares: validating the spec (the same path as ``llmfab
validate``), the no-op check against the manifest's spec hash, phase transitions through the
:class:`StatusReporter`, and turning failures into a clear message and an exit code. A stage
module only implements ``run(ctx)``.

Exit codes: 0 done (or already up to date), 1 failed, 2 invalid spec, 3 a dependency is not ready,
130 interrupted (SIGINT), 143 terminated (SIGTERM; ``llmfab.signals``).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from llmfab.api import KINDS, ValidationFailed, parse_resource
from llmfab.api.common import Phase, Resource
from llmfab.api.loading import read_yaml_documents
from llmfab.errors import DependencyNotReady, StageNotSupported, WorkloadError
from llmfab.gpu_energy import report_pod_energy
from llmfab.signals import exit_code, signal_of, stop_reason, stopping
from llmfab.stages import STAGES, is_primary, owns_phase, stage_available
from llmfab.status import StatusReporter, reporter_for
from llmfab.store import artifact_dir, artifact_root, is_complete, read_manifest, resource_dir, spec_hash

SOURCE_DIR_ANNOTATION = "llmfab.dev/source-dir"

__all__ = ["DependencyNotReady", "WorkloadContext", "WorkloadError", "load_spec_file", "run_stage"]


@dataclass
class WorkloadContext:
    resource: Resource
    reporter: StatusReporter
    root: Path
    out_dir: Path
    spec_hash: str
    force: bool = False

    @property
    def spec_dir(self) -> Path:
        """Directory that relative paths in the spec are resolved against."""
        return Path(self.resource.metadata.annotations.get(SOURCE_DIR_ANNOTATION, "."))

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.spec_dir / p).resolve()

    def dependency(self, kind: str, name: str) -> Path:
        """Artifact directory of a referenced resource; raise DependencyNotReady if incomplete."""
        cls = KINDS[kind]
        directory = artifact_dir(cls.ARTIFACT_DIR, name, self.root)
        if read_manifest(directory) is None:
            raise DependencyNotReady(
                f"{self.resource.key}: waiting for {kind}/{name}: it has no complete artifact in "
                f"{directory}; apply it (or run `llmfab up` on a file that contains it)"
            )
        return directory


def load_spec_file(path: Path) -> Resource:
    docs = [d for d in read_yaml_documents(path) if d is not None]
    if len(docs) != 1:
        raise ValidationFailed([f"{path}: --spec takes a file with exactly one resource, found {len(docs)}"])
    res = parse_resource(docs[0], str(path))
    res.metadata.annotations.setdefault(SOURCE_DIR_ANNOTATION, str(path.parent.resolve()))
    return res


def _stage_function(stage: str) -> tuple[Callable[[WorkloadContext], None], bool]:
    module = importlib.import_module(STAGES[stage].module)
    return module.run, getattr(module, "SKIP_IF_COMPLETE", True)


def _up_to_date_hook(stage: str) -> Callable[[WorkloadContext], None] | None:
    """The stage module's ``up_to_date(ctx)``, if it has one: what a no-op run still does (write
    the model card again, whose ``spec.release`` is not part of the spec hash)."""
    hook = getattr(importlib.import_module(STAGES[stage].module), "up_to_date", None)
    return hook if callable(hook) else None


def unsupported_stage_message(stage: str) -> str:
    kinds = " and ".join(STAGES[stage].kinds)
    return (
        f"`llmfab {stage} run` ({kinds}) is not supported by this version of llmfab yet: "
        f"its code ({STAGES[stage].module}) is not part of this installation"
    )


def run_stage(stage: str, spec_file: Path, force: bool = False) -> int:
    """Run one stage on one resource; return the process exit code."""
    try:
        resource = load_spec_file(spec_file)
    except (ValidationFailed, OSError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    accepted = STAGES[stage].kinds
    if resource.KIND not in accepted:
        print(
            f"error: `llmfab {stage} run` takes {' or '.join(accepted)}, not {resource.KIND}", file=sys.stderr
        )
        return 2
    reporter = reporter_for(resource)
    if not stage_available(stage):
        message = unsupported_stage_message(stage)
        if owns_phase(stage, resource.KIND):
            reporter.phase(Phase.FAILED, StageNotSupported.reason, message)
        print(f"error: {resource.key}: {message}", file=sys.stderr)
        return 2
    root = artifact_root()
    out_dir = resource_dir(resource, root)
    wanted = spec_hash(resource)
    fn, skip_if_complete = _stage_function(stage)
    if skip_if_complete and not force and is_primary(stage, resource.KIND) and is_complete(out_dir, wanted):
        print(f"{resource.key}: up to date ({out_dir}); nothing to do (use --force to rebuild)")
        if (hook := _up_to_date_hook(stage)) is not None:
            hook(WorkloadContext(resource, reporter, root, out_dir, wanted, force))
        reporter.phase(Phase.SUCCEEDED, "UpToDate", "artifacts match the spec", artifactPath=str(out_dir))
        return 0
    ctx = WorkloadContext(resource, reporter, root, out_dir, wanted, force)
    with report_pod_energy(reporter.patch):
        return _execute(stage, fn, ctx)


def _execute(stage: str, fn: Callable[[WorkloadContext], None], ctx: WorkloadContext) -> int:
    """Run the stage function; every way out reports a final phase and gives an exit code."""
    resource, reporter, out_dir = ctx.resource, ctx.reporter, ctx.out_dir
    primary = is_primary(stage, resource.KIND)
    fails_resource = owns_phase(stage, resource.KIND)
    label = stage.capitalize()
    try:  # from the first "Running" on, every way out reports a final phase
        if primary:
            reporter.phase(Phase.RUNNING, "Started", f"{stage} started")
        else:
            # eval/quantize around a resource's own stage: events, and the phase where it owns it.
            reporter.event(f"{label}Started", f"{stage} started")
            if fails_resource:
                reporter.phase(Phase.RUNNING, f"{label}Started", f"{stage} started")
        fn(ctx)
    except DependencyNotReady as e:
        reporter.phase(Phase.WAITING, e.reason, str(e))
        print(f"error: {e}", file=sys.stderr)
        return 3
    except StageNotSupported as e:  # refused like an invalid spec: nothing ran
        _failed(reporter, fails_resource, e.reason, str(e), label)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as llmfab.signals.Terminated
        return _stopped(reporter, fails_resource, signal_of(stop), f"{resource.key}: {stage}", label)
    except Exception as e:  # the status must say what broke, whatever it was
        if (signum := stopping()) is not None:  # broken by the stop itself (see signals.stopping)
            return _stopped(reporter, fails_resource, signum, f"{resource.key}: {stage}", label)
        if isinstance(e, WorkloadError):
            reason, message = e.reason, str(e)
        else:
            reason, message = "Error", f"{type(e).__name__}: {e}"
            print(traceback.format_exc(limit=8), file=sys.stderr)
        _failed(reporter, fails_resource, reason, message, label)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except BaseException as e:  # a library's own BaseException: still never leave "Running" behind
        _failed(reporter, fails_resource, "Error", f"{type(e).__name__}: {e}", label)
        raise
    if primary:
        reporter.phase(Phase.SUCCEEDED, "Completed", f"{stage} finished", artifactPath=str(out_dir))
    else:
        reporter.event(f"{label}Completed", f"{stage} finished")
    return 0


def _stopped(reporter: StatusReporter, fails_resource: bool, signum: int, what: str, label: str) -> int:
    reason, message = stop_reason(signum)
    _failed(reporter, fails_resource, reason, message, label)
    print(f"{what} {message}", file=sys.stderr)
    return exit_code(signum)


def _failed(reporter: StatusReporter, fails_resource: bool, reason: str, message: str, label: str) -> None:
    if fails_resource:
        reporter.phase(Phase.FAILED, reason, message)
    else:
        reporter.event(f"{label}Failed", message, "Warning")
