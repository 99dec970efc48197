"""The operator run by kopf's test runner in a background thread (tests and benchmarks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import kopf
from kopf.testing import KopfRunner

from llmfab.operator.handlers import build_registry
from llmfab.operator.kube import Kube
from llmfab.operator.settings import OperatorSettings

FAST = OperatorSettings(resync_seconds=0.3)


@contextlib.contextmanager
def run_operator(kube: Kube, settings: OperatorSettings = FAST, timeout: float = 60) -> Iterator[KopfRunner]:
    """``python -m llmfab.operator``'s registry, run by kopf in a background thread.

    kopf's ``run`` makes the registry it is given the process-wide default; the previous default
    is put back afterwards so that later tests' module-level handlers do not land in ours.
    """
    default = kopf.get_default_registry()
    try:
        with KopfRunner(["run", "--standalone", "--all-namespaces"], registry=build_registry(settings, kube),
                        timeout=timeout) as runner:
            yield runner
    finally:
        kopf.set_default_registry(default)
