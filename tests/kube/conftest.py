"""Fixtures: the test API server on 127.0.0.1, a kubeconfig for it, and the real kubectl against it.

    def test_something(kube_apiserver, kubeconfig, kubectl):
        kubectl("apply", "-f", "examples/quickstart.yaml")       # the real kubectl, KUBECONFIG set
        run = kube_apiserver.read("trainingruns", "tiny")         # what the server stored
        [pod] = kube_apiserver.items("pods", labels="job-name=tiny-train")
        kube_apiserver.set_pod_phase(pod, "Succeeded")            # the Job controller follows
        assert all(r.verb != "update" for r in kube_apiserver.request_log)

Tests elsewhere under tests/ can import these fixtures into their own conftest
(``from kube.conftest import kube_apiserver, kubeconfig``) or serve a ``KubeAPIServer`` with
``kube.serving.serve_in_thread`` themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from .apiserver import CHART_CRDS, REPO, KubeAPIServer
from .kueue import CRDS as KUEUE_CRDS
from .kueue import KueueStandIn
from .serving import serve_in_thread, write_kubeconfig

TOOLS = REPO / ".tools" / "bin"
Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def kube_apiserver() -> Iterator[KubeAPIServer]:
    """A fresh server with the chart's CRDs installed, served from a background thread.

    ``kube_apiserver.url`` is its base URL. At teardown the test fails if the emulator itself broke
    (``failures``: exceptions it answered with a 500).
    """
    server = KubeAPIServer(crds=CHART_CRDS)
    with serve_in_thread(server):
        yield server
    assert not server.failures, server.failures


@pytest.fixture
def kubeconfig(kube_apiserver: KubeAPIServer, tmp_path: Path) -> Path:
    """A kubeconfig file pointing at ``kube_apiserver`` (namespace ``default``)."""
    return write_kubeconfig(tmp_path / "kubeconfig", kube_apiserver.server_url)


class KubeHTTP:
    """Raw HTTP against the server, for asserting on status codes and bodies: ``api.get(path)``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        content_type: str = "application/json",
        **kwargs: object,
    ) -> requests.Response:
        data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
        return self.session.request(method, self.url + path, data=data, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: object, **kwargs: object) -> requests.Response:
        return self.request("POST", path, body, **kwargs)

    def put(self, path: str, body: object, **kwargs: object) -> requests.Response:
        return self.request("PUT", path, body, **kwargs)

    def patch(
        self, path: str, body: object, content_type: str = "application/merge-patch+json", **kwargs: object
    ) -> requests.Response:
        return self.request("PATCH", path, body, content_type, **kwargs)

    def delete(self, path: str, body: object = None, **kwargs: object) -> requests.Response:
        return self.request("DELETE", path, body, **kwargs)


@pytest.fixture
def kueue(kube_apiserver: KubeAPIServer) -> KueueStandIn:
    """Kueue on ``kube_apiserver``: its CRDs (tests/kube/third_party) and a stand-in for its Job
    integration (tests/kube/kueue.py), with the test as its scheduler: ``kueue.admit("job")``."""
    for crd in KUEUE_CRDS:
        kube_apiserver.install_crd(crd)
    stand_in = KueueStandIn(kube_apiserver.store)
    kube_apiserver.store.controllers.append(stand_in)
    return stand_in


@pytest.fixture
def api(kube_apiserver: KubeAPIServer) -> Iterator[KubeHTTP]:
    client = KubeHTTP(kube_apiserver.server_url)
    yield client
    client.session.close()


def kubectl_binary() -> Path:
    """``.tools/bin/kubectl`` (``make tools`` installs it; installed here if it is missing)."""
    binary = TOOLS / "kubectl"
    if not binary.exists():
        subprocess.run([str(REPO / "scripts" / "install_kube_tools.sh"), str(TOOLS)], check=True, timeout=600)
    return binary


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    """Run the real kubectl against ``kube_apiserver``: ``kubectl("get", "ltr", check=False)``.

    Its discovery cache is per test (``KUBECACHEDIR``), never ``~/.kube``.
    """
    binary = kubectl_binary()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KUBECACHEDIR": str(tmp_path / "kube-cache"),
        "NO_COLOR": "1",
    }

    def run(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(binary), *args],
            env=env,
            cwd=REPO,
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    return run
