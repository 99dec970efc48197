"""The real kubectl (.tools/bin/kubectl, v1.37) against the test API server: what a user types works
and prints what it prints against a cluster."""

from __future__ import annotations

from pathlib import Path

import yaml

from .apiserver import REPO, KubeAPIServer
from .conftest import Kubectl

EXAMPLES = REPO / "examples"
CRD = yaml.safe_load((REPO / "charts/llmfab/crds/llmfab.dev_trainingruns.yaml").read_text())


def example_resources() -> list[tuple[str, str]]:
    docs = [d for f in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return [(d["kind"], d["metadata"]["name"]) for d in docs]


def test_apply_accepts_every_example(kube_apiserver: KubeAPIServer, kubectl: Kubectl) -> None:
    out = kubectl("apply", "-f", "examples/").stdout
    expected = example_resources()
    assert len(expected) >= 4
    assert sorted(out.splitlines()) == sorted(
        f"{kind.lower()}.llmfab.dev/{name} created" for kind, name in expected
    )
    for kind, name in expected:
        assert kube_apiserver.read(kind, name)["metadata"]["generation"] == 1
    again = kubectl("apply", "-f", "examples/").stdout
    assert all(line.endswith((" unchanged", " configured")) for line in again.splitlines()), again


def test_get_prints_the_crd_printer_columns(kube_apiserver: KubeAPIServer, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "examples/quickstart.yaml")
    trainingruns = kube_apiserver.resource_type("trainingruns")
    run = kube_apiserver.read("trainingruns", "tiny")
    status = {"phase": "Running", "step": 40, "loss": 5.25, "etaSeconds": 90}
    kube_apiserver.store.update(
        trainingruns, "default", "tiny", {**run, "status": status}, subresource="status"
    )
    header, row = kubectl("get", "trainingruns").stdout.splitlines()
    columns = [c["name"].upper() for c in CRD["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert header.split() == ["NAME", *columns]
    assert {"PHASE", "STEP", "LOSS", "AGE"} <= set(columns)
    cells = row.split()
    assert cells[:4] == ["tiny", "Running", "40", "5.25"]
    assert cells[-1].endswith("s")  # the age of a resource created a moment ago


def test_get_by_short_name_as_yaml(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "examples/quickstart.yaml")
    listed = yaml.safe_load(kubectl("get", "ltr", "-o", "yaml").stdout)
    assert listed["kind"] == "List"
    [run] = listed["items"]
    assert (run["kind"], run["metadata"]["name"]) == ("TrainingRun", "tiny")
    assert (
        run["spec"]["model"]["hidden"] == 192 and run["spec"]["objective"] == "pretrain"
    )  # given, and defaulted
    assert "kubectl.kubernetes.io/last-applied-configuration" in run["metadata"]["annotations"]


def test_describe_shows_spec_status_and_events(kube_apiserver: KubeAPIServer, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "examples/quickstart.yaml")
    run = kube_apiserver.read("trainingruns", "tiny")
    kube_apiserver.create(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": "tiny.1"},
            "involvedObject": {
                "apiVersion": run["apiVersion"],
                "kind": "TrainingRun",
                "name": "tiny",
                "namespace": "default",
                "uid": run["metadata"]["uid"],
            },
            "reason": "JobCreated",
            "message": "created Job tiny-train",
            "type": "Normal",
            "source": {"component": "llmfab-operator"},
            "count": 1,
        }
    )
    out = kubectl("describe", "trainingrun", "tiny").stdout
    lines = [line.strip() for line in out.splitlines()]
    assert "Name:         tiny" in out and "Kind:         TrainingRun" in out
    assert "Spec:" in lines and "Events:" in out
    assert any(line.startswith("Hidden:") and line.endswith("192") for line in lines)
    assert any(
        "JobCreated" in line and "llmfab-operator" in line and "created Job tiny-train" in line
        for line in lines
    ), out


def test_delete_removes_every_example(kube_apiserver: KubeAPIServer, kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "examples/")
    out = kubectl("delete", "-f", "examples/").stdout
    assert len(out.splitlines()) == len(example_resources())
    assert all(" deleted" in line for line in out.splitlines())
    for kind in ("trainingruns", "datasets", "rewardmodels", "inferenceservices"):
        assert kube_apiserver.items(kind) == []
    assert "No resources found" in kubectl("get", "ltr").stderr


BAD = """\
apiVersion: llmfab.dev/v1alpha1
kind: TrainingRun
metadata: {name: uneven}
spec: {dataset: {name: books}, release: {license: apache-2.0}, model: {hidden: 500, heads: 8}}
---
apiVersion: llmfab.dev/v1alpha1
kind: TrainingRun
metadata: {name: typo}
spec: {dataset: {name: books}, release: {license: apache-2.0}, model: {hidden: wide}}
---
apiVersion: llmfab.dev/v1alpha1
kind: TrainingRun
metadata: {name: unknown}
spec: {dataset: {name: books}, release: {license: apache-2.0}, modle: {hidden: 512}}
"""

INDEXED_JOB = """\
apiVersion: batch/v1
kind: Job
metadata: {name: ranks}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: "llmfab:test"}]
"""


def test_apply_of_a_bad_resource_fails_naming_the_field(kubectl: Kubectl, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = kubectl("apply", "-f", str(bad), check=False)
    assert result.returncode != 0
    errors = result.stderr.splitlines()
    assert (
        f'Error from server (Invalid): error when creating "{bad}": TrainingRun.llmfab.dev "uneven" is invalid: spec.model: Invalid value: "object": hidden must be divisible by heads'
        in errors
    )
    assert any(
        '"typo" is invalid: spec.model.hidden: Invalid value: "string"' in e
        and "must be of type integer" in e
        for e in errors
    )
    assert any(
        e.startswith("Error from server (BadRequest)") and 'unknown field "spec.modle"' in e for e in errors
    )
    assert "No resources found" in kubectl("get", "trainingruns").stderr


def test_apply_of_builtin_kinds_and_the_job_controller(
    kube_apiserver: KubeAPIServer, kubectl: Kubectl, tmp_path: Path
) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(INDEXED_JOB)
    assert kubectl("apply", "-f", str(manifest)).stdout.strip() == "job.batch/ranks created"
    pods = kubectl("get", "pods", "-l", "job-name=ranks", "-o", "name").stdout.split()
    assert sorted(p.rsplit("-", 1)[0] for p in pods) == ["pod/ranks-0", "pod/ranks-1"]
    for pod in kube_apiserver.items("pods"):
        kube_apiserver.set_pod_phase(pod, "Succeeded")
    kubectl("wait", "--for=condition=complete", "job/ranks", "--timeout=10s")
    assert "Completed Indexes:  0,1" in kubectl("describe", "job", "ranks").stdout
    kubectl("delete", "job", "ranks")  # kubectl deletes with propagationPolicy=Background
    assert kube_apiserver.items("pods") == []


SCALED = """\
apiVersion: llmfab.dev/v1alpha1
kind: InferenceService
metadata: {name: chat}
spec: {model: {path: /models/tiny}, release: {license: apache-2.0}, replicas: 2}
---
apiVersion: llmfab.dev/v1alpha1
kind: InferenceService
metadata: {name: auto}
spec: {model: {path: /models/tiny}, release: {license: apache-2.0},
      autoscaling: {minReplicas: 0, maxReplicas: 2}}
"""


def test_kubectl_scale_writes_spec_replicas_through_the_scale_subresource(
    kube_apiserver: KubeAPIServer, kubectl: Kubectl, tmp_path: Path
) -> None:
    manifest = tmp_path / "services.yaml"
    manifest.write_text(SCALED)
    kubectl("apply", "-f", str(manifest))
    assert kubectl("scale", "lis", "chat", "--replicas=0").stdout.strip() == "inferenceservice.llmfab.dev/chat scaled"
    assert kube_apiserver.read("lis", "chat")["spec"]["replicas"] == 0
    assert any(r.subresource == "scale" and r.verb == "patch" and r.code == 200 for r in kube_apiserver.request_log)
    refused = kubectl("scale", "lis", "auto", "--replicas=0", check=False)
    assert refused.returncode != 0
    assert "spec.replicas and spec.autoscaling exclude each other" in refused.stderr, refused.stderr
    assert "replicas" not in kube_apiserver.read("lis", "auto")["spec"]
