"""Generated CRDs: committed = generated, structural, valid for Kubernetes, CEL rules agree with pydantic."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from llmfab.api import KINDS, ValidationFailed, load_resources, parse_resource
from llmfab.api.common import cluster_only_problems
from llmfab.api.crds import build_crd, crd_filename, openapi_schema, render_crd
from llmfab.api.loading import dump_resource as _dump_with_nulls
from tests.kube.crd_schema import apply_defaults, cel_results


def dump_resource(res: Any) -> dict[str, Any]:
    """What a user would send: the resource without null fields (the API server treats them as unset)."""
    return _strip_none(_dump_with_nulls(res))


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "charts" / "llmfab" / "crds"


@pytest.mark.parametrize("kind", list(KINDS))
def test_committed_crd_equals_fresh_generation(kind: str) -> None:
    cls = KINDS[kind]
    committed = CRD_DIR / crd_filename(cls)
    assert committed.exists(), f"run `llmfab crds --out {CRD_DIR}`"
    assert committed.read_text() == render_crd(cls), f"stale CRD: run `llmfab crds --out {CRD_DIR}`"


@pytest.mark.parametrize("kind", list(KINDS))
def test_crd_passes_kubernetes_schema_validation(kind: str) -> None:
    crd = build_crd(KINDS[kind])
    kubernetes_validate.validate(crd, "1.33", strict=True)


def _walk(node: dict[str, Any], path: str = ""):
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_is_structural(kind: str) -> None:
    schema = openapi_schema(KINDS[kind])
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_spec_field_has_a_description(kind: str) -> None:
    spec = openapi_schema(KINDS[kind])["properties"]["spec"]
    missing = [
        p
        for p, node in _walk(spec, "spec")
        if p != "spec" and not node.get("description") and not p.endswith(("[]", "{}"))
    ]
    assert not missing, f"fields without description: {missing}"


def test_short_names_do_not_clash_with_common_crds() -> None:
    taken = {"isvc", "ds", "po", "svc", "deploy", "rm", "tr", "tj", "pytorchjob", "rc", "sts", "rj", "rs"}
    for cls in KINDS.values():
        assert not set(cls.SHORT_NAMES) & taken, cls.KIND


# --- CEL: each rule, evaluated by a real CEL implementation, agrees with the pydantic check -------
# Structural defaulting and CEL evaluation are the test API server's (tests/kube/crd_schema.py).


BASE = {
    "Dataset": {"sources": [{"path": "a.txt"}]},
    "TrainingRun": {"dataset": {"name": "books"}, "release": {"license": "apache-2.0"}},
    "RewardModel": {"base": {"trainingRun": "tiny"}, "preferences": {"path": "p.jsonl"}},
    "InferenceService": {"model": {"trainingRun": "tiny"}, "release": {"license": "apache-2.0"}},
}

CASES = [  # (kind, spec patch that is valid, spec patch that breaks exactly one CEL rule)
    (
        "Dataset",
        {"split": {"train": 0.9, "val": 0.05, "test": 0.05}},
        {"split": {"train": 0.9, "val": 0.1, "test": 0.1}},
    ),
    ("Dataset", {"sources": [{"path": "a"}]}, {"sources": [{"path": "a", "huggingface": {"path": "x"}}]}),
    ("Dataset", {"dedup": {"near": {"bands": 16, "rows": 8}}}, {"dedup": {"near": {"bands": 20, "rows": 8}}}),
    ("Dataset", {"dedup": {"near": {"bands": 16, "rows": 8}}}, {"dedup": {"near": {"bands": 16}}}),
    (
        "Dataset",
        {"filters": {"perplexity": {"lowPercentile": 5, "highPercentile": 95}}},
        {"filters": {"perplexity": {"lowPercentile": 50, "highPercentile": 40}}},
    ),
    (
        "Dataset",
        {"tokenizer": {"path": "a.model"}},
        {"tokenizer": {"path": "a.model", "fromDataset": {"name": "other"}}},
    ),
    ("TrainingRun", {"model": {"hidden": 512, "heads": 8}}, {"model": {"hidden": 500, "heads": 8}}),
    ("TrainingRun", {"model": {"heads": 8, "kvHeads": 2}}, {"model": {"heads": 8, "kvHeads": 3}}),
    ("TrainingRun", {"model": {"hidden": 128, "heads": 32}}, {"model": {"hidden": 96, "heads": 32}}),
    (
        "TrainingRun",
        {"model": {"layers": 6, "sharing": {"groups": 3}}},
        {"model": {"layers": 2, "sharing": {"groups": 3}}},
    ),
    ("TrainingRun", {"objective": "distill", "distill": {"teacher": "t"}}, {"objective": "distill"}),
    ("TrainingRun", {"objective": "sft", "initFrom": {"trainingRun": "t"}, "sft": {"path": "s.jsonl"}},
     {"objective": "sft", "sft": {"path": "s.jsonl"}}),
    ("TrainingRun", {"objective": "sft", "initFrom": {"trainingRun": "t"}, "sft": {"path": "s.jsonl"}},
     {"objective": "sft", "initFrom": {"trainingRun": "t"}}),
    (
        "RewardModel",
        {"preferences": {"inferenceService": "chat"}},
        {"preferences": {"path": "p.jsonl", "inferenceService": "chat"}},
    ),
    ("InferenceService", {"model": {"path": "/m"}}, {"model": {"path": "/m", "trainingRun": "tiny"}}),
    (
        "InferenceService",
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "allowAnonymous": True}},
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "allowAnonymous": True}, "replicas": 2},
    ),
    (  # issue 21: one feedback writer under autoscaling too
        "InferenceService",
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "allowAnonymous": True},
         "autoscaling": {"maxReplicas": 1}},
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "allowAnonymous": True},
         "autoscaling": {"maxReplicas": 2}},
    ),
    (  # issue 21: replicas and autoscaling exclude each other
        "InferenceService",
        {"model": {"path": "/m"}, "autoscaling": {"minReplicas": 0}},
        {"model": {"path": "/m"}, "autoscaling": {"minReplicas": 0}, "replicas": 1},
    ),
    (
        "InferenceService",
        {"model": {"path": "/m"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 2}},
        {"model": {"path": "/m"}, "autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
    ),
    # Cluster-only rules (issue 19): the CRD refuses an open feedback app and a plain-text token.
    (
        "InferenceService",
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "tokenSecret": {"name": "fb", "key": "token"}}},
        {"model": {"path": "/m"}, "feedback": {"enabled": True}},
    ),
    (
        "InferenceService",
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "tokenSecret": {"name": "fb"}},
         "pod": {"env": [{"name": "OTHER", "value": "x"}]}},
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "tokenSecret": {"name": "fb"}},
         "pod": {"env": [{"name": "LLMFAB_FEEDBACK_TOKEN", "value": "hunter2"}]}},
    ),
    (  # the token's secretKeyRef would replace the operator's LLMFAB_HOME (issue 19 review)
        "InferenceService",
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "allowAnonymous": True, "tokenEnv": "FB_TOKEN"}},
        {"model": {"path": "/m"}, "feedback": {"enabled": True, "allowAnonymous": True, "tokenEnv": "LLMFAB_HOME"}},
    ),
    (
        "TrainingRun",
        {"pod": {"env": [{"name": "NCCL_DEBUG", "value": "INFO"}]}},
        {"pod": {"env": [{"name": "MASTER_ADDR", "value": "elsewhere"}]}},
    ),
    # Pod settings a real API server refuses in the pod (issue 19's fuzzing): refused at apply.
    ("TrainingRun", {"pod": {"resources": {"limits": {"nvidia.com/gpu": "2", "cpu": "4"}}}},
     {"pod": {"resources": {"limits": {"gpu": "2"}}}}),
    ("TrainingRun", {"pod": {"resources": {"requests": {"example.com/fpga": "1"}}}},
     {"pod": {"resources": {"requests": {"nvidia.com/gpu": "1Gi"}}}}),
    ("TrainingRun", {"pod": {"tolerations": [{"operator": "Exists"}]}}, {"pod": {"tolerations": [{"value": "x"}]}}),
    ("TrainingRun", {"pod": {"tolerations": [{"key": "k", "operator": "Exists"}]}},
     {"pod": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}}),
    ("TrainingRun", {"pod": {"tolerations": [{"key": "k", "effect": "NoExecute", "tolerationSeconds": 5}]}},
     {"pod": {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}}),
    ("TrainingRun", {"pod": {"nodeSelector": {"example.com/gpu": "a100"}}}, {"pod": {"nodeSelector": {"gpu": "A 100"}}}),
    ("TrainingRun", {"pod": {"nodeSelector": {"gpu": "a100"}}}, {"pod": {"nodeSelector": {"Bad Key": "x"}}}),
    ("TrainingRun", {"storage": {"subPath": "team-a/x..y"}}, {"storage": {"subPath": "a/../../b"}}),
    ("TrainingRun", {"storage": {"subPath": "a"}}, {"storage": {"subPath": "/etc"}}),
    ("InferenceService", {"model": {"path": "/m"}, "feedback": {"enabled": True, "allowAnonymous": True, "port": 8080}},
     {"model": {"path": "/m"}, "feedback": {"enabled": True, "allowAnonymous": True, "port": 8000}}),
]


def _doc(kind: str, patch: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(BASE[kind])
    spec.update(copy.deepcopy(patch))
    spec = {k: v for k, v in spec.items() if v is not None}
    return {"apiVersion": "llmfab.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize(("kind", "good", "bad"), CASES)
def test_cel_rule_agrees_with_pydantic(kind: str, good: dict, bad: dict) -> None:
    schema = openapi_schema(KINDS[kind])
    for patch, valid in ((good, True), (bad, False)):
        doc = _doc(kind, patch)
        defaulted = apply_defaults(schema, copy.deepcopy(doc))
        jsonschema.Draft4Validator(schema).validate(defaulted)  # types, enums, bounds are fine in both cases
        cel_ok = all(r.ok for r in cel_results(schema, defaulted))
        try:  # what llmfab accepts on a cluster: its pydantic rules and its cluster-only rules
            pydantic_ok = not cluster_only_problems(parse_resource(doc).spec)  # type: ignore[attr-defined]
        except ValidationFailed:
            pydantic_ok = False
        assert cel_ok == pydantic_ok == valid, (patch, cel_results(schema, defaulted))


def test_an_open_feedback_app_is_refused_on_a_cluster_but_allowed_locally() -> None:
    """``llmfab up`` serves the app on loopback, where an open app is only this machine's; the CRD
    (a cluster) refuses it and names the field and the fix."""
    doc = _doc("InferenceService", {"model": {"path": "/m"}, "feedback": {"enabled": True}})
    res = parse_resource(doc)  # the local runner and the workload accept it
    [problem] = cluster_only_problems(res.spec)  # type: ignore[attr-defined]
    assert problem.startswith("spec.feedback.tokenSecret: a feedback app without a token")
    assert "allowAnonymous: true" in problem
    schema = openapi_schema(KINDS["InferenceService"])
    [refused] = [r for r in cel_results(schema, apply_defaults(schema, copy.deepcopy(doc))) if not r.ok]
    assert "spec.feedback.tokenSecret" in refused.message


def test_cel_name_rule_rejects_bad_names() -> None:
    schema = openapi_schema(KINDS["Dataset"])
    assert all(r.ok for r in cel_results(schema, {"metadata": {"name": "books-1"}}))
    assert not all(r.ok for r in cel_results(schema, {"metadata": {"name": "Books_1"}}))


def test_examples_validate_with_pydantic_and_against_the_crd_schema() -> None:
    resources = load_resources([REPO / "examples"])
    assert {r.KIND for r in resources} >= {"Dataset", "TrainingRun", "RewardModel", "InferenceService"}
    for res in resources:
        schema = openapi_schema(type(res))
        doc = yaml.safe_load(yaml.safe_dump(dump_resource(res)))
        defaulted = apply_defaults(schema, doc)
        jsonschema.Draft4Validator(schema).validate(defaulted)
        assert all(r.ok for r in cel_results(schema, defaulted)), res.key


def test_crd_defaults_match_pydantic_defaults() -> None:
    """What the API server stores for a minimal resource equals what pydantic fills in."""
    for kind in BASE:
        schema = openapi_schema(KINDS[kind])
        doc = _doc(kind, {})
        server_side = apply_defaults(schema, copy.deepcopy(doc))["spec"]
        client_side = dump_resource(parse_resource(doc))["spec"]
        assert server_side == client_side, kind
