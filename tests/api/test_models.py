"""The API models: defaults from the mission, cross-field rules, and error messages that name the fix."""

from __future__ import annotations

import pytest

from llmfab.api import Dataset, TrainingRun, ValidationFailed, parse_resource


def _run(spec: dict, name: str = "tiny") -> dict:
    return {
        "apiVersion": "llmfab.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"dataset": {"name": "books"}, "release": {"license": "apache-2.0"}, **spec},
    }


def _dataset(spec: dict, name: str = "books") -> dict:
    return {
        "apiVersion": "llmfab.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"sources": [{"path": "a.txt"}], **spec},
    }


def _errors(doc: dict) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        parse_resource(doc)
    return info.value.errors


def test_dataset_defaults_follow_the_mission() -> None:
    ds = parse_resource(_dataset({}))
    assert isinstance(ds, Dataset)
    assert (ds.spec.split.train, ds.spec.split.val, ds.spec.split.test) == (0.8, 0.1, 0.1)
    assert ds.spec.tokenizer.type == "unigram"
    assert ds.spec.dedup.exact and ds.spec.dedup.near.enabled
    assert ds.spec.filters.gopher_quality.min_words == 50
    # SentencePiece's default (4192) silently drops long lines; llmfab raises it.
    assert ds.spec.tokenizer.max_sentence_length > 4192


def test_training_defaults_are_the_small_preset_at_context_512() -> None:
    run = parse_resource(_run({}))
    assert isinstance(run, TrainingRun)
    m = run.spec.model
    assert (m.layers, m.hidden, m.heads, m.context_length) == (6, 512, 8, 512)


def test_preset_fills_shape_and_explicit_fields_win() -> None:
    run = parse_resource(_run({"model": {"preset": "base", "layers": 10}}))
    assert isinstance(run, TrainingRun)
    assert (run.spec.model.layers, run.spec.model.hidden, run.spec.model.heads) == (10, 1024, 16)


def test_hidden_not_divisible_by_heads_names_both_fields_and_a_fix() -> None:
    (err,) = _errors(_run({"model": {"hidden": 500, "heads": 8}}))
    assert err.startswith("TrainingRun/tiny: spec.model.hidden: 500 is not divisible by spec.model.heads (8)")
    assert "choose" in err


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (
            {"model": {"heads": 8, "kvHeads": 3}},
            "spec.model.heads: 8 is not divisible by spec.model.kvHeads (3)",
        ),
        ({"model": {"hidden": 96, "heads": 32}}, "head size hidden/heads = 3 must be even"),
        ({"model": {"layers": 2, "sharing": {"groups": 3}}}, "spec.model.sharing.groups: 3 exceeds"),
        ({"objective": "rl", "initFrom": {"trainingRun": "a"}}, "spec.rl: objective rl needs"),
        ({"objective": "sft", "sft": {"path": "x.jsonl"}}, "spec.initFrom: objective sft starts from a trained model"),
        ({"objective": "sft", "initFrom": {"trainingRun": "a"}}, "spec.sft: objective sft needs spec.sft.path"),
        ({"maxSteps": None}, "spec.maxSteps: set maxSteps or maxTokens"),
        ({"model": {"layers": 0}}, "spec.model.layers: Input should be greater than or equal to 1"),
    ],
)
def test_training_rules_reject_with_field_named(spec: dict, needle: str) -> None:
    errors = _errors(_run(spec))
    assert any(needle in e for e in errors), errors


def test_split_must_sum_to_one() -> None:
    (err,) = _errors(_dataset({"split": {"train": 0.8, "val": 0.1, "test": 0.2}}))
    assert "spec.split: train + val + test = 1.1, must be 1" in err


def test_unknown_field_is_an_error_not_silently_dropped() -> None:
    (err,) = _errors(_dataset({"tokenizer": {"vocabSise": 100}}))
    assert (
        err == "Dataset/books: spec.tokenizer.vocabSise: unknown field; remove it or check its spelling "
        "(see `llmfab explain`)"
    )


def test_snake_case_key_gets_the_camel_case_spelling() -> None:
    (err,) = _errors(_dataset({"tokenizer": {"vocab_size": 100}}))
    assert "write 'vocabSize'" in err


def test_name_must_be_a_dns_label() -> None:
    errors = _errors(_dataset({}, name="Books_1"))
    assert any("metadata.name" in e and "DNS-1123" in e for e in errors)


def test_wrong_api_version_and_kind_are_explained() -> None:
    doc = _dataset({})
    doc["apiVersion"] = "llmfab.dev/v1"
    assert "write 'llmfab.dev/v1alpha1'" in _errors(doc)[0]
    doc = _dataset({})
    doc["kind"] = "Datset"
    assert "is not an llmfab kind" in _errors(doc)[0]


def test_references_name_kind_and_resource() -> None:
    run = parse_resource(_run({"objective": "distill", "distill": {"teacher": "big"}}))
    assert run.references() == [("Dataset", "books"), ("TrainingRun", "big")]


def test_spec_hash_ignores_pod_placement_but_not_the_model() -> None:
    from llmfab.store import spec_hash

    a = parse_resource(_run({}))
    b = parse_resource(_run({"pod": {"nodeSelector": {"gpu": "yes"}}}))
    c = parse_resource(_run({"model": {"layers": 7}}))
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)


def test_dumped_resource_round_trips_explicit_nulls() -> None:
    from llmfab.api.loading import dump_resource

    run = parse_resource(_run({"monitoring": {"prometheusPort": None}}))
    again = parse_resource(dump_resource(run))
    assert isinstance(again, TrainingRun) and again.spec.monitoring.prometheus_port is None
    assert again == run
