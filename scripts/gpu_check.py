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

Environment. This file needs only the standard library: it runs under the python that has CUDA
torch (``PYTHON``). The checks run in ``.gpu-venv``: a virtualenv over that python's packages
(``--system-site-packages``; where that python is itself a virtualenv, as on the lent GPU
machines, a ``.pth`` file adds its site-packages too, which ``--system-site-packages`` alone would
not) plus what it lacks of ``scripts/gpu_requirements.txt``, installed by pip with ``--no-index``
from the wheels that ``make gpu-wheels`` downloaded into ``.gpu-wheels`` (CPython 3.11 and 3.12,
manylinux x86-64: they must match the GPU machine's python). A constraint pins torch to the
version found, so pip can never replace the machine's CUDA build. ``--python PATH`` skips all this
and runs the checks with PATH as it is.

Exit codes: 0 every selected check passed (a skipped one says why), 1 a check failed or did not
run, 2 bad arguments, 3 no CUDA device (or no torch) under PYTHON. ``--cpu-rehearsal`` runs the
checks that can run on a CPU (gloo instead of NCCL, no OOM or NVML) to test this script itself;
its table says so and proves nothing about a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
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
from gpu_checks import CHECKS, REPO, WORKER, Check, CheckFailed, CheckSkipped, Context  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_CUDA = 0, 1, 2, 3
DEFAULT_TIMEOUT = 480  # seconds: under 8 minutes, inside one 10-minute command on a lent machine
MIN_SECONDS = 15  # a check is not started with less time than this left
REQUIREMENTS = REPO / "scripts" / "gpu_requirements.txt"
# What the checks import, imported once after the set-up so a missing package fails there, by name.
IMPORTS = "import llmfab.cli, llmfab.data.pipeline, llmfab.training.loop.trainer, llmfab.model.hf, transformers"


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


def _json_of(cmd: list[str]) -> Any:
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def prepare_environment(base: str, venv: Path, wheels: Path, torch_version: str, log: Path) -> tuple[str, str]:
    """The checks' interpreter (a virtualenv over ``base``'s packages plus the wheels it lacks) and
    what pip installed; reused while the inputs are the same."""
    python = venv / "bin" / "python"
    stamp = venv / "gpu-check.stamp"
    listing = sorted(p.name for p in wheels.glob("*.whl")) if wheels.is_dir() else []
    key = hashlib.sha256(json.dumps([base, torch_version, REQUIREMENTS.read_text(), listing]).encode()).hexdigest()
    if python.exists() and stamp.is_file() and stamp.read_text() == key:
        return str(python), "reused"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        def step(cmd: list[str]) -> None:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                  env={**_clean_env(), "PYTHONPATH": str(REPO)})
            if done.returncode != 0:
                raise CheckFailed(f"`{' '.join(cmd[:4])} ...` exited {done.returncode}: see {log}")

        step([base, "-m", "venv", "--clear", "--system-site-packages", "--without-pip", str(venv)])
        outer = _json_of([base, "-c", "import json, site, sys; print(json.dumps("
                          "{'venv': sys.prefix != sys.base_prefix, 'site': site.getsitepackages()}))"])
        if outer["venv"]:  # --system-site-packages reaches the base installation, not this virtualenv's
            site = Path(_json_of([str(python), "-c", "import json, sysconfig; "
                                  "print(json.dumps(sysconfig.get_paths()['purelib']))"]))
            # addsitedir, not a plain path: the outer site-packages' own .pth files are read too.
            (site / "gpu-check-outer.pth").write_text(
                "".join(f"import site; site.addsitedir({d!r})\n" for d in outer["site"]))
        constraints = venv / "constraints.txt"
        constraints.write_text(f"torch=={torch_version}\n")  # never replace the machine's (CUDA) torch
        # pip is the outer python's, run by the new interpreter: it installs into the virtualenv and
        # counts the outer packages as installed, so only what they lack comes from the wheels.
        step([str(python), "-m", "pip", "install", "--isolated", "--no-index", "--find-links", str(wheels),
              "--constraint", str(constraints), "--requirement", str(REQUIREMENTS), "--no-input",
              "--disable-pip-version-check"])
        step([str(python), "-c", IMPORTS])
    stamp.write_text(key)
    installed = [line.split("Successfully installed ", 1)[1] for line in log.read_text().splitlines()
                 if line.startswith("Successfully installed ")]
    return str(python), (installed[-1] if installed else "nothing")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH", "VIRTUAL_ENV"))}


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
    results: list[Result] = []

    def show(r: Result) -> None:
        print(f"[{r.seconds:6.1f} s] {r.name}: {r.result} - {r.figures}", file=sys.stderr, flush=True)

    python = a.python
    if python is None:
        try:
            python, installed = prepare_environment(base, a.venv, a.wheels, info["torch"], a.work / "logs" / "environment.log")
            results.append(Result("environment", "pass", f"{a.venv.name} over {base} (python {info['python']}, torch "
                                  f"{info['torch']}); installed from {a.wheels.name}: {installed}", time.monotonic() - started))
        except (CheckFailed, OSError, subprocess.CalledProcessError, json.JSONDecodeError) as e:
            results.append(Result("environment", "FAIL", str(e), time.monotonic() - started))
        show(results[-1])
    gpus = ", ".join(info.get("names", [])) or "none"
    title = (f"llmfab gpu-check, {time.strftime('%Y-%m-%d')}: {gpus}; torch {info.get('torch')} CUDA {info.get('cuda')}; "
             f"python {info.get('python')}" + ("; CPU REHEARSAL: proves the script, not a GPU" if device == "cpu" else ""))
    print(title, file=sys.stderr, flush=True)
    if python is not None:
        ctx = Context(python, a.work.resolve(), device, int(info.get("count", 0)), started + a.timeout)
        results += run_checks(a.checks, ctx, show)
    table = render_table(results)
    print(f"\n{title}\n\n{table}")
    if a.report:
        a.report.parent.mkdir(parents=True, exist_ok=True)
        a.report.write_text(json.dumps({"title": title, "machine": machine(info), "command": sys.argv,
                                        "results": [asdict(r) for r in results], "table": table}, indent=2) + "\n")
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
