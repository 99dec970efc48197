"""The operator against the test API server (tests/kube): a client for it, and the operator itself
running in the background with kopf's test runner."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import kopf
import pytest
from kopf.testing import KopfRunner
from kubernetes import client, config

from llmfab.operator.handlers import build_registry
from llmfab.operator.kube import Kube
from llmfab.operator.settings import OperatorSettings
from tests.kube.conftest import kube_apiserver, kubeconfig, kubectl  # noqa: F401 - fixtures

FAST = OperatorSettings(resync_seconds=0.3)


@pytest.fixture
def kube(kubeconfig: Path) -> Kube:  # noqa: F811 - the fixture above
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return Kube(client.ApiClient(cfg))


@contextlib.contextmanager
def run_operator(kube: Kube, settings: OperatorSettings = FAST) -> Iterator[KopfRunner]:
    """``python -m llmfab.operator``'s registry, run by kopf in a background thread.

    kopf's ``run`` makes the registry it is given the process-wide default; the previous default
    is put back afterwards so that later tests' module-level handlers do not land in ours.
    """
    default = kopf.get_default_registry()
    try:
        with KopfRunner(["run", "--standalone", "--all-namespaces"], registry=build_registry(settings, kube),
                        timeout=60) as runner:
            yield runner
    finally:
        kopf.set_default_registry(default)


@pytest.fixture
def operator(kube: Kube) -> Iterator[KopfRunner]:
    with run_operator(kube) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output
