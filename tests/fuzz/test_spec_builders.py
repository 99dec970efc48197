"""Property: whatever pod settings a resource's author writes into an InferenceService or a
TrainingRun, the operator either builds manifests a real API server would store (kubernetes-validate
on the OpenAPI schemas, then the test API server's admission: the pod validation of
pkg/apis/core/validation that schemas cannot express), or refuses the spec with an error that
names the field. Never an exception out of the builders, and never a manifest the API server
answers with 422 (the operator would retry it forever while the resource says nothing).

The settings come from the Kubernetes spellings a user might write, valid or nearly so (label
keys, quantities, tolerations, class names, sub-paths, ports), and from the chart's pod policy,
open or restricted.
"""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
from hypothesis import example, given
from hypothesis import strategies as st

from llmfab.api import ValidationFailed, parse_resource
from llmfab.operator.builders.common import build_spec_config_map
from llmfab.operator.builders.inference import build_deployment, build_service
from llmfab.operator.builders.jobs import build_headless_service, build_stage_job
from llmfab.operator.builders.refusals import refusals
from llmfab.operator.settings import OperatorSettings
from tests.kube import admission

K8S_VERSION = "1.33"
OPEN = OperatorSettings(runtime_class_name="nvidia")
RESTRICTED = OPEN.model_copy(update={
    "allowed_images": ["ghcr.io/llmfab/*"], "allowed_runtime_classes": ["nvidia"], "allowed_priority_classes": [],
    "allowed_claims": ["team-*"], "allowed_toleration_keys": ["nvidia.com/gpu"]})
BUILTIN_ADMISSION = {"Job": ("batch", "jobs"), "Deployment": ("apps", "deployments"), "Service": ("", "services")}

# Names and values as Kubernetes users write them, plus near misses.
words = st.sampled_from(["gpu", "a100", "team-a", "nvidia.com/gpu", "node-role.kubernetes.io/control-plane",
                         "example.com/x", "Bad Key", "-x", "x_", "a" * 64, "", "ok.value", "UPPER"])
quantities = st.sampled_from(["1", "0", "2", "500m", "1.5", "4Gi", "16G", "1e3", "-1", "1.2.3", "1Gi", "0.5",
                              "+2", ".5", "1Ki", "3m"])
resource_names = st.sampled_from(["cpu", "memory", "nvidia.com/gpu", "ephemeral-storage", "gpu", "example.com/fpga"])
tolerations = st.fixed_dictionaries({}, optional={
    "key": words, "operator": st.sampled_from(["Exists", "Equal"]), "value": words,
    "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
    "tolerationSeconds": st.integers(0, 3600)})
env = st.fixed_dictionaries({"name": st.sampled_from(["NCCL_DEBUG", "HF_HOME", "LLMFAB_FEEDBACK_TOKEN", "X1"]),
                             "value": st.text(max_size=8)})
pod_settings = st.fixed_dictionaries({}, optional={
    "image": st.sampled_from(["ghcr.io/llmfab/trainer:dev", "evil.example/x:1", " reg/x:1", "reg/x:1 ", ""]),
    "resources": st.fixed_dictionaries({}, optional={
        "requests": st.dictionaries(resource_names, quantities, max_size=3),
        "limits": st.dictionaries(resource_names, quantities, max_size=3)}),
    "nodeSelector": st.dictionaries(words, words, max_size=2),
    "tolerations": st.lists(tolerations, max_size=2),
    "env": st.lists(env, max_size=2, unique_by=lambda e: e["name"]),
    "priorityClassName": st.sampled_from(["high", "system-node-critical", "Bad_Class", "a." * 130]),
    "runtimeClassName": st.sampled_from(["nvidia", "kata", "Not Valid", "runc"]),
    "activeDeadlineSeconds": st.integers(1, 10**6),
    "retries": st.integers(0, 100),
})
storage = st.fixed_dictionaries({}, optional={
    "claimName": st.sampled_from(["team-a", "llmfab-artifacts", "other", "Bad Claim"]),
    "subPath": st.sampled_from(["team-a", "a/b", "../etc", "/abs", "a/../../b", "..x"]),
})
ports = st.sampled_from([8000, 8080, 9400, 1024])


def resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "llmfab.dev/v1alpha1", "kind": kind,
            "metadata": {"name": "demo", "namespace": "ml", "uid": "1234-abcd", "generation": 1}, "spec": spec}


def inference_service(pod: dict[str, Any], store: dict[str, Any], server_port: int, feedback_port: int,
                      feedback: bool) -> dict[str, Any]:
    return resource("InferenceService", {
        "model": {"path": "/m"}, "release": {"license": "apache-2.0"}, "pod": pod, "storage": store, "server": {"port": server_port},
        "feedback": {"enabled": feedback, "port": feedback_port, "tokenSecret": {"name": "fb"}}})


