"""``llmfab up``: run each resource's workload as a local process, in dependency order.

The runner executes exactly what a pod would (``python -m llmfab <stage> run --spec FILE``), so the
local path cannot drift from the cluster path. It writes each resource's spec file and log beside
its artifacts, shows progress from the status files the workloads write, and exits non-zero if
anything failed. On SIGINT (Ctrl-C) or SIGTERM (systemd, ``docker stop``) it forwards the signal to
the running child's process group, SIGKILLs what is left after :data:`STOP_GRACE_SECONDS`, stops
its servers the same way and exits 130 or 143 (``llmfab.signals``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from llmfab.api import KINDS, ValidationFailed, load_resources
from llmfab.api.common import Phase, Resource
from llmfab.local.metering import MeteredProcess
from llmfab.local.ordering import OrderingError, dependents, order_resources
from llmfab.signals import exit_code, signal_of, stop_process_group, stop_reason
from llmfab.stages import (
    STAGES,
    owns_phase,
    spec_file_path,
    stage_available,
    stage_command,
    stages_for,
    write_spec_file,
)
from llmfab.status import FileStatusReporter, accepts_requests, asleep, log_path, read_status
from llmfab.store import artifact_dir, artifact_root, read_manifest, write_json_atomic
from llmfab.usage import Prices, add, local_prices, priced, totals_of, usage_json

STOP_GRACE_SECONDS = 30.0
"""How long a stopped child's process group may take to exit before SIGKILL: Kubernetes' default
``terminationGracePeriodSeconds``, which the workloads are built to stop within (a SIGTERM
checkpoint takes at most ``training.components.checkpoint.SIGTERM_SAVE_BUDGET_SECONDS``)."""
SERVE_READY_TIMEOUT = float(os.environ.get("LLMFAB_SERVE_READY_TIMEOUT", "600"))


@dataclass
class Outcome:
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    servers: list[tuple[Resource, MeteredProcess]] = field(default_factory=list)


def _progress_text(status: dict[str, object]) -> str:
    keys = [
        ("step", "step"),
        ("totalSteps", "of"),
        ("loss", "loss"),
        ("tokensPerSecond", "tok/s"),
        ("documents", "docs"),
        ("tokens", "tokens"),
        ("accuracy", "acc"),
        ("url", "url"),
    ]
    parts = []
    for key, label in keys:
        value = status.get(key)
        if value is None:
            continue
        parts.append(f"{label} {value:.4g}" if isinstance(value, float) else f"{label} {value}")
    scale = status.get("scale")
    if isinstance(scale, dict) and scale.get("state"):
        parts.append(f"state {scale['state']}")
    return "  ".join(parts)


def _status_table(rows: list[tuple[str, str, dict[str, object]]]) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    for col in ("RESOURCE", "STAGE", "PHASE", "PROGRESS", "MESSAGE"):
        table.add_column(col, overflow="fold")
    for key, stage, status in rows:
        table.add_row(
            key,
            stage,
            str(status.get("phase", "Pending")),
            _progress_text(status),
            str(status.get("message", ""))[:80],
        )
    return table


def _stop(proc: MeteredProcess, sig: int = signal.SIGINT) -> None:
    """Stop a child started by :func:`_start`: its process group is its workload (which stops
    torchrun and the workers itself, or vLLM)."""
    stop_process_group(proc.pid, sig, STOP_GRACE_SECONDS, proc.poll)


def _record_stop(res: Resource, stage: str, root: Path, sig: int) -> None:
    """A child stopped before it could say so itself (killed during start-up, or SIGKILLed after
    the grace period) still leaves a final phase behind."""
    if not owns_phase(stage, res.KIND):
        return
    if read_status(res.ARTIFACT_DIR, res.name, root).get("phase") in (Phase.PENDING, Phase.RUNNING):
        reason, message = stop_reason(sig)
        FileStatusReporter(res, root).phase(Phase.FAILED, reason, f"{stage} {message} (recorded by llmfab up)")


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _start(res: Resource, stage: str, spec_file: Path, force: bool, root: Path) -> MeteredProcess:
    log = log_path(res.ARTIFACT_DIR, res.name, root)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as f:
        f.write(f"\n===== {time.strftime('%Y-%m-%dT%H:%M:%S')} llmfab {stage} run =====\n".encode())
        env = {**os.environ, "LLMFAB_HOME": str(root), "PYTHONUNBUFFERED": "1"}
        return MeteredProcess(subprocess.Popen(
            stage_command(stage, spec_file, force, python=sys.executable),
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        ))


def _record_usage(res: Resource, proc: MeteredProcess, root: Path, prices: Prices) -> None:
    """Add what a reaped child used to its resource's ``status.usage``, priced. Every run adds up:
    a rerun that resumes, one that finds its artifact up to date (its start-up seconds), a
    ``--force`` rebuild (the compute was spent); ``llmfab delete`` starts the count again."""
    run = proc.take_usage()
    if run is None:
        return
    reporter = FileStatusReporter(res, root)
    totals = add(totals_of(reporter.read().get("usage")), run)
    reporter.patch({"usage": usage_json(priced(totals, prices, "used"))})


def _wait_serving(res: Resource, proc: MeteredProcess, root: Path, live: Live) -> bool:
    """Wait until the server accepts requests (or dies)."""
    deadline = time.monotonic() + SERVE_READY_TIMEOUT
    while time.monotonic() < deadline:
        status = read_status(res.ARTIFACT_DIR, res.name, root)
        live.update(_status_table([(res.key, "serve", status)]))
        if proc.poll() is not None:
            return False
        if accepts_requests(status):
            return True
        time.sleep(0.5)
    return False


def _run_stage(
    res: Resource, stage: str, spec_file: Path, force: bool, root: Path, console: Console, outcome: Outcome,
    prices: Prices,
) -> bool:
    label = escape(f"{res.key} [{stage}]")
    if stage == "serve":  # what _wait_serving waits for, as a previous run may have left it
        FileStatusReporter(res, root).patch({"readyReplicas": None, "scale": None})
    proc = _start(res, stage, spec_file, force, root)
    started = time.monotonic()
    try:
        with Live(
            _status_table([(res.key, stage, {})]), console=console, refresh_per_second=4, transient=True
        ) as live:
            if stage == "serve":
                if _wait_serving(res, proc, root, live):
                    outcome.servers.append((res, proc))
                    status = read_status(res.ARTIFACT_DIR, res.name, root)
                    url = status.get("url", "")
                    console.print(f"[green]serving[/green] {res.key} at {url}"
                                  + (" (scaled to zero: the first request starts vLLM)" if asleep(status) else ""))
                    console.print(
                        f"  curl {url}/completions -H 'Content-Type: application/json' "
                        f'-d \'{{"model": "{res.name}", "prompt": "Once upon a time", '
                        '"max_tokens": 32}\'',
                        highlight=False,
                        soft_wrap=True,
                    )
                    outcome.succeeded.append(label)
                    return True
                _stop(proc)
            else:
                while proc.poll() is None:
                    live.update(_status_table([(res.key, stage, read_status(res.ARTIFACT_DIR, res.name, root))]))
                    time.sleep(0.5)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as llmfab.signals.Terminated
        _stop(proc, signal_of(stop))
        _record_usage(res, proc, root, prices)
        _record_stop(res, stage, root, signal_of(stop))
        raise
    _record_usage(res, proc, root, prices)
    seconds = time.monotonic() - started
    if proc.returncode == 0:
        console.print(
            f"[green]✓[/green] {label} in {seconds:.1f}s  {_progress_text(read_status(res.ARTIFACT_DIR, res.name, root))}",
            highlight=False,
        )
        outcome.succeeded.append(label)
        return True
    log = log_path(res.ARTIFACT_DIR, res.name, root)
    console.print(
        f"[red]✗[/red] {label} failed (exit {proc.returncode}) after {seconds:.1f}s; log: {log}",
        highlight=False,
    )
    console.print(_log_tail(log), highlight=False, markup=False)
    outcome.failed.append(label)
    return False


def _selected(res: Resource, only: list[str]) -> bool:
    return not only or res.name in only or f"{res.KIND}/{res.name}" in only


def run_up(
    files: list[Path], only: list[str], force: bool, dry_run: bool, detach: bool, console: Console
) -> int:
    """Validate, order and run; return the exit code (0 only if everything asked for succeeded)."""
    root = artifact_root()
    try:
        resources = load_resources(files)
        ordered = order_resources(
            resources,
            lambda kind, name: read_manifest(artifact_dir(KINDS[kind].ARTIFACT_DIR, name, root)) is not None,
        )
    except ValidationFailed as e:
        for line in e.errors:
            console.print(f"[red]error[/red]: {line}", highlight=False, soft_wrap=True)
        return 2
    except OrderingError as e:
        console.print(f"[red]error[/red]: {e}", highlight=False, soft_wrap=True)
        return 2
    try:
        prices = local_prices(root)
    except ValueError as e:
        console.print(f"[red]error[/red]: {e}", highlight=False, soft_wrap=True)
        return 2
    plan = [(res, stages_for(res)) for res in ordered if _selected(res, only)]
    unknown = [n for n in only if not any(_selected(r, [n]) for r in ordered)]
    if unknown:
        console.print(f"[red]error[/red]: --only {', '.join(unknown)}: no such resource in these files")
        return 2
    console.print(f"artifact store: {root}")
    for res, stages in plan:
        console.print(f"  {res.key}: {' → '.join(stages)}", highlight=False)
    if dry_run:
        return 0

    outcome = Outcome()
    failed_keys: set[tuple[str, str]] = set()
    try:
        for res, stages in plan:
            reporter = FileStatusReporter(res, root)
            blocked = dependents(ordered, failed_keys)
            if (res.KIND, res.name) in blocked:
                reporter.phase(Phase.WAITING, "WaitingForDependency", "a resource it references failed")
                console.print(f"[yellow]-[/yellow] {res.key} not run: a resource it references failed")
                outcome.skipped.append(res.key)
                continue
            spec_file = write_spec_file(res, spec_file_path(res.ARTIFACT_DIR, res.name, root))
            reporter.phase(Phase.PENDING, "Queued", "queued by llmfab up")
            for stage in stages:
                if not stage_available(stage):
                    console.print(
                        f"[yellow]skipped[/yellow] {res.key} [{stage}]: this llmfab has no "
                        f"'{stage}' stage yet ({STAGES[stage].module} is missing); nothing was run",
                        highlight=False,
                    )
                    outcome.skipped.append(f"{res.key} [{stage}]")
                    if owns_phase(stage, res.KIND):
                        reporter.phase(Phase.PENDING, "StageNotAvailable", f"stage '{stage}' not available")
                        failed_keys.add((res.KIND, res.name))
                        break
                    continue
                if not _run_stage(res, stage, spec_file, force, root, console, outcome, prices):
                    if owns_phase(stage, res.KIND):  # else its artifact is still usable downstream
                        failed_keys.add((res.KIND, res.name))
                    break
        _summary(outcome, console)
        if outcome.servers and not outcome.failed:
            if detach:
                _record_detached(outcome.servers, root)
                console.print("servers keep running; stop them with `llmfab down`")
            else:
                console.print("serving; press Ctrl-C to stop")
                while all(p.poll() is None for _, p in outcome.servers):
                    time.sleep(1)
                console.print("[red]a server exited[/red]")
                return 1
    except KeyboardInterrupt as stop:
        console.print(f"[yellow]interrupted by {signal.Signals(signal_of(stop)).name}; stopping[/yellow]")
        for res, proc in outcome.servers:
            _stop(proc, signal_of(stop))
            _record_usage(res, proc, root, prices)
        return exit_code(signal_of(stop))
    finally:
        if not detach:
            for res, proc in outcome.servers:
                _stop(proc)
                _record_usage(res, proc, root, prices)
    return 1 if outcome.failed else 0


def _summary(outcome: Outcome, console: Console) -> None:
    console.print(
        f"done: {len(outcome.succeeded)} succeeded, {len(outcome.failed)} failed, {len(outcome.skipped)} skipped",
        highlight=False,
    )
    for item in outcome.skipped:
        console.print(f"  skipped: {escape(item)}", highlight=False)


def _pid_file(root: Path) -> Path:
    return root / "services" / "detached.json"


def _record_detached(servers: list[tuple[Resource, MeteredProcess]], root: Path) -> None:
    """Detached servers outlive ``llmfab up``, which therefore cannot reap them: their usage is not
    recorded (``llmfab down`` stops a process that is not its child)."""
    pids = {}
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        pids = json.loads(_pid_file(root).read_text())
    pids.update({res.name: proc.pid for res, proc in servers})
    write_json_atomic(_pid_file(root), pids)


def run_down(name: str | None, console: Console) -> int:
    """Stop detached servers (all, or the one named); return the exit code."""
    root = artifact_root()
    try:
        pids: dict[str, int] = json.loads(_pid_file(root).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        console.print("no detached servers")
        return 0
    targets = [n for n in pids if name is None or n == name]
    if name is not None and not targets:
        console.print(f"[red]error[/red]: no detached server named {name}")
        return 1
    for target in targets:
        stop_process_group(pids.pop(target), signal.SIGINT, STOP_GRACE_SECONDS)
        console.print(f"stopped {target}")
    write_json_atomic(_pid_file(root), pids)
    return 0
