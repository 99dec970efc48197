"""GPU energy from NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``: millijoules
since the driver loaded, Volta and newer), and which GPUs a process tree holds.

The NVML calls are the two small functions :func:`read_counters` and :func:`devices_of`; all they
return is plain numbers, and the arithmetic on them (:func:`energy_joules`) is pure, so it is
tested without a GPU. ``pynvml`` (PyPI ``nvidia-ml-py``, in the train and serve extras) is imported
lazily: where it, the driver or a GPU is missing, every reader answers ``None`` or nothing, and no
energy is ever invented.

Callers: ``llmfab up`` reads the counters around each child process it starts
(``llmfab/local/metering.py``); in a pod the workload reads them at its start and end and reports
the difference through its StatusReporter (:func:`report_pod_energy`, from ``llmfab/workload.py``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Counters = dict[int, int]  # NVML device index -> millijoules since the driver loaded


@functools.cache
def _nvml() -> Any | None:
    """pynvml, initialised once per process; None where the library, the driver or a device is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
    except pynvml.NVMLError:
        return None
    return pynvml


def read_counters() -> Counters | None:
    """Each visible GPU's total-energy counter (mJ); None where NVML or a GPU is missing. A device
    whose counter is not supported (older than Volta) is left out."""
    nvml = _nvml()
    if nvml is None:
        return None
    counters: Counters = {}
    for index in range(nvml.nvmlDeviceGetCount()):
        with contextlib.suppress(nvml.NVMLError):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            counters[index] = int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
    return counters or None


def devices_of(root_pid: int) -> set[int]:
    """The GPUs (NVML indexes) on which a process descending from ``root_pid`` (itself included)
    holds a compute context; empty where NVML is missing."""
    nvml = _nvml()
    if nvml is None:
        return set()
    used: set[int] = set()
    for index in range(nvml.nvmlDeviceGetCount()):
        with contextlib.suppress(nvml.NVMLError):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            if any(descends_from(p.pid, root_pid) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)):
                used.add(index)
    return used


def descends_from(pid: int, root_pid: int, proc: Path = Path("/proc")) -> bool:
    """Whether ``pid`` is ``root_pid`` or a descendant of it (parents read from /proc; torchrun's
    workers run in sessions of their own, so a process group would not find them)."""
    seen = 0
    while pid > 1 and seen < 256:
        if pid == root_pid:
            return True
        try:
            stat = (proc / str(pid) / "stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after the command in parentheses
        seen += 1
    return False


def energy_joules(start: Counters | None, end: Counters | None, devices: set[int] | None = None) -> float | None:
    """Joules the GPUs ``devices`` (default: every device in both readings) used between two
    readings. None where either reading is missing, a device is missing from one, or a counter went
    backwards (the driver reloaded, restarting it): then the energy is unknown, not zero."""
    if start is None or end is None:
        return None
    wanted = set(start) & set(end) if devices is None else devices
    if not wanted or not wanted <= set(start) or not wanted <= set(end):
        return None
    deltas = [end[d] - start[d] for d in wanted]
    if any(delta < 0 for delta in deltas):
        return None
    return sum(deltas) / 1000.0


@contextlib.contextmanager
def report_pod_energy(patch: Any, environ: dict[str, str] | None = None) -> Iterator[None]:
    """In a pod: read the counters of the pod's GPUs at the start and end of the block and merge
    the joules into ``status.usage.pods.<POD_NAME>.gpuEnergyJoules`` through ``patch`` (the
    StatusReporter's), where the operator folds them into the resource's usage.

    Only the pod's first process measures (not torchrun's workers: ``RANK`` is set in those), and
    only in a pod (``POD_NAME``, set by the operator) reporting to Kubernetes: ``llmfab up``
    measures its children itself. A failed report never fails the workload."""
    env = os.environ if environ is None else environ
    pod = env.get("POD_NAME")
    active = bool(pod) and "RANK" not in env and env.get("LLMFAB_STATUS") == "kubernetes"
    start = read_counters() if active else None
    try:
        yield
    finally:
        joules = energy_joules(start, read_counters()) if start is not None else None
        if joules is not None:
            try:
                patch({"usage": {"pods": {pod: {"gpuEnergyJoules": joules}}}})
            except Exception as e:  # the work is done; its energy is then estimated instead
                print(f"warning: could not report the GPU energy ({joules:.0f} J): {e}", file=sys.stderr)
