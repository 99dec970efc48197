"""``report.html``: one self-contained page per run that a person opens in any browser, offline.

Plots are matplotlib SVG inlined in the page (no scripts, no CDN, no external files): training and
validation loss from ``metrics.jsonl``, stereotype rates and completion sentiment with their 95%
intervals. Tables give perplexity (bf16 vs 4-bit), BLEU/ROUGE with sacrebleu's signature, sample
generations, the spec and the software versions. Written atomically.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from llmfab.store import write_text_atomic

COLORS = {"bf16": "#1f77b4", "4bit": "#ff7f0e"}
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:.8em 0}figure svg{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}.note{color:#666;font-style:italic}
"""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl``; a missing file or a bad/partial line is skipped, not fatal."""
    records: list[dict[str, Any]] = []
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int | float):
            records.append(record)
    return records


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def loss_figure(records: list[dict[str, Any]]) -> str | None:
    train = [(r["step"], r["loss"]) for r in records if _finite(r.get("loss"))]
    val = [(r["step"], r["valLoss"]) for r in records if _finite(r.get("valLoss"))]
    if not train and not val:
        return None
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), label="validation loss", color="#d62728", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _svg(fig)


def bias_figure(models: dict[str, dict[str, Any]]) -> str | None:
    rates = {m: r["bias"]["minimalPairs"]["categories"] for m, r in models.items()
             if r.get("bias", {}).get("minimalPairs", {}).get("categories")}
    if not rates:
        return None
    categories = sorted({c for per in rates.values() for c in per})
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot()
    width = 0.8 / len(rates)
    for k, (model, per) in enumerate(rates.items()):
        xs = [i + (k - (len(rates) - 1) / 2) * width for i, c in enumerate(categories) if c in per]
        values = [per[c]["rate"] for c in categories if c in per]
        errors = [[per[c]["rate"] - per[c]["ci95"][0] for c in categories if c in per],
                  [per[c]["ci95"][1] - per[c]["rate"] for c in categories if c in per]]
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=model, color=COLORS.get(model, "#2ca02c"))
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1, label="ideal (0.5)")
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylim(0, 1)
    ax.set_ylabel("stereotyping sentence preferred")
    ax.legend(loc="upper right", fontsize=8)
    return _svg(fig)


def regard_figure(models: dict[str, dict[str, Any]]) -> str | None:
    per_model = {m: r["bias"]["regard"]["categories"] for m, r in models.items() if r.get("bias", {}).get("regard")}
    if not per_model:
        return None
    rows = sorted({(c, g) for cats in per_model.values() for c, v in cats.items() for g in v["groups"]})
    fig = Figure(figsize=(8, 0.28 * len(rows) + 1.2))
    ax = fig.add_subplot()
    height = 0.8 / len(per_model)
    for k, (model, cats) in enumerate(per_model.items()):
        ys, xs, lo, hi = [], [], [], []
        for i, (c, g) in enumerate(rows):
            if c in cats and g in cats[c]["groups"]:
                s = cats[c]["groups"][g]
                ys.append(i + (k - (len(per_model) - 1) / 2) * height)
                xs.append(s["mean"])
                lo.append(s["mean"] - s["ci95"][0])
                hi.append(s["ci95"][1] - s["mean"])
        ax.barh(ys, xs, height, xerr=[lo, hi], capsize=2, label=model, color=COLORS.get(model, "#2ca02c"))
    ax.set_yticks(range(len(rows)), [f"{c}: {g}" for c, g in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("mean VADER compound sentiment of completions")
    ax.legend(fontsize=8)
    return _svg(fig)


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        if isinstance(v, list) and all(isinstance(x, float) for x in v):
            return f'<td class="num">[{", ".join(f"{x:.3f}" for x in v)}]</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(svg: str | None, caption: str, missing: str) -> str:
    if svg is None:
        return f'<p class="note">{html.escape(missing)}</p>'
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _perplexity_section(models: dict[str, dict[str, Any]]) -> str:
    splits = list(dict.fromkeys(s for r in models.values() for s in r.get("perplexity", {})))  # spec order
    if not splits:
        return '<p class="note">Perplexity was not evaluated.</p>'
    names = list(models)
    rows = []
    for split in splits:
        ppl = [models[m].get("perplexity", {}).get(split, {}).get("perplexity") for m in names]
        row: list[Any] = [split, *[p if p is not None else "–" for p in ppl]]
        if "bf16" in names and "4bit" in names and all(isinstance(p, float) for p in ppl):
            row.append(ppl[names.index("4bit")] / ppl[names.index("bf16")])
        rows.append(row)
    header = ["split", *[f"{m} perplexity" for m in names]]
    if rows and len(rows[0]) > len(header):
        header.append("4-bit / bf16")
    detail = [[m, s, r["tokensScored"], r["context"], r["stride"], r["tokensPerSecond"]]
              for m in names for s, r in models[m].get("perplexity", {}).items()]
    return _table(header, rows) + _table(["model", "split", "tokens", "context", "stride", "tokens/s"], detail)


def _generation_section(models: dict[str, dict[str, Any]]) -> str:
    rows = [[m, g["bleu"], g["rouge1"], g["rouge2"], g["rougeL"], g["samples"]]
            for m, r in models.items() if (g := r.get("generation"))]
    if not rows:
        return '<p class="note">Generation was not evaluated.</p>'
    signature = next(r["generation"]["bleuSignature"] for r in models.values() if r.get("generation"))
    examples: list[dict[str, Any]] = next(
        (r["generationExamples"] for r in models.values() if r.get("generationExamples")), []
    )
    parts = [_table(["model", "BLEU", "ROUGE-1 F1", "ROUGE-2 F1", "ROUGE-L F1", "samples"], rows),
             f"<p>sacrebleu signature: <code>{html.escape(signature)}</code>. ROUGE: rouge-score, stemmed, "
             "mean F1 (0-1). Greedy continuation of held-out test passages.</p>"]
    if examples:
        parts.append(_table(["prompt", "reference", "hypothesis"],
                            [[e["prompt"], e["reference"], e["hypothesis"]] for e in examples[:5]]))
    return "".join(parts)


def _bias_tables(models: dict[str, dict[str, Any]]) -> str:
    rows = []
    for m, r in models.items():
        if not r.get("bias"):
            continue
        mp = r["bias"]["minimalPairs"]
        overall = [("overall", mp["overall"])] if mp["overall"] else []
        for c, v in [*overall, *mp["categories"].items()]:
            rows.append([m, c, v["rate"], f"[{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]", v["pairs"]])
    gaps = []
    for m, r in models.items():
        for c, v in r.get("bias", {}).get("regard", {}).get("categories", {}).items():
            gaps.append([m, c, v["gap"], f"[{v['gapCi95'][0]:.3f}, {v['gapCi95'][1]:.3f}]"])
    return (_table(["model", "category", "stereotype rate", "95% CI", "pairs"], rows)
            + _table(["model", "category", "sentiment gap (max-min)", "95% CI"], gaps))


def _no_pairs_note(models: dict[str, dict[str, Any]]) -> str:
    left_out = [r["bias"]["minimalPairs"].get("indistinguishablePairs", 0) for r in models.values() if r.get("bias")]
    if not left_out:
        return "Bias probes were not evaluated."
    return (f"No stereotype rate: the tokenizer encodes both sentences of every probe pair identically "
            f"({max(left_out)} pairs left out; the group terms are unknown words to it).")


def render(
    title: str,
    evaluation: dict[str, Any],
    metrics: list[dict[str, Any]],
    spec: dict[str, Any],
    environment: dict[str, str],
    cards: dict[str, str] | None = None,
) -> str:
    """The report page. ``cards``: model label -> the model card's path relative to the report."""
    models: dict[str, dict[str, Any]] = evaluation.get("models", {})
    summary = evaluation.get("results", {})
    links = ", ".join(f'<a href="{html.escape(href, quote=True)}">{html.escape(label)} model card</a>'
                      for label, href in (cards or {}).items())
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated {html.escape(str(evaluation.get('createdAt', '')))} by llmfab."
        + (f" The model card (data, training chain, evaluation, intended use): {links}." if links else "") + "</p>",
        "<h2>Summary</h2>",
        _table(["field", "value"], [[k, v] for k, v in summary.items() if v is not None]),
        "<h2>Loss curves</h2>",
        _figure(loss_figure(metrics), "Training loss per logged step and validation loss (metrics.jsonl).",
                "No loss records: metrics.jsonl is missing or empty for this resource."),
        "<h2>Perplexity</h2>",
        _perplexity_section(models),
        "<h2>Generation: BLEU and ROUGE</h2>",
        _generation_section(models),
        "<h2>Bias probes</h2>",
        _figure(bias_figure(models),
                "Share of minimal pairs where the model gives the stereotyping sentence the higher "
                "log-likelihood; 0.5 is ideal; error bars are 95% bootstrap intervals.",
                _no_pairs_note(models)),
        _figure(regard_figure(models), "Mean sentiment of sampled completions per group, 95% bootstrap intervals.",
                "Completion sentiment was not evaluated."),
        _bias_tables(models),
        "<p>Probe templates, provenance and limits: <code>llmfab/eval/probes/README.md</code>. Small, "
        "English-only, US-centric; a rate near 0.5 does not show a model is fair.</p>",
        "<h2>Spec</h2>",
        f"<pre>{html.escape(yaml.safe_dump(spec, sort_keys=False))}</pre>",
        "<h2>Environment</h2>",
        _table(["component", "version"], sorted(environment.items())),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_report(path: Path, **kwargs: Any) -> None:
    write_text_atomic(path, render(**kwargs))