def training_run(pod: dict[str, Any], store: dict[str, Any], nodes: int, metrics_port: int) -> dict[str, Any]:
    return resource("TrainingRun", {
        "dataset": {"name": "books"}, "release": {"license": "apache-2.0"}, "model": {"layers": 2, "hidden": 64, "heads": 4, "contextLength": 32},
        "parallelism": {"nodes": nodes}, "monitoring": {"prometheusPort": metrics_port}, "pod": pod,
        "storage": store})


def outcome(doc: dict[str, Any], settings: OperatorSettings) -> list[dict[str, Any]]:
    """The manifests the operator would apply, or [] where it refuses the spec; an error that does
    not name a spec field fails the property."""
    try:
        res = parse_resource(copy.deepcopy(doc))
    except ValidationFailed as e:
        assert all(": spec." in line for line in e.errors), e.errors
        return []
    refused = refusals(res, settings)
    if refused:
        assert all(r.message.startswith("spec.") for r in refused), refused
        return []
    manifests = [build_spec_config_map(res)]
    if res.KIND == "InferenceService":
        manifests += [build_deployment(res, settings, use_service_monitor=False), build_service(res)]  # type: ignore[arg-type]
    else:
        manifests += [build_stage_job(res, "train", settings), build_headless_service(res, settings, "train")]
    return manifests


def assert_the_api_server_stores(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(copy.deepcopy(manifest), K8S_VERSION, strict=True)
    causes = admission.metadata_causes(manifest["metadata"], label_name=False)
    if manifest["kind"] in BUILTIN_ADMISSION:
        stored = copy.deepcopy(manifest)
        stored["metadata"]["uid"] = "5678-efgh"  # the server's, before admission
        causes += admission.BUILTIN[BUILTIN_ADMISSION[manifest["kind"]]](stored, None)
    assert not causes, [str(c) for c in causes]


@given(pod=pod_settings, store=storage, server_port=ports, feedback_port=ports, feedback=st.booleans(),
       restricted=st.booleans())
# The feedback app on vLLM's port: a Service with one port twice (422), two servers on one port.
@example(pod={}, store={}, server_port=8000, feedback_port=8000, feedback=True, restricted=False)
def test_inference_service_pod_settings_build_valid_manifests_or_are_refused_naming_the_field(
    pod: dict[str, Any], store: dict[str, Any], server_port: int, feedback_port: int, feedback: bool,
    restricted: bool,
) -> None:
    doc = inference_service(pod, store, server_port, feedback_port, feedback)
    for manifest in outcome(doc, RESTRICTED if restricted else OPEN):
        assert_the_api_server_stores(manifest)


@given(pod=pod_settings, store=storage, nodes=st.integers(1, 3), metrics_port=ports, restricted=st.booleans())
# What this property found in the API before issue 19's fixes; each was a 422 from the API server,
# or (the GPU counts) a ValueError traceback out of the builders.
@example(pod={"resources": {"limits": {"nvidia.com/gpu": "500m"}}}, store={}, nodes=1, metrics_port=9400,
         restricted=False)
@example(pod={"resources": {"requests": {"nvidia.com/gpu": "1Gi"}}}, store={}, nodes=1, metrics_port=9400,
         restricted=False)
@example(pod={"resources": {"limits": {"cpu": "1.2.3"}}}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={"resources": {"limits": {"memory": "-1"}}}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={"resources": {"limits": {"gpu": "2"}}}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={"resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "1.5"}}}, store={}, nodes=1,
         metrics_port=9400, restricted=False)
# Found in review: an exponent past decimal's default range raised decimal.Overflow (a traceback).
@example(pod={"resources": {"requests": {"cpu": "1e999999999"}, "limits": {"cpu": "2"}}}, store={}, nodes=1,
         metrics_port=9400, restricted=False)
@example(pod={"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1e99999999999999999999"}}}, store={},
         nodes=1, metrics_port=9400, restricted=False)
@example(pod={"tolerations": [{"key": "a100", "tolerationSeconds": 17}]}, store={}, nodes=1, metrics_port=9400,
         restricted=False)
@example(pod={"tolerations": [{}]}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}, store={}, nodes=1,
         metrics_port=9400, restricted=False)
@example(pod={"tolerations": [{"key": "-x"}]}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={"nodeSelector": {"Bad Key": "x"}}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={"image": " reg/x:1"}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={"runtimeClassName": "Not Valid"}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={"priorityClassName": "Bad_Class"}, store={}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={}, store={"subPath": "a/../../b"}, nodes=1, metrics_port=9400, restricted=False)
@example(pod={}, store={"subPath": "/abs"}, nodes=1, metrics_port=9400, restricted=False)
def test_training_run_pod_settings_build_valid_manifests_or_are_refused_naming_the_field(
    pod: dict[str, Any], store: dict[str, Any], nodes: int, metrics_port: int, restricted: bool
) -> None:
    doc = training_run(pod, store, nodes, metrics_port)
    for manifest in outcome(doc, RESTRICTED if restricted else OPEN):
        assert_the_api_server_stores(manifest)
