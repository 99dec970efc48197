"""StatusReporter: the file backend (llmfab up) and the /status-patch backend (pods), the latter
against kmock's Kubernetes emulator over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from llmfab.api import parse_resource
from llmfab.api.common import Phase, Resource
from llmfab.status import FileStatusReporter, NullStatusReporter, reporter_for

RUNS = "llmfab.dev/v1alpha1/trainingruns"


def _run() -> Resource:
    return parse_resource(
        {
            "apiVersion": "llmfab.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": "tiny", "generation": 3},
            "spec": {"dataset": {"name": "books"}, "release": {"license": "apache-2.0"}},
        }
    )


def test_file_reporter_writes_phase_conditions_progress_and_events(tmp_path: Path) -> None:
    reporter = FileStatusReporter(_run(), tmp_path)
    reporter.phase(Phase.RUNNING, "Started", "training")
    reporter.progress(step=5, loss=2.5)
    reporter.phase(Phase.SUCCEEDED, "Completed", "done")
    status = json.loads((tmp_path / "runs" / "tiny.status.json").read_text())
    assert status["phase"] == "Succeeded" and status["step"] == 5 and status["observedGeneration"] == 3
    assert status["startTime"] and status["completionTime"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "Ready": "True", "Progressing": "False", "Complete": "True", "Failed": "False", "Suspended": "False"
    }
    events = [json.loads(line) for line in (tmp_path / "runs" / "tiny.events.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in events] == ["Started", "Completed"]


def test_only_rank_zero_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert isinstance(reporter_for(_run()), NullStatusReporter)


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """kmock's Kubernetes emulator on a loopback port, with the TrainingRun CRD registered."""
    ready, stop, box = threading.Event(), threading.Event(), {}

    async def serve() -> None:
        async with kmock.KubernetesEmulator() as k, kmock.Server(k) as server:
            k.resources.load_bundled()
            k.resources[RUNS] = kmock.ResourceInfo(
                kind="TrainingRun",
                namespaced=True,
                subresources={"status"},
                verbs={"get", "list", "watch", "patch", "create"},
            )
            k.objects[RUNS, "default", "tiny"] = {
                "apiVersion": "llmfab.dev/v1alpha1",
                "kind": "TrainingRun",
                "metadata": {"name": "tiny", "namespace": "default"},
                "spec": {"dataset": {"name": "books"}},
            }
            box["k"], box["url"] = k, str(server.url).rstrip("/")
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.02)

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(20), "kmock did not start"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "clusters": [{"name": "kmock", "cluster": {"server": box["url"]}}],
                "users": [{"name": "u", "user": {"token": "test"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("LLMFAB_STATUS", "kubernetes")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield box["k"]
    stop.set()
    thread.join(10)


def test_pod_reporter_patches_the_status_subresource_and_posts_events(emulator: Any) -> None:
    reporter = reporter_for(_run())
    reporter.phase(Phase.RUNNING, "Started", "training")
    reporter.progress(step=7, loss=1.25, tokensPerSecond=1000.0)
    stored = emulator.objects[RUNS, "default", "tiny"].last.raw
    status = stored["status"]
    assert status["phase"] == "Running" and status["step"] == 7 and status["tokensPerSecond"] == 1000.0
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Complete", "Failed", "Suspended"}
    assert stored["spec"] == {"dataset": {"name": "books"}}  # only status was touched
    events = [emulator.objects[key].last.raw for key in emulator.objects if key[0].plural == "events"]
    assert any(e["reason"] == "Started" and e["involvedObject"]["name"] == "tiny" for e in events)


def test_pod_reporter_reads_its_own_status_and_another_resources(emulator: Any) -> None:
    """What a model card's writer reads in a pod: its usage so far, and its base's (``get`` on the
    ``/status`` subresource, which the workload's role allows); nothing, not an error, for what is absent."""
    reporter = reporter_for(_run())
    reporter.progress(step=3, usage={"wallSeconds": 5.0, "attempts": 1})
    assert reporter.current()["usage"] == {"wallSeconds": 5.0, "attempts": 1}
    assert reporter.status_of("TrainingRun", "tiny")["step"] == 3
    assert reporter.status_of("TrainingRun", "absent") == {}
