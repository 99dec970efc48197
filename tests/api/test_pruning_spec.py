"""spec.pruning's cross-field rules: the API server's CEL and pydantic agree, and say which field is wrong."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from llmfab.api import KINDS, ValidationFailed, parse_resource
from llmfab.api.crds import openapi_schema
from llmfab.api.training_run import PruningSpec
from tests.kube.crd_schema import apply_defaults, cel_results

CASES = [  # (valid spec.pruning, one that breaks exactly one rule, the message pydantic gives)
    ({"structure": "width", "heads": 2}, {"structure": "mlp", "heads": 2}, "spec.pruning.heads: 2 prunes attention heads"),
    ({"structure": "mlp", "intermediate": 64}, {"structure": "2:4", "intermediate": 64},
     "spec.pruning.intermediate: sizes apply to structured pruning"),
    ({"structure": "width", "targetParameters": 1000}, {"targetParameters": 1000},
     "spec.pruning.targetParameters: sizes apply to structured pruning"),
    ({"structure": "mlp", "intermediate": 64}, {"structure": "mlp", "intermediate": 64, "targetParameters": 1000},
     "set one of them"),
    ({"structure": "mlp", "method": "activation"}, {"method": "activation"},
     "spec.pruning.method: activation ranks whole channels and heads"),
    ({"structure": "mlp", "method": "magnitude"}, {"structure": "width", "method": "magnitude"},
     "spec.pruning.method: magnitude has no criterion for attention heads"),
]


def _doc(pruning: dict[str, Any]) -> dict[str, Any]:
    spec = {"dataset": {"name": "books"}, "release": {"license": "apache-2.0"},
            "pruning": {"enabled": True, **copy.deepcopy(pruning)}}
    return {"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun", "metadata": {"name": "x"}, "spec": spec}


@pytest.mark.parametrize(("good", "bad", "message"), CASES)
def test_pruning_rules_agree_between_cel_and_pydantic(good: dict, bad: dict, message: str) -> None:
    schema = openapi_schema(KINDS["TrainingRun"])
    for pruning, valid in ((good, True), (bad, False)):
        doc = _doc(pruning)
        defaulted = apply_defaults(schema, copy.deepcopy(doc))
        jsonschema.Draft4Validator(schema).validate(defaulted)
        cel_ok = all(r.ok for r in cel_results(schema, defaulted))
        try:
            parse_resource(doc)
            pydantic_ok = True
        except ValidationFailed as e:
            pydantic_ok = False
            assert message in str(e)
        assert cel_ok == pydantic_ok == valid, (pruning, cel_results(schema, defaulted))


def test_the_method_defaults_to_activation_for_structured_and_magnitude_for_zeros() -> None:
    assert [PruningSpec(structure=s).chosen_method() for s in ("mlp", "width", "unstructured", "2:4")] == [
        "activation", "activation", "magnitude", "magnitude"]
    assert PruningSpec(structure="mlp", method="magnitude").chosen_method() == "magnitude"
