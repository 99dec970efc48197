"""The operator against the test API server (tests/kube): a client for it, and the operator itself
running in the background with kopf's test runner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kopf.testing import KopfRunner
from kubernetes import client, config

from llmfab.operator.kube import Kube
from tests.cluster.operator_runner import run_operator
from tests.kube.conftest import kube_apiserver, kubeconfig, kubectl, kueue  # noqa: F401 - fixtures


@pytest.fixture
def kube(kubeconfig: Path) -> Kube:  # noqa: F811 - the fixture above
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return Kube(client.ApiClient(cfg))


@pytest.fixture
def operator(kube: Kube) -> Iterator[KopfRunner]:
    with run_operator(kube) as runner:
        yield runner
    assert runner.exception is None, runner.output
    assert "Traceback" not in runner.output, runner.output
