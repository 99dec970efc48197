"""spec.release: a model made from scratch states its licence or is refused, at validation and by the
CRD's CEL alike; a model made from another llmfab model inherits that one's, and says so."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from llmfab.api import KINDS, ValidationFailed, parse_resource
from llmfab.api.crds import openapi_schema
from llmfab.api.release import Release
from llmfab.cards.facts import CardError, CardFacts, ReleaseFacts, StageFacts, resolve_release, with_release
from tests.kube.crd_schema import apply_defaults, cel_results

SCRATCH = {"dataset": {"name": "books"}}
SFT = {"objective": "sft", "sft": {"path": "s.jsonl"}}


def doc(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "llmfab.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": copy.deepcopy(spec)}


def accepted(kind: str, spec: dict[str, Any]) -> tuple[bool, bool, str]:
    """(pydantic accepts, the CRD's CEL accepts, the messages of what refused it)."""
    d = doc(kind, spec)
    schema = openapi_schema(KINDS[kind])
    defaulted = apply_defaults(schema, copy.deepcopy(d))
    jsonschema.Draft4Validator(schema).validate(defaulted)
    refused = [r.message for r in cel_results(schema, defaulted) if not r.ok]
    try:
        parse_resource(d)
        ok, message = True, ""
    except ValidationFailed as e:
        ok, message = False, str(e)
    return ok, not refused, message + " | " + "; ".join(refused)


@pytest.mark.parametrize(("kind", "spec", "valid"), [
    ("TrainingRun", SCRATCH, False),                                              # pretrain: no licence
    ("TrainingRun", {**SCRATCH, "release": {"license": "apache-2.0"}}, True),
    ("TrainingRun", {**SCRATCH, "release": {"language": ["en"]}}, False),          # a release without a licence
    ("TrainingRun", {**SCRATCH, "objective": "distill", "distill": {"teacher": "t"}}, False),
    ("TrainingRun", {**SFT, "initFrom": {"trainingRun": "base"}}, True),           # inherits the base run's
    ("TrainingRun", {**SFT, "initFrom": {"path": "/m"}}, False),                   # a directory: nothing to inherit
    ("TrainingRun", {**SFT, "initFrom": {"path": "/m"}, "release": {"license": "mit"}}, True),
    ("InferenceService", {"model": {"trainingRun": "tiny"}}, True),
    ("InferenceService", {"model": {"path": "/m"}}, False),
    ("InferenceService", {"model": {"path": "/m"}, "release": {"license": "cc-by-4.0"}}, True),
    ("RewardModel", {"base": {"trainingRun": "t"}, "preferences": {"path": "p.jsonl"}}, True),
    ("TrainingRun", {**SCRATCH, "release": {"license": "other"}}, False),           # other: name and link
    ("TrainingRun", {**SCRATCH, "release": {"license": "other", "licenseName": "house",
                                            "licenseLink": "https://example.org/licence"}}, True),
])
def test_a_missing_licence_is_refused_by_validation_and_by_the_crd(kind: str, spec: dict[str, Any], valid: bool) -> None:
    ok, cel_ok, messages = accepted(kind, spec)
    assert ok == cel_ok == valid, messages
    if not valid:
        assert "spec.release" in messages.split(" | ")[0] and "license" in messages, messages


def test_the_refusal_names_the_field_and_the_fix() -> None:
    with pytest.raises(ValidationFailed) as e:
        parse_resource(doc("TrainingRun", SCRATCH))
    message = str(e.value)
    assert "spec.release.license" in message and "apache-2.0" in message and "initFrom.trainingRun" in message


@pytest.mark.parametrize(("release", "word"), [({"license": "apache2"}, "licence id"), ({"language": ["English"]}, "ISO 639")])
def test_unknown_licences_and_languages_are_refused(release: dict[str, Any], word: str) -> None:
    with pytest.raises(ValidationFailed, match=word):
        parse_resource(doc("TrainingRun", {**SCRATCH, "release": {"license": "mit", **release}}))
    schema = openapi_schema(KINDS["TrainingRun"])
    if "license" in release:  # the CRD lists the Hub's licence ids: the API server refuses it too
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft4Validator(schema).validate(doc("TrainingRun", {**SCRATCH, "release": release}))


def test_release_is_not_part_of_the_spec_hash() -> None:
    """Changing the licence rewrites the card; it does not retrain."""
    from llmfab.store import spec_hash

    a = parse_resource(doc("TrainingRun", {**SCRATCH, "release": {"license": "mit"}}))
    b = parse_resource(doc("TrainingRun", {**SCRATCH, "release": {"license": "apache-2.0", "limitations": "x"}}))
    assert spec_hash(a) == spec_hash(b)


def _parent(directory: Path, license_: str) -> Path:
    facts = CardFacts(this=StageFacts(kind="TrainingRun", name="base", role="pretrain", license=license_),
                      release=ReleaseFacts(license=license_, license_from="spec.release.license", language=["en"]))
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(json.dumps({"card": facts.model_dump(mode="json")}))
    return directory


def test_a_post_trained_model_inherits_the_licence_and_says_from_where(tmp_path: Path) -> None:
    parent = _parent(tmp_path / "base" / "model", "cc-by-4.0")
    got = resolve_release(Release(), parent, "TrainingRun/base")
    assert (got.license, got.license_from, got.language) == ("cc-by-4.0", "TrainingRun/base (inherited)", ["en"])
    own = resolve_release(Release(license="mit"), parent, "TrainingRun/base")
    assert (own.license, own.license_from) == ("mit", "spec.release.license")


def test_a_base_without_a_card_is_refused_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text("{}")  # exported before llmfab wrote cards
    with pytest.raises(CardError, match=r"^spec\.release\.license: not set, and TrainingRun/old's model has no card"):
        resolve_release(Release(), tmp_path / "old", "TrainingRun/old")


def test_a_changed_release_keeps_an_inherited_licence_unless_it_states_one() -> None:
    current = ReleaseFacts(license="cc-by-4.0", license_from="TrainingRun/base (inherited)", language=["en"])
    assert with_release(current, Release(limitations="x")).license_from == "TrainingRun/base (inherited)"
    stated = with_release(current, Release(license="mit"))
    assert (stated.license, stated.license_from) == ("mit", "spec.release.license")
    # the spec stops stating one: the base's again, not the one it no longer states
    again = with_release(stated, Release(), ("TrainingRun/base", "cc-by-4.0"))
    assert (again.license, again.license_from) == ("cc-by-4.0", "TrainingRun/base (inherited)")
