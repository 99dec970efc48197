"""``spec.dataset`` of a TrainingRun: required where training reads token shards (pretrain, distill),
optional for sft and rl (they bring their own examples); the CRD's CEL rule and pydantic agree."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from llmfab.api import KINDS, ValidationFailed, parse_resource
from llmfab.api.crds import openapi_schema
from tests.kube.crd_schema import apply_defaults, cel_results

SFT = {"objective": "sft", "initFrom": {"trainingRun": "base"}, "sft": {"path": "s.jsonl"}}
RL = {"objective": "rl", "initFrom": {"trainingRun": "sft"}, "rl": {"rewardModel": "rm", "prompts": "p.jsonl"}}
RELEASE = {"release": {"license": "apache-2.0"}}  # a model trained from scratch names its licence


def doc(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "x"},
            "spec": copy.deepcopy(spec)}


def verdicts(spec: dict[str, Any]) -> tuple[bool, bool, str]:
    """(CEL accepts, pydantic accepts, pydantic's message) for one TrainingRun spec."""
    schema = openapi_schema(KINDS["TrainingRun"])
    defaulted = apply_defaults(schema, doc(spec))
    jsonschema.Draft4Validator(schema).validate(defaulted)  # no longer a required property
    cel_ok = all(r.ok for r in cel_results(schema, defaulted))
    try:
        parse_resource(doc(spec))
        return cel_ok, True, ""
    except ValidationFailed as e:
        return cel_ok, False, str(e)


@pytest.mark.parametrize("spec", [SFT, RL, {**SFT, "dataset": {"name": "books"}}, {"dataset": {"name": "books"}, **RELEASE}],
                         ids=["sft", "rl", "sft-with-dataset", "pretrain"])
def test_post_training_may_leave_the_dataset_out(spec: dict[str, Any]) -> None:
    assert verdicts(spec)[:2] == (True, True)


@pytest.mark.parametrize("spec", [RELEASE, {"objective": "distill", "distill": {"teacher": "t"}, **RELEASE}],
                         ids=["pretrain", "distill"])
def test_pretrain_and_distill_without_a_dataset_are_refused_naming_the_field(spec: dict[str, Any]) -> None:
    cel_ok, pydantic_ok, message = verdicts(spec)
    assert not cel_ok and not pydantic_ok
    assert "spec.dataset" in message and "set dataset.name" in message


def test_a_run_without_a_dataset_references_only_what_it_starts_from() -> None:
    run = parse_resource(doc(RL))
    assert run.references() == [("TrainingRun", "sft"), ("RewardModel", "rm")]
