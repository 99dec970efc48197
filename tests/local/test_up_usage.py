"""Usage under `llmfab up`: a child's wall and CPU time from its own rusage (descendants included),
added up over reruns, priced from `$LLMFAB_HOME/cost.yaml`, shown by `get`, `describe` and `usage`
(which sums a post-training chain). On this machine no GPU exists, so every run has 0 GPU seconds
and no measured energy; what a GPU adds is the NVML path tested in tests/status/test_usage.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Processes
from rich.console import Console
from test_up import pipeline, status, up

from llmfab.api import load_resources
from llmfab.local.metering import MeteredProcess
from llmfab.local.usage_report import chain, usage_table
from llmfab.stages import spec_file_path, write_spec_file
from llmfab.status import FileStatusReporter
from llmfab.usage import Prices, priced, run_totals, usage_json

REPO = Path(__file__).resolve().parents[2]
# A child that burns 0.6 s of CPU in a grandchild it waits for, then 0.4 s itself.
BURN = ("import subprocess, sys, time\n"
        "def burn(s):\n    t = time.process_time()\n    while time.process_time() - t < s: pass\n"
        "subprocess.run([sys.executable, '-c', 'import time\\nt = time.process_time()\\n"
        "while time.process_time() - t < 0.6: pass'], check=True)\n"
        "burn(0.4)\n")


def test_a_child_is_metered_with_the_cpu_time_of_the_descendants_it_waited_for() -> None:
    started = time.monotonic()
    child = MeteredProcess(subprocess.Popen([sys.executable, "-c", BURN]))
    assert child.wait() == 0
    elapsed = time.monotonic() - started
    usage = child.take_usage()
    assert usage is not None and child.take_usage() is None  # handed out once
    assert 1.0 <= usage.cpu_seconds <= usage.wall_seconds + 0.05  # type: ignore[operator]  # one core at a time
    assert usage.wall_seconds <= elapsed and usage.attempts == 1
    assert usage.gpu_seconds == 0 and usage.gpu_energy_joules is None  # no GPU held


def text(renderable: object) -> str:
    console = Console(width=200, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text()


def test_usage_sums_a_post_training_chain_and_only_it(tmp_path: Path) -> None:
    prices = Prices(currency="EUR", price_per_gpu_hour=2.0)
    gpu_hours = {"rlhf-books": 0.0, "rlhf-base": 3.0, "rlhf-sft": 1.0, "rlhf-judge": 0.5, "rlhf-policy": 2.0,
                 "rlhf-chat": 7.0}
    for res in load_resources([REPO / "examples" / "rlhf.yaml"]):
        write_spec_file(res, spec_file_path(res.ARTIFACT_DIR, res.name, tmp_path))
        totals = run_totals(60.0, 30.0, gpu_hours[res.name] * 3600)
        FileStatusReporter(res, tmp_path).patch({"usage": usage_json(priced(totals, prices, "used"))})
    keys = chain("TrainingRun", "rlhf-policy", tmp_path)
    assert keys[0] == ("TrainingRun", "rlhf-policy") and len(keys) == len(set(keys)) == 5
    assert ("InferenceService", "rlhf-chat") not in keys  # it reads the policy; the policy does not need it
    out = text(usage_table("TrainingRun", "rlhf-policy", tmp_path))
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[:4] == ["total", "(5", "resources)", "5"]
    assert "6.500" in total and "13 EUR" in total  # 6.5 GPU-hours at 2 EUR
    everything = text(usage_table(None, None, tmp_path))
    assert "13.500" in everything and "27 EUR" in everything


@pytest.mark.slow
def test_up_reports_wall_and_cpu_time_of_its_processes_and_adds_reruns(tmp_path: Path, processes: Processes) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "cost.yaml").write_text("currency: EUR\npricePerKwh: 0.25\nwattsPerCpu: 10\n")
    file = pipeline(tmp_path, steps=2)
    started = time.monotonic()
    first = up(processes, "-f", str(file), home=home)
    elapsed = time.monotonic() - started
    assert first.returncode == 0, first.stdout + first.stderr
    ds, run = status(home, "datasets", "books")["usage"], status(home, "runs", "tiny")["usage"]
    for usage in (ds, run):
        assert usage["attempts"] == 1 and usage["cpu"] == "used" and usage["gpuSeconds"] == 0
        # Bounded by what the test saw: each child ran within `llmfab up`, and used CPU (python
        # starting and working), on at most the machine's cores for its wall time.
        assert 0 < usage["wallSeconds"] < elapsed and 0.5 < usage["cpuSeconds"] <= usage["wallSeconds"] * os.cpu_count()
        assert usage["energyKwh"] == round(usage["cpuSeconds"] * 10 / 3.6e6, 6)
        assert usage["cost"] == round(usage["energyKwh"] * 0.25, 4) and usage["currency"] == "EUR"
        assert usage["costInputs"] == {"wattsPerCpu": 10.0, "pricePerKwh": 0.25}
    assert ds["wallSeconds"] + run["wallSeconds"] < elapsed

    again = up(processes, "-f", str(file), home=home)  # up to date: the check's seconds add up too
    assert again.returncode == 0
    rerun = status(home, "runs", "tiny")["usage"]
    assert rerun["attempts"] == 2 and rerun["wallSeconds"] > run["wallSeconds"]
    assert rerun["cpuSeconds"] > run["cpuSeconds"]

    env = {**os.environ, "LLMFAB_HOME": str(home), "COLUMNS": "200"}
    got = processes.run([sys.executable, "-m", "llmfab", "get", "trainingrun"], env=env).stdout
    assert "GPU-h=0" in got and "Cost=" in got
    described = processes.run([sys.executable, "-m", "llmfab", "describe", "trainingrun", "tiny"], env=env).stdout
    assert "Usage:" in described and "Attempts:     2" in described and "0.25 EUR/kWh" in described
    total = processes.run([sys.executable, "-m", "llmfab", "usage", "trainingrun", "tiny"], env=env).stdout
    assert "TrainingRun/tiny" in total and "Dataset/books" in total and "total (2 resources)" in total
