"""A card's YAML front matter: ``huggingface_hub``'s ``ModelCardData`` with a ``model-index`` whose
every figure is a status figure, and the checks a card's metadata must pass.

``FIGURES`` maps the status paths a card reports (camelCase, as ``kubectl get -o yaml`` shows them)
to the model-index's metric type, name and split. A card reports exactly the figures its status
has, under the name of the status field, and nothing computed on the side.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from llmfab.api.release import _LANGUAGE, HUB_LICENSES
from llmfab.cards.facts import CardFacts


class Figure(NamedTuple):
    metric_type: str
    metric_name: str
    split: str | None
    task: str = "text-generation"


FIGURES: dict[str, Figure] = {
    "eval.valPerplexity": Figure("perplexity", "Perplexity (val split)", "validation"),
    "eval.testPerplexity": Figure("perplexity", "Perplexity (test split)", "test"),
    "eval.bleu": Figure("bleu", "BLEU (0-100), continuing test passages", "test"),
    "eval.rouge1": Figure("rouge", "ROUGE-1 F1", "test"),
    "eval.rouge2": Figure("rouge", "ROUGE-2 F1", "test"),
    "eval.rougeL": Figure("rouge", "ROUGE-L F1", "test"),
    "eval.biasStereotypeRate": Figure("bias_stereotype_rate", "Stereotype preference rate, minimal pairs (ideal 0.5)", None),
    "eval.sentimentGap": Figure("sentiment_gap", "Largest completion sentiment gap between groups", None),
    "eval.quantizedPerplexityRatio": Figure("perplexity_ratio", "4-bit / bf16 perplexity (quantization cost)", "test"),
    "accuracy": Figure("accuracy", "Held-out preference pairs ranked correctly", "validation", "text-classification"),
    "meanReward": Figure("mean_reward", "Mean reward-model score, last RL step", "train", "reinforcement-learning"),
    "kl": Figure("kl", "KL(policy || reference) per token, last RL step", "train", "reinforcement-learning"),
}
BIAS_PROBES = "llmfab bias probes"


def status_figures(status: dict[str, Any]) -> dict[str, float]:
    """The figures of a status (camelCase, as the API has them) that a model-index reports."""
    out: dict[str, float] = {}
    for path in FIGURES:
        value: Any = status
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = float(value)
    return out


def eval_results(facts: CardFacts, figures: dict[str, float]) -> list[EvalResult]:
    """One model-index result per status figure, on the data it was measured on."""
    results = []
    for path, value in figures.items():
        figure = FIGURES.get(path)
        if figure is None:
            continue
        dataset: str | None
        if figure.metric_type in ("bias_stereotype_rate", "sentiment_gap"):
            dataset = BIAS_PROBES
        elif path == "accuracy":
            dataset = _data_name(facts, "preference pairs")
        elif path in ("meanReward", "kl"):
            dataset = _data_name(facts, "RL prompts")
        else:
            dataset = facts.dataset or _data_name(facts, "")
        results.append(EvalResult(
            task_type=figure.task, dataset_type=dataset or "unknown", dataset_name=dataset or "unknown",
            dataset_split=figure.split, metric_type=figure.metric_type, metric_name=figure.metric_name,
            metric_value=value,
        ))
    return results


def _data_name(facts: CardFacts, role: str) -> str | None:
    for data in facts.this.data:
        if not role or data.role == role:
            return data.name
    return None


def base_model(facts: CardFacts) -> str | None:
    """The model this one was made from: its Hub id (``spec.release.repoId``) or the llmfab resource."""
    if not facts.parents:
        return None
    parent = facts.parents[-1]
    return parent.repo_id or f"llmfab/{parent.kind}/{parent.name}"


def card_data(facts: CardFacts, figures: dict[str, float]) -> ModelCardData:
    release = facts.release
    this = facts.this
    tags = ["llmfab", "llama", this.role, *(["gptq", "4-bit", "compressed-tensors"] if this.role == "quantized" else []),
            *release.tags]
    datasets = [s.origin.removeprefix("https://huggingface.co/datasets/") for stage in [*facts.parents, this]
                for d in stage.data for s in d.sources
                if s.origin and s.origin.startswith("https://huggingface.co/datasets/")]
    results = eval_results(facts, figures)
    return ModelCardData(
        license=release.license, license_name=release.license_name, license_link=release.license_link,
        language=release.language or None, tags=list(dict.fromkeys(tags)),
        library_name="transformers", pipeline_tag="text-classification" if this.role == "reward" else "text-generation",
        base_model=base_model(facts), datasets=list(dict.fromkeys(datasets)) or None,
        model_name=release.repo_id or this.name, eval_results=results or None,
    )


def check(card: ModelCard) -> list[str]:
    """What is wrong with a card's metadata, for the Hub and for llmfab: a licence the Hub knows
    (other with a name and link), ISO language codes, a model-index huggingface_hub parses back
    (every result with a number)."""
    problems = []
    data: dict[str, Any] = card.data.to_dict()  # type: ignore[no-untyped-call]
    license_ = data.get("license")
    if license_ not in HUB_LICENSES:
        problems.append(f"license: {license_!r} is not a Hub licence id")
    if license_ == "other" and not (data.get("license_name") and data.get("license_link")):
        problems.append("license other needs license_name and license_link")
    for code in data.get("language") or []:
        if not _LANGUAGE.fullmatch(str(code)):
            problems.append(f"language: {code!r} is not an ISO 639 code")
    index = data.get("model-index")
    if index is not None:
        try:
            parsed = getattr(ModelCard(str(card)).data, "eval_results", None) or []
        except Exception as e:  # huggingface_hub's own parser is the judge
            problems.append(f"model-index: huggingface_hub cannot parse it ({e})")
        else:
            for result in parsed:
                if not isinstance(result.metric_value, int | float):
                    problems.append(f"model-index: {result.metric_name} has no number")
    return problems


def figures_of(card: ModelCard) -> dict[str, Any]:
    """Status path -> value of every model-index result, read back with huggingface_hub (each
    figure's metric name is its own, so the name says which status field it came from)."""
    paths = {(f.metric_type, f.metric_name): path for path, f in FIGURES.items()}
    return {paths.get((r.metric_type, r.metric_name), r.metric_name): r.metric_value
            for r in getattr(card.data, "eval_results", None) or []}
