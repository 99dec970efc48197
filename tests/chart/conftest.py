"""The chart tests use the operator tests' fixtures (test API server, kubectl, operator client)."""

from tests.cluster.conftest import kube  # noqa: F401 - fixtures
from tests.kube.conftest import kube_apiserver, kubeconfig, kubectl  # noqa: F401
