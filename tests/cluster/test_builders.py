"""Builders are pure: (resource, settings) -> manifests. Checked on plain dicts, no server; every
manifest is also validated against the Kubernetes OpenAPI schemas offline (kubernetes-validate)."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmfab.api import ValidationFailed, parse_resource
from llmfab.operator.builders.common import ARTIFACTS, SPEC_FILE, child_name, revision
from llmfab.operator.builders.dataset import build_dataset_children
from llmfab.operator.builders.inference import (
    build_deployment,
    build_service,
    build_service_monitor,
    service_url,
)
from llmfab.operator.builders.jobs import build_headless_service, build_stage_job
from llmfab.operator.settings import OperatorSettings

SETTINGS = OperatorSettings(runtime_class_name="nvidia")
K8S_VERSION = "1.33"


RELEASE = {"license": "apache-2.0"}  # a TrainingRun from scratch or a service by path names its model's licence


def resource(kind: str, spec: dict[str, Any], name: str = "demo", generation: int = 3) -> Any:
    if kind in ("TrainingRun", "InferenceService") and "release" not in spec:
        spec = {**spec, "release": RELEASE}
    return parse_resource({
        "apiVersion": "llmfab.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": "ml", "uid": "1234-abcd", "generation": generation},
        "spec": spec,
    })


RUN = {"dataset": {"name": "books"}, "model": {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32}}
MULTI = {**RUN, "parallelism": {"nodes": 3, "processesPerNode": 2},
         "pod": {"retries": 5, "activeDeadlineSeconds": 7200, "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
                 "nodeSelector": {"gpu": "yes"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}


def env_of(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod_spec["containers"][0]["env"]}


def assert_valid(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(copy.deepcopy(manifest), K8S_VERSION, strict=True)


def assert_child_conventions(manifest: dict[str, Any], component: str) -> None:
    meta = manifest["metadata"]
    assert meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [{
        "apiVersion": "llmfab.dev/v1alpha1", "kind": meta["ownerReferences"][0]["kind"], "name": "demo",
        "uid": "1234-abcd", "controller": True, "blockOwnerDeletion": True}]
    labels = meta["labels"]
    assert labels["app.kubernetes.io/name"] == "llmfab" and labels["app.kubernetes.io/instance"] == "demo"
    assert labels["app.kubernetes.io/component"] == component
    assert labels["app.kubernetes.io/part-of"] == "llmfab"
    assert labels["app.kubernetes.io/managed-by"] == "llmfab-operator"


def assert_pod_conventions(pod: dict[str, Any], stage: str) -> None:
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "llmfab", stage, "run", "--spec", SPEC_FILE]
    env = env_of(pod)
    assert env["LLMFAB_HOME"] == ARTIFACTS
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"artifacts": ARTIFACTS, "spec": "/etc/llmfab", "dshm": "/dev/shm"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "llmfab-artifacts"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["serviceAccountName"] == "llmfab-workload"


def test_multi_node_training_is_an_indexed_job_wired_like_kubeflow_trainer() -> None:
    run = resource("TrainingRun", MULTI)
    job = build_stage_job(run, "train", SETTINGS)
    assert_valid(job)
    assert_child_conventions(job, "train")
    spec = job["spec"]
    assert job["metadata"]["name"] == f"demo-train-{revision(run)}"
    assert job["metadata"]["labels"]["llmfab.dev/revision"] == revision(run)
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimitPerIndex"] == 5 and spec["maxFailedIndexes"] == 0
    assert spec["activeDeadlineSeconds"] == 7200
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob",
                        "onExitCodes": {"containerName": "workload", "operator": "In", "values": [2]}}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    pod = spec["template"]["spec"]
    assert_pod_conventions(pod, "train")
    assert pod["restartPolicy"] == "Never" and pod["subdomain"] == "demo-workers"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"gpu": "yes"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "2"
    env = env_of(pod)
    master = f"demo-train-{revision(run)}-0.demo-workers.ml.svc"
    assert env["LLMFAB_RDZV_ENDPOINT"] == f"{master}:29500" and env["MASTER_ADDR"] == master
    assert env["MASTER_PORT"] == "29500" and env["NCCL_DEBUG"] == "INFO"
    assert env["LLMFAB_NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}
    assert env["LLMFAB_STATUS"] == "kubernetes"


def test_headless_service_resolves_pod_zero_before_readiness() -> None:
    run = resource("TrainingRun", MULTI)
    svc = build_headless_service(run, SETTINGS)
    assert_valid(svc)
    assert_child_conventions(svc, "train")
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    pod_labels = build_stage_job(run, "train", SETTINGS)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


def test_single_node_cpu_training_has_no_rank_wiring_and_no_gpu() -> None:
    run = resource("TrainingRun", {**RUN, "pod": {"resources": {"limits": {"nvidia.com/gpu": "0", "cpu": "2"}}}})
    job = build_stage_job(run, "train", SETTINGS)
    assert_valid(job)
    pod = job["spec"]["template"]["spec"]
    assert "MASTER_ADDR" not in env_of(pod) and "subdomain" not in pod and "runtimeClassName" not in pod
    assert pod["containers"][0]["resources"] == {"limits": {"cpu": "2"}}


def test_a_user_env_var_may_not_override_the_rank_wiring() -> None:
    with pytest.raises(ValidationFailed, match=r"spec.pod.env: MASTER_ADDR is set by the operator"):
        resource("TrainingRun", {**RUN, "pod": {"env": [{"name": "MASTER_ADDR", "value": "x"}]}})


def test_output_changes_get_new_job_names_placement_changes_do_not() -> None:
    def name(spec: dict[str, Any], **kw: Any) -> str:
        return str(build_stage_job(resource("TrainingRun", spec, **kw), "train", SETTINGS)["metadata"]["name"])

    base = name(RUN)
    assert name({**RUN, "maxSteps": 7}) != base
    assert name({**RUN, "suspend": True}, generation=9) == base
    assert name({**RUN, "pod": {"nodeSelector": {"a": "b"}}, "deletionPolicy": "Delete"}) == base
    long = name(RUN, name="a" * 63)
    assert len(long) <= 52 and long != child_name(resource("TrainingRun", RUN, name="a" * 62), "train", "x")


def test_dataset_job_and_ray_job() -> None:
    ds = resource("Dataset", {"sources": [{"path": "books/*.txt"}]})
    [job] = build_dataset_children(ds, SETTINGS)
    assert_valid(job)
    assert_child_conventions(job, "data")
    pod = job["spec"]["template"]["spec"]
    assert_pod_conventions(pod, "data")
    assert "nvidia.com/gpu" not in str(pod["containers"][0].get("resources")) and "runtimeClassName" not in pod
    ray = resource("Dataset", {"sources": [{"path": "books/*.txt"}],
                               "engine": {"type": "ray", "ray": {"cluster": "raycluster-kuberay"}}})
    [ray_job] = build_dataset_children(ray, SETTINGS)
    assert ray_job["apiVersion"] == "ray.io/v1" and ray_job["kind"] == "RayJob"
    assert ray_job["spec"]["clusterSelector"] == {"ray.io/cluster": "raycluster-kuberay"}
    runtime = yaml.safe_load(ray_job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert runtime["LLMFAB_HOME"] == ARTIFACTS
    spec = yaml.safe_load(runtime["LLMFAB_SPEC"])
    assert spec["metadata"]["annotations"]["llmfab.dev/source-dir"] == ARTIFACTS
    assert "llmfab data run --spec" in ray_job["spec"]["entrypoint"]


def test_reward_model_job_is_a_one_node_training_job() -> None:
    rm = resource("RewardModel", {"base": {"trainingRun": "base"}, "preferences": {"path": "p.jsonl"},
                                  "parallelism": {"processesPerNode": 2}})
    job = build_stage_job(rm, "reward", SETTINGS)
    assert_valid(job)
    assert job["spec"]["completions"] == 1
    pod = job["spec"]["template"]["spec"]
    assert_pod_conventions(pod, "reward")
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_inference_service_deployment_service_and_monitor() -> None:
    svc_res = resource("InferenceService", {"model": {"trainingRun": "base"}, "replicas": 2,
                                            "server": {"port": 8000, "tensorParallelSize": 1}})
    dep = build_deployment(svc_res, SETTINGS, use_service_monitor=False)
    assert_valid(dep)
    assert_child_conventions(dep, "serve")
    assert dep["spec"]["replicas"] == 2
    template = dep["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    pod = template["spec"]
    assert_pod_conventions(pod, "serve")
    container = pod["containers"][0]
    assert container["image"] == SETTINGS.serving_image
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": 8000}
    assert env_of(pod)["LLMFAB_STATUS"] == "off"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert dep["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    service = build_service(svc_res)
    assert_valid(service)
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service_url(svc_res) == "http://demo.ml.svc:8000/v1"
    with_monitor = build_deployment(svc_res, SETTINGS, use_service_monitor=True)
    assert "prometheus.io/scrape" not in with_monitor["spec"]["template"]["metadata"]["annotations"]
    monitor = build_service_monitor(svc_res, {"release": "kps"})
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_a_changed_service_spec_rolls_the_deployment() -> None:
    a = resource("InferenceService", {"model": {"trainingRun": "base"}})
    b = resource("InferenceService", {"model": {"trainingRun": "base"}, "quantization": {"groupSize": 32}})
    hash_a = build_deployment(a, SETTINGS, False)["spec"]["template"]["metadata"]["annotations"]
    hash_b = build_deployment(b, SETTINGS, False)["spec"]["template"]["metadata"]["annotations"]
    assert hash_a["llmfab.dev/spec-hash"] != hash_b["llmfab.dev/spec-hash"]


def test_settings_come_from_the_environment_and_unknown_ones_are_refused() -> None:
    s = OperatorSettings.from_env({"LLMFAB_OPERATOR_TRAINER_IMAGE": "reg/t:1",
                                   "LLMFAB_OPERATOR_SERVICE_MONITOR_LABELS": '{"release": "kps"}',
                                   "LLMFAB_OPERATOR_NAMESPACES": "a,b"})
    assert s.trainer_image == "reg/t:1" and s.service_monitor_labels == {"release": "kps"}
    with pytest.raises(ValueError, match="LLMFAB_OPERATOR_TRAINER_IMAGEE: unknown operator setting"):
        OperatorSettings.from_env({"LLMFAB_OPERATOR_TRAINER_IMAGEE": "x"})


def test_training_pods_expose_rank_zeros_metrics_port_for_scraping() -> None:
    pod = build_stage_job(resource("TrainingRun", RUN), "train", SETTINGS)["spec"]["template"]
    assert pod["spec"]["containers"][0]["ports"] == [{"name": "metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9400"
    off = build_stage_job(resource("TrainingRun", {**RUN, "monitoring": {"prometheusPort": None}}), "train", SETTINGS)
    assert "ports" not in off["spec"]["template"]["spec"]["containers"][0]


def test_the_operator_without_credentials_or_with_a_bad_setting_exits_2_saying_why(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBERNETES_", "LLMFAB_OPERATOR_"))}
    run = [sys.executable, "-m", "llmfab.operator"]
    out = subprocess.run(run, env={**env, "KUBECONFIG": str(tmp_path / "none"), "HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "error: no Kubernetes credentials" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(run, env={**env, "LLMFAB_OPERATOR_MAX_NODE": "2"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "LLMFAB_OPERATOR_MAX_NODE: unknown operator setting" in out.stderr
