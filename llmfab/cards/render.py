"""The card: ``huggingface_hub``'s ``ModelCard`` from :class:`CardFacts` and the status figures.

The front matter is ``ModelCardData`` (:mod:`llmfab.cards.metadata`); the body is Markdown built
section by section from the facts (model, training data, training, evaluation and bias, compression,
intended use and limitations, how to serve), each a pure function, so a test can read one section.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard

from llmfab.cards.facts import CardFacts, DataFacts, StageFacts
from llmfab.cards.metadata import FIGURES, card_data

ROLE_TEXT = {
    "pretrain": "pretrained from scratch", "distill": "distilled from a teacher", "sft": "supervised fine-tuned",
    "rl": "tuned with reinforcement learning from a reward model", "reward": "a reward model (one score per dialogue)",
    "quantized": "quantized to 4-bit weights", "export": "exported from a checkpoint",
}
DEFAULT_INTENDED_USE = (
    "Research, teaching and experiments with the whole pipeline: seeing what data, training and compression "
    "do to a small language model, and serving it on a homelab. Output is for reading by the person who "
    "trained it."
)
DEFAULT_LIMITATIONS = (
    "A small model trained from scratch on a small corpus: it writes fluent-looking text that is often wrong, "
    "repeats itself and knows few facts. It is not fit for answering questions whose answers matter "
    "(medical, legal, financial, safety), for decisions about people, for content published without review, "
    "or for any language or domain its training data does not cover. It has no safety tuning beyond what "
    "the Training section says; it reproduces the biases of its training text (see the probes above, which cover "
    "only a few categories in English templates)."
)
PROBES_DO_NOT_COVER = (
    "The probes are templated English sentences: minimal pairs that differ only in a group word (how often the "
    "stereotyping sentence is preferred; 0.5 is no preference) and sampled completions scored for sentiment by "
    "VADER (the largest gap between groups). They do not measure toxicity, bias in other languages or dialects, "
    "intersectional groups, bias in long generations or in a chat, or harms from factual errors; a passing "
    "score is not evidence of fairness, and the intervals are wide for a model this small."
)


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def _cell(value: Any) -> str:
    """A table cell: a spec's free text (a source's origin) may hold a pipe or a line break."""
    return " ".join(_num(value).split()).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary(facts: CardFacts) -> str:
    m, this = facts.model, facts.this
    assert m is not None  # the export fills it in
    parent = f" from {facts.parents[-1].kind} {facts.parents[-1].name}" if facts.parents else ""
    return (f"# {this.name}\n\nA {m.parameters / 1e6:.1f}M-parameter Llama-style decoder ({m.architecture}), "
            f"{ROLE_TEXT[this.role]}{parent} by llmfab ({this.kind} `{this.name}`). "
            f"Licence: **{facts.release.license}** (stated by {facts.release.license_from}).")


def model_section(facts: CardFacts) -> str:
    m = facts.model
    assert m is not None
    rows: list[list[Any]] = [["Architecture", m.architecture], ["Parameters", m.parameters], ["Layers", m.layers],
            ["Hidden size", m.hidden], ["Attention heads (key/value)", f"{m.heads} ({m.kv_heads})"],
            ["MLP size", m.intermediate], ["Context length", m.context_length], ["Vocabulary", m.vocab_size],
            ["Tokenizer", m.tokenizer or "the base model's"], ["Weights", m.dtype]]
    return "## Model\n\n" + _table(["", ""], rows)


def _data_block(data: DataFacts) -> str:
    if data.kind == "file":
        return (f"- **{data.role}**: `{data.name}` ({_num(data.rows)} rows, sha256 `{data.sha256}`); its licence "
                "is not recorded: state it in `spec.release.limitations` if it restricts use.")
    splits = sorted(data.split_tokens.items(), key=lambda kv: ("train", "val", "test").index(kv[0])
                    if kv[0] in ("train", "val", "test") else 3)
    parts = [f"- **{data.role}**: Dataset `{data.name}`, {_num(data.documents)} documents, tokens "
             + ", ".join(f"{k} {_num(v)}" for k, v in splits)]
    if data.sources:
        parts.append("\n\n  " + _table(["Source", "Read from", "Licence", "Origin", "Documents read"], [
            [s.name, s.where, s.license or "not stated", s.origin or "not stated", s.documents]
            for s in data.sources]).replace("\n", "\n  "))
    removing = [s for s in data.steps if s.documents_in != s.documents_out or s.removed]
    if data.steps:
        rows = [[s.name, s.documents_in, s.documents_out,
                 ", ".join(f"{k} {v}" for k, v in sorted(s.removed.items())) or "—"] for s in removing]
        dedup = [s for s in data.steps if s.name in ("exact_dedup", "near_dedup")]
        rates = "; ".join(f"{s.name}: {(s.documents_in - s.documents_out) / max(s.documents_in, 1):.1%} removed"
                          for s in dedup)
        parts.append(f"\n\n  Cleaning, filters and dedup ({len(data.steps)} steps; those that removed documents below). "
                     f"Dedup: {rates or 'not run'}.")
        if rows:
            parts.append("\n\n  " + _table(["Step", "In", "Out", "Removed, by reason"], rows).replace("\n", "\n  "))
    return "".join(parts)


def data_section(facts: CardFacts) -> str:
    blocks = []
    for stage in [*facts.parents, facts.this, *facts.related]:
        if stage.data:
            blocks.append(f"### {stage.kind} {stage.name} ({stage.role})\n\n" + "\n".join(_data_block(d) for d in stage.data))
    body = "\n\n".join(blocks) or "No training data is recorded for this model."
    return ("## Training data\n\nEach source with the licence and origin its Dataset states, then what cleaning, "
            "filtering and deduplication removed (documents; the removed ones are sampled under the Dataset's "
            "`removed/`).\n\n" + body)


def _usage_text(usage: dict[str, Any] | None) -> str:
    if not usage:
        return "—"
    parts = [f"{_num(usage.get('wallSeconds'))} s wall", f"{_num(usage.get('cpuSeconds'))} CPU-s",
             f"{_num(usage.get('gpuHours'))} GPU-h"]
    if usage.get("energyKwh") is not None:
        parts.append(f"{_num(usage.get('energyKwh'))} kWh")
    if usage.get("cost") is not None:
        parts.append(f"cost {_num(usage.get('cost'))} {usage.get('currency') or ''}".rstrip())
    return ", ".join(parts)


def training_section(facts: CardFacts) -> str:
    stages: list[StageFacts] = [*facts.parents, facts.this]
    rows = [[i + 1, f"{s.kind} `{s.name}`", s.role, s.steps, s.tokens, s.precision, s.hardware, s.license,
             _usage_text(s.usage)] for i, s in enumerate(stages)]
    text = ("## Training\n\nThe chain that made this model, oldest first. Usage is each resource's `status.usage` "
            "as its card last saw it (— where none was recorded yet: the runner or operator adds each stage's "
            "after it ends); `llmfab usage KIND NAME` adds up a whole chain now.\n\n"
            + _table(["#", "Resource", "Objective", "Steps", "Tokens", "Precision", "Hardware", "Licence", "Usage"], rows))
    if facts.related:
        text += "\n\nAlso used: " + "; ".join(
            f"{s.kind} `{s.name}` ({s.role}" + "".join(f", {k} {_num(v)}" for k, v in s.figures.items()) + ")"
            for s in facts.related) + "."
    return text


def evaluation_section(facts: CardFacts, figures: dict[str, float], bias: dict[str, Any] | None) -> str:
    rows = [[FIGURES[p].metric_name, _num(v), f"`status.{p}`"] for p, v in figures.items() if p in FIGURES]
    text = "## Evaluation\n\n"
    text += (_table(["Metric", "Value", "Status field"], rows) if rows else
             "No evaluation figures yet (evaluation disabled, or not run yet).")
    if facts.dataset:
        text += f"\n\nPerplexity and generation are measured on Dataset `{facts.dataset}`'s held-out splits."
    text += "\n\n### Bias probes\n\n"
    if bias:
        pairs = (bias.get("minimalPairs") or {}).get("categories") or {}
        regard = (bias.get("regard") or {}).get("categories") or {}
        rows = [[c, _num((pairs.get(c) or {}).get("rate")), _ci((pairs.get(c) or {}).get("ci95")),
                 _num((regard.get(c) or {}).get("gap")), _ci((regard.get(c) or {}).get("gapCi95"))]
                for c in sorted(set(pairs) | set(regard))]
        text += _table(["Category", "Stereotype rate", "95% CI", "Sentiment gap", "95% CI"], rows) + "\n\n"
    elif "eval.biasStereotypeRate" in figures:
        text += "Overall figures in the table above; per category in the run's `eval.json`.\n\n"
    else:
        text += "Not run for this model.\n\n"
    return text + PROBES_DO_NOT_COVER


def _ci(pair: Any) -> str:
    return f"[{_num(pair[0])}, {_num(pair[1])}]" if isinstance(pair, list) and len(pair) == 2 else "—"


def compression_section(facts: CardFacts) -> str | None:
    d = facts.details
    parts = []
    if "quantization" in d:
        q = d["quantization"]
        parts.append(f"4-bit weights ({q.get('algorithm')}, group size {q.get('groupSize')}, "
                     f"{'symmetric' if q.get('symmetric') else 'asymmetric'}, {q.get('format')}), calibrated on "
                     f"{_num(q.get('calibrationSamples'))} sequences: {_num(q.get('sourceSizeBytes'))} bytes of weights "
                     f"became {_num(q.get('sizeBytes'))}. What it cost in quality is "
                     "`status.eval.quantizedPerplexityRatio` above (4-bit over bf16 perplexity on the test split).")
    if "pruning" in d:
        p = d["pruning"]
        parts.append(f"Pruned ({p.get('structure')}, {p.get('method')}): {_num(p.get('parametersBefore'))} -> "
                     f"{_num(p.get('parametersAfter'))} parameters; val perplexity {_num(p.get('valPerplexityBefore'))} "
                     f"before, {_num(p.get('valPerplexityPruned'))} pruned, {_num(p.get('valPerplexityAfter'))} after "
                     f"{_num(p.get('recoverySteps'))} recovery steps.")
    if "distill" in d:
        x = d["distill"]
        parts.append(f"Distilled: student val perplexity {_num(x.get('studentValPerplexity'))} against the teacher's "
                     f"{_num(x.get('teacherValPerplexity'))}, at {_num(x.get('parameterRatio'))} of its parameters.")
    return "## Compression\n\n" + "\n\n".join(parts) if parts else None


def use_section(facts: CardFacts) -> str:
    r = facts.release
    return (f"## Intended use\n\n{r.intended_use or DEFAULT_INTENDED_USE}\n\n"
            f"## Limitations\n\n{r.limitations or DEFAULT_LIMITATIONS}")


def serve_section(facts: CardFacts) -> str:
    if facts.this.role == "reward":
        how = ("Load it with `transformers.AutoModelForSequenceClassification.from_pretrained(DIR)`: one score per "
               "`User: ...\\nAssistant: ...` dialogue; an llmfab TrainingRun uses it as `spec.rl.rewardModel`.")
    else:
        how = ("With vLLM's OpenAI server: `vllm serve DIR --max-model-len "
               f"{facts.model.context_length if facts.model else 'N'}`; or as an llmfab InferenceService (`spec.model.path: DIR`, "
               "or `spec.model.trainingRun`), which quantizes, evaluates, serves and scales it to zero; or "
               "`transformers.AutoModelForCausalLM.from_pretrained(DIR)`.")
    return "## How to use\n\n" + how


def render(facts: CardFacts, figures: dict[str, float], bias: dict[str, Any] | None = None) -> ModelCard:
    """The card of one model directory. ``figures``: status path -> value (what the status has);
    ``bias``: the evaluation's per-category probe results, where they exist."""
    data = card_data(facts, figures)
    sections = [summary(facts), model_section(facts), data_section(facts), training_section(facts),
                evaluation_section(facts, figures, bias), compression_section(facts), use_section(facts),
                serve_section(facts),
                "*Written by llmfab from the resource's status and artifacts; `llmfab card "
                f"{facts.this.kind} {facts.this.name}` prints the current one.*"]
    text = "\n\n".join(s for s in sections if s) + "\n"
    card: ModelCard = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}", body=text)
    return card
