"""Keep freed tensor memory in the training process on CPU, as CUDA's caching allocator does on a GPU.

PyTorch's CPU allocator asks glibc's ``malloc`` for every tensor and frees it when the tensor dies.
glibc serves each request above its mmap threshold (128 KiB at start, rising to at most 32 MiB) with a
fresh ``mmap`` and unmaps it on free, and trims the top of its heap once more than 128 KiB is free
there. A training step allocates and frees the same activation, gradient and logits buffers every
step, many of them above 32 MiB (at 6×512, batch 8×512: the gate/up projection, the loss chunk), so
every step faults those pages in again and the kernel zeroes each one: 100-300 thousand minor faults,
0.4-1.2 GB, per step on the benchmark shape (``benchmarks/train_throughput.py``, ``faults`` column).

``keep_freed_memory`` turns that off for the process with ``mallopt``: no ``mmap`` for allocations
(``M_MMAP_MAX`` 0; glibc still falls back to ``mmap`` where the heap cannot grow) and no trimming
(``M_TRIM_THRESHOLD`` at its maximum), so freed blocks go back to the heap and the next step reuses
them. The cost is that resident memory stays at the step's peak instead of falling between steps,
which is what a training process does on a GPU anyway, and that the heap takes a few steps to settle:
small blocks left between the large ones keep freed buffers from merging, so the heap grows until
each buffer of the step has a hole of its own (``tests/training/test_host_memory.py``). This is what
Intel's CPU training guides do by preloading jemalloc or tcmalloc; ``mallopt`` does it without a
library to install or preload.

Only glibc has ``mallopt``; elsewhere (musl, macOS) nothing changes. ``LLMFAB_CPU_MALLOC=default``
leaves glibc's behaviour as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

from llmfab.errors import WorkloadError

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_MAX = -4
TRIM_NEVER = 2**31 - 1  # mallopt takes an int
ENV = "LLMFAB_CPU_MALLOC"


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the symbols already loaded into this process: its C library's among them
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # only glibc has it


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in this process's heap; True where it now does.

    Call once, early in a CPU training process. ``LLMFAB_CPU_MALLOC=default`` skips it; any other
    value than ``default`` or ``keep`` is refused, naming the variable.
    """
    choice = os.environ.get(ENV, "keep")
    if choice not in ("keep", "default"):
        raise WorkloadError(f"{ENV}={choice!r}: use 'keep' (freed tensor memory stays in the process, the default) "
                         "or 'default' (glibc's own mmap and trim thresholds)")
    libc = _glibc()
    if choice == "default" or libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_NEVER))
