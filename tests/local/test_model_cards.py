"""Every model the quickstart makes leaves with a card: examples/quickstart.yaml with tiny shapes,
run the way `llmfab up` and the pods run it (the TrainingRun's train and eval stages by `llmfab up`,
the InferenceService's quantize and eval stages by their workload commands; serving is
tests/serving's), then each card read back with huggingface_hub.

Checked here: the card loads and its metadata passes llmfab's checks (a Hub licence id, ISO
languages, a model-index huggingface_hub parses); every model-index figure is the status figure it
came from; the body names the sources with their licences, the filters, the chain, the bias probes
and intended use; the 4-bit card names its base and inherits the run's licence; report.html links
the card; `llmfab card` prints it; a changed spec.release rewrites the card without retraining.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Processes
from huggingface_hub import ModelCard

from llmfab.cards.metadata import check, figures_of

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

TINY_EVAL = {"perplexity": {"maxTokens": 3000}, "generation": {"samples": 2, "promptTokens": 8, "maxNewTokens": 8},
             "bias": {"bootstrapSamples": 100, "completionsPerPrompt": 1, "completionTokens": 4, "categories": ["gender", "religion"]}}
TINY = {  # the example's fields that are replaced
    "books": {},
    "tiny": {"model": {"layers": 2, "hidden": 64, "heads": 2, "contextLength": 64}, "maxSteps": 4,
             "precision": "fp32", "batch": {"globalTokens": 512}, "checkpoint": {"everySteps": 4},
             "evalEverySteps": 4, "evalBatches": 1, "eval": TINY_EVAL},
    "tiny-chat": {"quantization": {"calibrationSamples": 4}, "eval": TINY_EVAL},
}
# model-index (metric type, split) -> the status path it must equal; every figure a card can carry
EXPECTED = {
    ("perplexity", "validation"): "eval.valPerplexity", ("perplexity", "test"): "eval.testPerplexity",
    ("bleu", "test"): "eval.bleu", ("bias_stereotype_rate", None): "eval.biasStereotypeRate",
    ("sentiment_gap", None): "eval.sentimentGap", ("perplexity_ratio", "test"): "eval.quantizedPerplexityRatio",
}


def tiny_quickstart(work: Path) -> tuple[Path, Path]:
    """(the example with tiny shapes for `llmfab up`, its InferenceService alone for the stage commands)."""
    docs = list(yaml.safe_load_all((REPO / "examples" / "quickstart.yaml").read_text()))
    assert [d["metadata"]["name"] for d in docs] == list(TINY)
    for doc in docs:
        for key, value in TINY[doc["metadata"]["name"]].items():
            doc["spec"][key] = {**doc["spec"].get(key, {}), **value} if isinstance(value, dict) else value
        if doc["kind"] == "Dataset":
            doc["spec"]["sources"][0]["path"] = str(REPO / "examples" / doc["spec"]["sources"][0]["path"])
    (work / "quickstart.yaml").write_text(yaml.safe_dump_all(docs[:2], sort_keys=False))
    (work / "service.yaml").write_text(yaml.safe_dump(docs[2], sort_keys=False))
    return work / "quickstart.yaml", work / "service.yaml"


def status(home: Path, kind_dir: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / kind_dir / f"{name}.status.json").read_text())
    return data


def at(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data[part]
    return data


def assert_figures_are_the_status(card: ModelCard, state: dict[str, Any]) -> None:
    results = card.data.eval_results or []
    assert results, "the card has no model-index"
    for r in results:
        path = EXPECTED[(r.metric_type, r.dataset_split)] if r.metric_type != "rouge" else None
        if path is not None:
            assert r.metric_value == at(state, path), (r.metric_name, r.metric_value, path)
    assert {p: v for p, v in figures_of(card).items()} == {
        p: at(state, p) for p in figures_of(card)}  # the rouge ones too, by their names


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("quickstart-cards")
    pipeline, service = tiny_quickstart(work)
    home = work / "home"
    env = {**os.environ, "LLMFAB_HOME": str(home), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    (work / "logs").mkdir()
    processes = Processes(work / "logs")
    try:
        up = processes.run([sys.executable, "-m", "llmfab", "up", "-f", str(pipeline)], env=env, timeout=900)
        assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
        for stage in ("quantize", "eval"):
            done = processes.run([sys.executable, "-m", "llmfab", stage, "run", "--spec", str(service)], env=env,
                                 timeout=600)
            assert done.returncode == 0, (stage, done.stdout[-4000:], done.stderr[-4000:])
    finally:
        processes.kill_all()
    return {"home": home, "env": env, "pipeline": pipeline, "work": work}


def test_the_trained_model_card_loads_and_its_figures_are_the_status(quickstart: dict[str, Any]) -> None:
    home = quickstart["home"]
    card = ModelCard.load(home / "runs" / "tiny" / "model" / "README.md")
    assert check(card) == []
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["language"] == ["en"] and "llmfab" in data["tags"]
    assert "base_model" not in data  # trained from scratch
    run = status(home, "runs", "tiny")
    assert_figures_are_the_status(card, run)
    assert {"eval.valPerplexity", "eval.testPerplexity", "eval.bleu", "eval.biasStereotypeRate"} <= set(figures_of(card))
    text = card.text
    for expected in ("## Training data", "public-domain", "Project Gutenberg", "gopher_repetition",  # sources, filters
                     "exact_dedup", "## Training", "TrainingRun `tiny`", "pretrain",                # the chain
                     "### Bias probes", "| gender |", "They do not measure",                       # probes and limits
                     "## Intended use", "## Limitations", "not fit for", "vllm serve"):
        assert expected in text, expected
    report = (home / "runs" / "tiny" / "report.html").read_text()
    assert 'href="model/README.md"' in report


def test_the_4bit_card_names_its_base_and_inherits_the_licence(quickstart: dict[str, Any]) -> None:
    home = quickstart["home"]
    card = ModelCard.load(home / "services" / "tiny-chat" / "model-4bit" / "README.md")
    assert check(card) == []
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["base_model"] == "llmfab/TrainingRun/tiny"
    assert "4-bit" in data["tags"]
    service = status(home, "services", "tiny-chat")
    assert_figures_are_the_status(card, service)
    assert "eval.quantizedPerplexityRatio" in figures_of(card)
    assert "TrainingRun/tiny (inherited)" in card.text and "## Compression" in card.text
    assert 'href="model-4bit/README.md"' in (home / "services" / "tiny-chat" / "report.html").read_text()


def test_llmfab_card_prints_the_card_with_the_status_now(quickstart: dict[str, Any], processes: Processes) -> None:
    shown = processes.run([sys.executable, "-m", "llmfab", "card", "ltr", "tiny", "--check"], env=quickstart["env"],
                          timeout=120)
    assert shown.returncode == 0, shown.stderr
    card = ModelCard(shown.stdout)
    assert_figures_are_the_status(card, status(quickstart["home"], "runs", "tiny"))
    wall = status(quickstart["home"], "runs", "tiny")["usage"]["wallSeconds"]
    assert f"{wall:,.4g} s wall" in shown.stdout  # the usage the runner recorded after the last stage
    dataset = processes.run([sys.executable, "-m", "llmfab", "card", "dataset", "books"], env=quickstart["env"],
                            timeout=120)
    assert dataset.returncode == 1 and "Dataset has no model" in dataset.stderr


def test_a_changed_release_rewrites_the_card_without_retraining(quickstart: dict[str, Any], processes: Processes) -> None:
    home, pipeline = quickstart["home"], quickstart["pipeline"]
    weights = home / "runs" / "tiny" / "model" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    docs = list(yaml.safe_load_all(pipeline.read_text()))
    docs[1]["spec"]["release"] = {"license": "mit", "language": ["en"], "intendedUse": "Only the test suite."}
    changed = quickstart["work"] / "changed.yaml"
    changed.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    up = processes.run([sys.executable, "-m", "llmfab", "up", "-f", str(changed)], env=quickstart["env"], timeout=600)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-2000:]
    card = ModelCard.load(home / "runs" / "tiny" / "model" / "README.md")
    assert card.data.license == "mit" and "Only the test suite." in card.text
    assert weights.stat().st_mtime_ns == before  # not retrained, not re-exported
    assert_figures_are_the_status(card, status(home, "runs", "tiny"))
