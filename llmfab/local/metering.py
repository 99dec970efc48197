"""What a child of ``llmfab up`` used: wall time, CPU time, the GPUs it held and their energy.

- Wall time: from start to the moment this process reaps it (``time.monotonic``).
- CPU time: the ``rusage`` that ``os.wait4`` returns when it reaps the child: the child's own user
  and system time and that of every descendant it waited for (torchrun's workers, which torchrun
  waits for, and their data loaders). Exact, from the kernel; a descendant the workload left
  running and that was then killed with its process group is not in it.
- GPUs: the devices on which a process of the child's tree held a CUDA context (NVML's compute
  processes, sampled on each poll), whatever ``CUDA_VISIBLE_DEVICES`` or the spec say; none on
  CPU. GPU seconds = those devices x wall time, as a pod holds its GPUs from start to end.
- Energy: NVML's total-energy counter of those devices, read at start and at the end.

Every reap of the child must go through :meth:`MeteredProcess.poll` (``Popen.poll`` would reap it
without the rusage): the runner's loops and its stop path call it.
"""

from __future__ import annotations

import os
import subprocess
import time

from llmfab.api.common import UsageTotals
from llmfab.gpu_energy import devices_of, energy_joules, read_counters
from llmfab.usage import run_totals


class MeteredProcess:
    """A started child (``subprocess.Popen``) and, once it has been reaped, what it used."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self._started = time.monotonic()
        self._counters = read_counters()  # None without NVML, a GPU or its energy counter
        self._devices: set[int] = set()
        self._usage: UsageTotals | None = None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        """Reap the child if it has exited (recording what it used), else sample its GPUs."""
        if self.popen.returncode is not None:
            return self.popen.returncode
        try:
            pid, wait_status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: its CPU time is lost, the rest stands
            self._finish(self.popen.poll(), None)
            return self.popen.returncode
        if pid == 0:
            self._devices |= devices_of(self.pid)  # nothing (and no cost) without NVML
            return None
        self._finish(os.waitstatus_to_exitcode(wait_status), rusage.ru_utime + rusage.ru_stime)
        return self.popen.returncode

    def wait(self, poll_seconds: float = 0.1) -> int:
        while (code := self.poll()) is None:
            time.sleep(poll_seconds)
        return code

    def _finish(self, returncode: int | None, cpu_seconds: float | None) -> None:
        self.popen.returncode = returncode
        wall = time.monotonic() - self._started
        joules = energy_joules(self._counters, read_counters(), self._devices) if self._devices else None
        self._usage = run_totals(wall, cpu_seconds, len(self._devices) * wall, joules)

    def take_usage(self) -> UsageTotals | None:
        """What the child used, once it has been reaped; each figure is handed out once, so a run
        is never added twice to a resource's usage."""
        usage, self._usage = self._usage, None
        return usage
