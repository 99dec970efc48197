"""CPU training keeps freed tensor memory in the process (``llmfab/training/components/host_memory.py``).

Each case runs in a fresh interpreter: the setting is process-wide, and the point is what a new
training process does from its start. Each "step" allocates and fills tensors of 48, 64, 40, 8 and
33 MiB (most above glibc's largest mmap threshold, 32 MiB), holds them together and frees them, as a
training step does with its activations. After a few steps the heap has settled (freed blocks
coalesce); the page faults of the last steps then tell whether the memory came back from the heap or
was mapped and zeroed again.

The heap takes a varying number of steps to settle: small blocks freed into glibc's per-thread cache
stay between the large ones, so the heap grows by a 64 MiB hole a step until every tensor has one
(seen: the first 2 to 7 steps here, now and then a smaller growth much later, and in CI still at step 8).
A kept heap therefore shows as a median of no faults over the later steps, not as three clean ones."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from llmfab.errors import WorkloadError
from llmfab.training.components import host_memory

PROGRAM = """
import json, resource, sys
import torch
setup = sys.argv[1]
applied = None
if setup == "keep":
    from llmfab.training.components.host_memory import keep_freed_memory
    applied = keep_freed_memory()
elif setup == "init_distributed":
    from llmfab.api.training_run import TrainingRunSpec
    from llmfab.training.components.distributed import init_distributed
    init_distributed(TrainingRunSpec.model_validate({"dataset": {"name": "d"}, "release": {"license": "apache-2.0"}}))
faults = []
for _ in range(32):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step = [torch.ones(mib * 2**18) for mib in (48, 64, 40, 8, 33)]  # fp32: 2**18 elements a MiB
    del step
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults[-16:]}))
"""
STEP_PAGES = (48 + 64 + 40 + 8 + 33) * 2**20 // 4096  # every page of the step mapped afresh


def run(setup: str, **env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if k != host_memory.ENV} | env | {"CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", PROGRAM, setup], capture_output=True, text=True, env=environ,
                         check=True, timeout=120)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def reused(faults: object) -> bool:
    return statistics.median(faults) < STEP_PAGES // 10  # type: ignore[arg-type]


def remapped(faults: object) -> bool:
    return all(f > STEP_PAGES // 2 for f in faults)  # type: ignore[attr-defined]


def test_glibc_alone_maps_and_zeroes_the_large_tensors_every_step() -> None:
    result = run("none")
    assert remapped(result["faults"]), result


def test_kept_memory_is_reused_without_page_faults() -> None:
    result = run("keep")
    assert result["applied"] is True and reused(result["faults"]), result


def test_a_cpu_training_process_keeps_freed_memory_from_init_distributed() -> None:
    result = run("init_distributed")
    assert reused(result["faults"]), result


def test_the_variable_set_to_default_leaves_glibc_as_it_is() -> None:
    result = run("keep", LLMFAB_CPU_MALLOC="default")
    assert result["applied"] is False and remapped(result["faults"]), result


def test_an_unknown_value_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(host_memory.ENV, "jemalloc")
    with pytest.raises(WorkloadError, match=r"LLMFAB_CPU_MALLOC='jemalloc': use 'keep'.*or 'default'"):
        host_memory.keep_freed_memory()
