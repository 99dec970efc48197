"""What only a GPU proves, in one command: ``make gpu-check`` on a machine with an NVIDIA GPU.

    make gpu-check PYTHON=python3                      # the python that holds the machine's CUDA torch
    python3 scripts/gpu_check.py --list                # the checks, one line each
    python3 scripts/gpu_check.py --only train,export-logits --timeout 300 --report out/gpu-check.json

The checks (``scripts/gpu_checks.py``) run llmfab's real entrypoints (``python -m llmfab data|train
run --spec``, ``benchmarks/train_throughput.py``) on tiny data built from ``examples/data``: a
TrainingRun in bf16 with ``compile: true``, activation checkpointing and the micro-batch probe,
stopped by SIGTERM and resumed from its checkpoint; NVML's energy counter around it; the export's
logits in transformers against llmfab's; a real CUDA out-of-memory in the probe and in a step;
FSDP2 (over all GPUs with torchrun, or a world of one on one GPU); throughput and MFU. It prints
one table (check, result, figures, seconds) and exits non-zero when a check fails.

Environment. This file needs only the standard library: it runs under the python that holds CUDA
torch (``PYTHON``), and the checks run in ``.gpu-venv``, that python's packages plus what it lacks
of llmfab's dependencies, installed with ``pip --no-index`` from the wheels ``make gpu-wheels``
downloaded into ``.gpu-wheels`` (``scripts/gpu_check_env.py``: torch is never replaced; the wheels
are CPython 3.11 and 3.12, manylinux x86-64, and must match that python). ``--python PATH`` skips
this and runs the checks with PATH as it is.

Exit codes: 0 every selected check passed (a skipped one says why), 1 a check failed or did not
run, 2 bad arguments, 3 no CUDA device (or no torch) under PYTHON. ``--cpu-rehearsal`` runs the
checks that can run on a CPU (gloo instead of NCCL, no OOM or NVML) to test this script itself;
its table says so and proves nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check_env
from gpu_check_context import REPO, WORKER, CheckFailed, CheckSkipped, Context
from gpu_checks import CHECKS, Check

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CUDA = 0, 1, 2, 3
DEFAULT_TIMEOUT = 480  # seconds: under 8 minutes, inside one 10-minute command on a lent machine
MIN_SECONDS = 15  # a check is not started with less time than this left


@dataclass
class Result:
    name: str
    result: str  # pass | FAIL | skip
    figures: str
    seconds: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the checks and exit")
    p.add_argument("--only", action="append", default=[], metavar="NAMES",
                   help="comma-separated checks to run (repeatable); the checks they need run too")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"for everything together (default {DEFAULT_TIMEOUT}); a check not reached fails")
    p.add_argument("--work", type=Path, default=REPO / ".gpu-check", help="runs, specs and logs (default .gpu-check)")
    p.add_argument("--venv", type=Path, default=REPO / ".gpu-venv", help="the checks' virtualenv (default .gpu-venv)")
    p.add_argument("--wheels", type=Path, default=REPO / ".gpu-wheels", help="wheels to install from (make gpu-wheels)")
    p.add_argument("--python", help="run the checks with this interpreter as it is (no virtualenv, no wheels)")
    p.add_argument("--report", type=Path, help="also write the results, the machine and the table as JSON here")
    p.add_argument("--cpu-rehearsal", action="store_true",
                   help="run what can run on a CPU, to test this script; proves nothing about a GPU")
    a = p.parse_args(argv)
    a.work, a.venv, a.wheels = (Path(os.path.abspath(p)) for p in (a.work, a.venv, a.wheels))
    if a.python and os.sep in a.python:  # not resolved: a virtualenv's python is a symlink out of it
        a.python = os.path.abspath(a.python)
    if a.timeout <= 0:
        p.error(f"--timeout {a.timeout:g}: give a positive number of seconds")
    try:
        a.checks = select_checks([n for value in a.only for n in value.split(",")], CHECKS)
    except ValueError as e:
        p.error(str(e))
    return a


def select_checks(names: Iterable[str], checks: list[Check]) -> list[Check]:
    """The named checks (all if none) and the checks they need, in the table's order."""
    by_name = {c.name: c for c in checks}
    wanted = [n.strip() for n in names if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"--only: unknown check {', '.join(map(repr, unknown))}; valid checks: "
                         f"{', '.join(by_name)}")
    chosen = set(wanted or by_name)
    pending = list(chosen)
    while pending:
        for need in by_name[pending.pop()].needs:
            if need not in chosen:
                chosen.add(need)
                pending.append(need)
    return [c for c in checks if c.name in chosen]


def list_text(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{c.name:{width}}  {c.summary}" + (f" (needs {', '.join(c.needs)})" if c.needs else "")
                     for c in checks)


def render_table(results: list[Result]) -> str:
    """A Markdown table, so it pastes into benchmarks/RESULTS.md as it is."""
    rows = [("check", "result", "figures", "seconds"), ("---", "---", "---", "---:")]
    rows += [(r.name, r.result, r.figures.replace("|", "\\|").replace("\n", " "), f"{r.seconds:.1f}")
             for r in results]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def exit_code(results: list[Result]) -> int:
    return EXIT_FAILED if any(r.result == "FAIL" for r in results) else EXIT_OK


