"""Shared helpers of the data benchmarks: run a command and measure it, build llmfab Dataset runs.

Wall time on a shared 2-core machine depends on what else runs, so every measurement also records
the CPU seconds of the whole process tree, the load average before and after, and the peak summed
RSS of the process tree. Tree CPU is polled with psutil every 0.2 s (the last value seen per
process, summed), because `getrusage(RUSAGE_CHILDREN)` misses processes nobody waits for, such
as a multiprocessing forkserver's workers; both numbers are reported.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
LLMFAB_PYTHON = ROOT / ".venv" / "bin" / "python"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"


def tree_sample(proc: psutil.Process, cpu: dict[int, float]) -> int:
    """Summed RSS of the tree now; updates `cpu` (pid -> CPU seconds last seen)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                times = p.cpu_times()
                cpu[p.pid] = times.user + times.system
        except psutil.Error:
            pass
    return total


def measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    """Run `cmd`; return wall and CPU seconds, peak tree RSS (MB), load averages and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    cpu: dict[int, float] = {}
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        ps = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak = max(peak, tree_sample(ps, cpu))
            except psutil.Error:
                pass
            done.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = proc.communicate()
    done.set()
    poller.join()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(max(sum(cpu.values()), waited_cpu), 2),
        "cpu_waited_s": round(waited_cpu, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "stdout": out,
    }


def dataset_yaml(name: str, sources: str, workers: int, tokenizer: str = "bpe") -> str:
    """A Dataset with llmfab's default clean pipeline, language identification off (the peer's
    fails offline, so neither side runs it), a BPE tokenizer of 8000 pieces."""
    return f"""apiVersion: llmfab.dev/v1alpha1
kind: Dataset
metadata:
  name: {name}
spec:
  sources:
    - path: {sources}
      idField: id
  filters:
    language: {{enabled: false}}
  tokenizer: {{type: {tokenizer}, vocabSize: 8000}}
  engine: {{type: local, workers: {workers}}}
"""


def run_llmfab_dataset(work: Path, name: str, sources: str, workers: int) -> dict[str, Any]:
    """Build a Dataset through the stable contract (`run_stage("data", spec)`), measured."""
    work.mkdir(parents=True, exist_ok=True)
    spec = work / f"{name}.yaml"
    spec.write_text(dataset_yaml(name, sources, workers), encoding="utf-8")
    home = work / "home"
    code = ("import sys; from pathlib import Path; from llmfab.workload import run_stage; "
            f"sys.exit(run_stage('data', Path({str(spec)!r}), force=True))")
    result = measured([str(LLMFAB_PYTHON), "-c", code], env={"LLMFAB_HOME": str(home)})
    out_dir = home / "datasets" / name
    manifest = json.loads((out_dir / "manifest.json").read_text())
    stats = json.loads((out_dir / "stats.json").read_text())
    result["documents_out"] = sum(s["documents"] for s in manifest["splits"].values())
    result["tokens"] = sum(s["tokens"] for s in manifest["splits"].values())
    result["steps"] = {s["name"]: [s["documentsIn"], s["documentsOut"]] for s in stats["steps"]}
    result["dataset_dir"] = str(out_dir)
    return result
