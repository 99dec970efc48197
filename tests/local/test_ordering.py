"""Ordering resources by their references, before anything runs."""

from __future__ import annotations

import pytest

from llmfab.api import parse_resource
from llmfab.api.common import Resource
from llmfab.local.ordering import OrderingError, dependents, order_resources


def _res(kind: str, name: str, spec: dict) -> Resource:
    return parse_resource(
        {"apiVersion": "llmfab.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


def _dataset(name: str, tokenizer_from: str | None = None) -> Resource:
    spec: dict = {"sources": [{"path": "a.txt"}]}
    if tokenizer_from:
        spec["tokenizer"] = {"fromDataset": {"name": tokenizer_from}}
    return _res("Dataset", name, spec)


def _run(name: str, dataset: str, teacher: str | None = None) -> Resource:
    spec: dict = {"dataset": {"name": dataset}, "release": {"license": "apache-2.0"}}
    if teacher:
        spec.update(objective="distill", distill={"teacher": teacher})
    return _res("TrainingRun", name, spec)


def _service(name: str, run: str) -> Resource:
    return _res("InferenceService", name, {"model": {"trainingRun": run}})


def _keys(resources: list[Resource]) -> list[str]:
    return [r.key for r in resources]


def test_dependencies_come_first_whatever_the_file_order() -> None:
    items = [
        _service("chat", "student"),
        _run("student", "books", teacher="teacher"),
        _run("teacher", "books"),
        _dataset("books"),
    ]
    assert _keys(order_resources(items)) == [
        "Dataset/books",
        "TrainingRun/teacher",
        "TrainingRun/student",
        "InferenceService/chat",
    ]


def test_independent_resources_keep_file_order() -> None:
    items = [_dataset("b"), _dataset("a"), _dataset("c", tokenizer_from="a")]
    assert _keys(order_resources(items)) == ["Dataset/b", "Dataset/a", "Dataset/c"]


def test_cycle_is_reported_with_its_path() -> None:
    items = [_dataset("a", tokenizer_from="b"), _dataset("b", tokenizer_from="a")]
    with pytest.raises(OrderingError, match=r"reference cycle: Dataset/a -> Dataset/b -> Dataset/a"):
        order_resources(items)


def test_dangling_reference_names_the_missing_resource() -> None:
    with pytest.raises(OrderingError, match=r"TrainingRun/tiny: references Dataset/nope, which is neither"):
        order_resources([_run("tiny", "nope")])


def test_reference_satisfied_by_the_store_is_not_dangling() -> None:
    built = {("Dataset", "books")}
    ordered = order_resources([_run("tiny", "books")], lambda k, n: (k, n) in built)
    assert _keys(ordered) == ["TrainingRun/tiny"]


def test_dependents_of_a_failure_are_blocked_transitively() -> None:
    items = [_dataset("books"), _run("tiny", "books"), _service("chat", "tiny"), _dataset("other")]
    assert dependents(items, {("Dataset", "books")}) == {
        ("TrainingRun", "tiny"),
        ("InferenceService", "chat"),
    }