def run_checks(checks: list[Check], ctx: Context, report: Callable[[Result], None] = lambda r: None) -> list[Result]:
    """Each check in turn within its budget and the overall deadline; a check whose needs failed, or
    for which too little time is left, fails without running. A check's own bug is a failure too."""
    results: list[Result] = []
    failed: set[str] = set()
    for check in checks:
        started = time.monotonic()
        left = ctx.deadline - started
        missing = [n for n in check.needs if n in failed]
        if missing:
            result = Result(check.name, "FAIL", f"not run: needs {', '.join(missing)}, which failed", 0.0)
        elif left < MIN_SECONDS:
            result = Result(check.name, "FAIL", f"not run: {left:.0f} s left of --timeout", 0.0)
        else:
            ctx.check_deadline = started + check.budget
            try:
                status, figures = "pass", check.run(ctx)
            except CheckSkipped as e:
                status, figures = "skip", str(e)
            except CheckFailed as e:
                status, figures = "FAIL", str(e)
            except Exception as e:  # a bug of the check itself: reported, and the other checks still run
                status, figures = "FAIL", f"{type(e).__name__}: {e}"
            result = Result(check.name, status, figures, time.monotonic() - started)
        if result.result == "FAIL":
            failed.add(check.name)
        results.append(result)
        report(result)
    return results


def probe_cuda(python: str) -> dict[str, Any]:
    """What ``python`` sees of torch and CUDA (``gpu_check_worker.py cuda-info``)."""
    try:
        done = subprocess.run([python, str(WORKER), "cuda-info"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"{python}: {e}"}
    try:
        info: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"{python} {WORKER.name} cuda-info exited {done.returncode}: {done.stderr.strip()[-300:]}"}
    return info


def no_cuda_message(info: dict[str, Any], python: str) -> str | None:
    """Why these checks cannot run under ``python``, or None where a CUDA device is there."""
    if "error" in info:
        return f"no CUDA device: {info['error']}"
    if info.get("available") and info.get("count", 0) > 0:
        return None
    build = f"CUDA {info['cuda']} build" if info.get("cuda") else "a CPU-only build"
    return (f"no CUDA device: torch {info.get('torch')} ({build}) under {python} finds no GPU "
            "(torch.cuda.is_available() is False). Run this on the GPU machine with the python that holds "
            "CUDA torch (make gpu-check PYTHON=...), or pass --cpu-rehearsal to test the script itself on a CPU.")


def machine(info: dict[str, Any]) -> dict[str, Any]:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {**info, "cpu": cpu, "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.list:
        print(list_text(CHECKS))
        return EXIT_OK
    base = a.python or sys.executable
    info = probe_cuda(base)
    problem = no_cuda_message(info, base)
    if problem and not (a.cpu_rehearsal and "error" not in info):
        print(f"gpu_check: {problem}", file=sys.stderr)
        return EXIT_NO_CUDA
    device = "cpu" if problem else "cuda"
    started = time.monotonic()
    for part in ("home", "specs", "logs", "inductor"):  # only what this script writes: --work may be anywhere
        shutil.rmtree(a.work / part, ignore_errors=True)
    gpus = ", ".join(info.get("names", [])) or "none"
    title = (f"llmfab gpu-check, {time.strftime('%Y-%m-%d')}: {gpus}; torch {info.get('torch')} CUDA "
             f"{info.get('cuda')}; python {info.get('python')}"
             + ("; CPU REHEARSAL: proves the script, not a GPU" if device == "cpu" else ""))
    print(title, file=sys.stderr, flush=True)
    results: list[Result] = []

    def show(r: Result) -> None:
        """Print the row, and rewrite the report: a run killed midway still leaves the rows so far."""
        print(f"[{r.seconds:6.1f} s] {r.name}: {r.result} - {r.figures}", file=sys.stderr, flush=True)
        results.append(r)
        if a.report:
            a.report.parent.mkdir(parents=True, exist_ok=True)
            a.report.write_text(json.dumps({"title": title, "machine": machine(info), "command": sys.argv,
                                            "results": [asdict(x) for x in results],
                                            "table": render_table(results)}, indent=2) + "\n")

    python = a.python
    if python is None:
        try:
            python, installed = gpu_check_env.prepare(base, a.venv, a.wheels, info["torch"],
                                                      a.work / "logs" / "environment.log")
            show(Result("environment", "pass", f"{a.venv.name} over {base} (python {info['python']}, torch "
                        f"{info['torch']}); installed from {a.wheels.name}: {installed}", time.monotonic() - started))
        except (gpu_check_env.EnvironmentFailed, OSError, json.JSONDecodeError, IndexError) as e:
            show(Result("environment", "FAIL", str(e), time.monotonic() - started))
    if python is not None:
        run_checks(a.checks, Context(python, a.work, device, int(info.get("count", 0)), started + a.timeout), show)
    print(f"\n{title}\n\n{render_table(results)}")
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
