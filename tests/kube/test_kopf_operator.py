"""kopf against the test API server: a throwaway operator's create -> status patch -> delete flow."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kopf.testing import KopfRunner

from .apiserver import KubeAPIServer

OPERATOR = """
import kopf

@kopf.on.login()
def login(**_):
    return kopf.ConnectionInfo(server="{url}", insecure=True)

@kopf.on.create("llmfab.dev", "v1alpha1", "trainingruns")
def created(spec, patch, **_):
    patch.status["phase"] = "Running"
    patch.status["message"] = "dataset " + spec["dataset"]["name"]

@kopf.on.delete("llmfab.dev", "v1alpha1", "trainingruns")
def deleted(name, **_):
    print("deleted", name)
"""


def _eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (KeyError, AssertionError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(0.1)


def test_kopf_operator_creates_patches_status_and_finalizes(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    operator = tmp_path / "operator.py"
    operator.write_text(textwrap.dedent(OPERATOR.format(url=kube_apiserver.server_url)))
    args = ["run", "--standalone", "--namespace", "default", "--verbose", str(operator)]
    with KopfRunner(args, timeout=60) as runner:
        kube_apiserver.create(
            {
                "apiVersion": "llmfab.dev/v1alpha1",
                "kind": "TrainingRun",
                "metadata": {"name": "tiny"},
                "spec": {"dataset": {"name": "books"}, "release": {"license": "apache-2.0"}},
            }
        )
        run = _eventually(
            lambda: (r := kube_apiserver.read("trainingruns", "tiny"))["status"]["phase"] == "Running" and r
        )
        assert run["status"]["message"] == "dataset books"
        assert run["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
        assert run["metadata"]["generation"] == 1  # kopf's own annotations and status are no spec change

        trainingruns = kube_apiserver.resource_type("trainingruns")
        kube_apiserver.store.delete(trainingruns, "default", "tiny")
        _eventually(lambda: not kube_apiserver.items("trainingruns"))
        time.sleep(1)  # let kopf notice the deletion before it stops
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None
    assert "Handler 'created' succeeded" in runner.output
    assert "deleted tiny" in runner.output
    assert "Handler 'deleted' succeeded" in runner.output
    assert "Traceback" not in runner.output
    patches = [r for r in kube_apiserver.request_log if r.verb == "patch" and r.resource == "trainingruns"]
    assert {r.subresource for r in patches} == {None, "status"}
    assert all(r.code in (200, 422) for r in patches), [(r.path, r.code) for r in patches]
