"""``llmfab eval run --spec FILE``: evaluate a TrainingRun's export or an InferenceService's models.

TrainingRun: ``<root>/runs/<name>/model`` (bf16) on its Dataset. InferenceService: the bf16 source
model and, when quantization has produced it, ``<root>/services/<name>/model-4bit``, so the cost of
quantization is one number. Outputs go beside the resource's other artifacts, each written
atomically and nothing else touched: ``eval.json``, ``report.html``, ``generations-<model>.jsonl``.
Status gets ``eval`` (EvalResults, camelCase). Re-running with an unchanged spec and unchanged model
files reuses ``eval.json`` (``--force`` re-evaluates).
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from llmfab.api.common import utc_now
from llmfab.api.evaluation import EvalResults, EvalSpec
from llmfab.api.inference_service import InferenceService
from llmfab.api.training_run import TrainingRun
from llmfab.cards import CARD_FILE, refresh_card
from llmfab.data.shards import DataFormatError, DatasetInfo
from llmfab.errors import WorkloadError
from llmfab.eval import bias, generation, model_io, perplexity, regard, report
from llmfab.status import read_status
from llmfab.store import read_manifest, write_json_atomic
from llmfab.workload import WorkloadContext

VERSIONED = ("llmfab", "torch", "transformers", "numpy", "sacrebleu", "rouge-score", "vaderSentiment",
             "compressed-tensors", "matplotlib")


def environment() -> dict[str, str]:
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "torch threads": str(torch.get_num_threads())}
    for name in VERSIONED:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return env


NOT_WEIGHTS = {CARD_FILE, "manifest.json"}  # rewritten with a new card; the model is the same


def fingerprint(model_dirs: dict[str, Path]) -> str:
    """Changes whenever a model file changes (name, size, mtime), so a re-export re-evaluates; the
    card and manifest, which evaluation itself writes again, do not count."""
    h = hashlib.sha256()
    for label, directory in sorted(model_dirs.items()):
        for p in sorted(directory.rglob("*")):
            if p.is_file() and p.relative_to(directory).as_posix() not in NOT_WEIGHTS:
                st = p.stat()
                h.update(f"{label}/{p.relative_to(directory)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _dataset_of_run(run_dir: Path) -> str | None:
    """The Dataset a TrainingRun trained on, from its manifest (trainer-written) or status file."""
    for source in (read_manifest(run_dir), read_status(TrainingRun.ARTIFACT_DIR, run_dir.name, run_dir.parents[1])):
        value = (source or {}).get("dataset")
        if isinstance(value, dict):
            value = value.get("name")
        if isinstance(value, str):
            return value
    return None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, json.JSONDecodeError):
        return None


def resolve_inputs(ctx: WorkloadContext) -> tuple[dict[str, Path], Path | None, Path | None]:
    """(models by label, Dataset dir or None, metrics.jsonl or None) for the resource."""
    res = ctx.resource
    if isinstance(res, TrainingRun):
        # sft and rl runs may have no Dataset (spec.dataset): then no perplexity or generation scores.
        dataset = ctx.dependency("Dataset", res.spec.dataset.name) if res.spec.dataset else None
        return {"bf16": ctx.out_dir / "model"}, dataset, ctx.out_dir / "metrics.jsonl"
    if not isinstance(res, InferenceService):
        raise WorkloadError(f"kind: `llmfab eval run` takes TrainingRun or InferenceService, not {res.KIND}")
    source = res.spec.model
    dataset_name = res.spec.quantization.calibration_dataset
    metrics = None
    if source.training_run:
        run_dir = ctx.dependency("TrainingRun", source.training_run)
        model_dir = run_dir / "model"
        metrics = run_dir / "metrics.jsonl"
        dataset_name = dataset_name or _dataset_of_run(run_dir)
    else:
        model_dir = ctx.resolve(str(source.path))
    models = {"bf16": model_dir}
    quantized = ctx.out_dir / "model-4bit"
    if res.spec.quantization.method != "none" and (quantized / "config.json").is_file():
        models["4bit"] = quantized
    return models, (ctx.dependency("Dataset", dataset_name) if dataset_name else None), metrics


def evaluate_model(
    label: str, model_dir: Path, spec: EvalSpec, dataset: DatasetInfo | None, out_dir: Path,
    log: Any,
) -> dict[str, Any]:
    """Every enabled evaluation of one model directory, as JSON-ready dicts."""
    model = model_io.load_model(model_dir, spec.dtype)
    tokenizer = model_io.load_tokenizer(model_dir, dataset.hf_tokenizer_dir if dataset else None)
    eos = dataset.eos_id if dataset else int(tokenizer.eos_token_id)
    context = model_io.context_length(model)
    result: dict[str, Any] = {"path": str(model_dir), "sizeBytes": model_io.weights_size_bytes(model_dir)}
    if spec.perplexity.enabled and dataset is not None:
        result["perplexity"] = {}
        for split in spec.perplexity.splits:
            tokens = dataset.split(split).tokens(spec.perplexity.max_tokens)
            r = perplexity.perplexity(model, tokens, context, spec.perplexity.stride,
                                      spec.perplexity.batch_size, split)
            result["perplexity"][split] = r.to_json()
            log("Perplexity", f"{label} {split}: {r.perplexity:.3f} over {r.tokens_scored} tokens "
                f"({r.tokens_per_second:.0f} tokens/s)")
    if spec.generation.enabled and dataset is not None:
        g = spec.generation
        r_gen = generation.evaluate_generation(
            model, tokenizer, list(dataset.split("test").documents()), g.samples, g.prompt_tokens,
            g.max_new_tokens, eos, context)
        generation.write_samples_jsonl(out_dir / f"generations-{label}.jsonl", r_gen.samples)
        result["generation"] = r_gen.to_json()
        result["generationExamples"] = [vars(s) for s in r_gen.samples[:5]]
        log("Generation", f"{label}: BLEU {r_gen.bleu:.2f}, ROUGE-L {r_gen.rouge_l:.3f}")
    if spec.bias.enabled:
        b = spec.bias
        result["bias"] = {
            "minimalPairs": bias.evaluate_minimal_pairs(model, tokenizer, b.categories, eos, b.bootstrap_samples),
            "regard": regard.evaluate_regard(model, tokenizer, b.categories, eos, b.completions_per_prompt,
                                             b.completion_tokens, b.bootstrap_samples),
        }
        pairs = result["bias"]["minimalPairs"]
        if pairs["overall"] is None:
            log("Bias", f"{label}: the tokenizer cannot tell any probe pair apart (unknown words); no rate")
        else:
            log("Bias", f"{label}: stereotype rate {pairs['overall']['rate']:.3f} "
                f"({pairs['indistinguishablePairs']} pairs the tokenizer cannot tell apart left out)")
    return result


def summarize(models: dict[str, dict[str, Any]], report_path: Path | None) -> EvalResults:
    """Status numbers: those of the served model (4-bit when present), plus the quantization ratio."""
    label = "4bit" if "4bit" in models else "bf16"
    m = models[label]
    ppl = m.get("perplexity", {})
    gen = m.get("generation", {})
    out = EvalResults(
        model=label,
        val_perplexity=ppl.get("val", {}).get("perplexity"),
        test_perplexity=ppl.get("test", {}).get("perplexity"),
        bleu=gen.get("bleu"), rouge1=gen.get("rouge1"), rouge2=gen.get("rouge2"), rouge_l=gen.get("rougeL"),
        report=str(report_path) if report_path else None,
    )
    if m.get("bias"):
        overall = m["bias"]["minimalPairs"]["overall"]
        if overall is not None:
            out.bias_stereotype_rate, out.bias_stereotype_rate_ci95 = overall["rate"], overall["ci95"]
        cats = m["bias"]["regard"]["categories"]
        if cats:
            worst = max(cats, key=lambda c: cats[c]["gap"])
            out.sentiment_gap, out.sentiment_gap_ci95 = cats[worst]["gap"], cats[worst]["gapCi95"]
            out.sentiment_gap_category = worst
    # GPTQ calibrates on the val split, so val perplexity flatters the 4-bit model; the held-out
    # test split measures the cost of quantization (val only when there is no test split).
    bf16 = models.get("bf16", {}).get("perplexity", {})
    for split, quantized in (("test", out.test_perplexity), ("val", out.val_perplexity)):
        reference = bf16.get(split, {}).get("perplexity")
        if label == "4bit" and reference and quantized:
            out.quantized_perplexity_ratio = quantized / reference
            break
    return out


def _status_fields(ctx: WorkloadContext, results: EvalResults, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fields: dict[str, Any] = {"eval": results.model_dump(mode="json", by_alias=True, exclude_none=True)}
    bf16_val = models.get("bf16", {}).get("perplexity", {}).get("val", {}).get("perplexity")
    if isinstance(ctx.resource, InferenceService) and bf16_val is not None:
        fields["bf16ValPerplexity"] = bf16_val
    return fields


def own_models(ctx: WorkloadContext) -> dict[str, Path]:
    """The evaluated model directories this resource owns (a service's bf16 source is its TrainingRun's)."""
    label, name = ("bf16", "model") if isinstance(ctx.resource, TrainingRun) else ("4bit", "model-4bit")
    directory = ctx.out_dir / name
    return {label: directory} if (directory / CARD_FILE).is_file() else {}


def refresh_cards(ctx: WorkloadContext, status: dict[str, Any], evaluation: dict[str, Any]) -> None:
    """Write the cards of the models this resource owns again, with the figures status now has."""
    now = {**ctx.reporter.current(), **status}
    for directory in own_models(ctx).values():
        refresh_card(directory, now, evaluation, release=ctx.resource.spec.release)


def run(ctx: WorkloadContext) -> None:
    res = ctx.resource
    if not isinstance(res, TrainingRun | InferenceService):
        raise WorkloadError(f"kind: `llmfab eval run` takes TrainingRun or InferenceService, not {res.KIND}")
    spec: EvalSpec = res.spec.eval
    if not spec.enabled:
        ctx.reporter.event("EvalSkipped", "spec.eval.enabled is false")
        return
    model_dirs, dataset_dir, metrics_path = resolve_inputs(ctx)
    try:
        for directory in model_dirs.values():
            model_io.read_config(directory)  # fails early, naming the directory, before any work
        dataset = DatasetInfo.load(dataset_dir) if dataset_dir else None
    except (model_io.ModelLoadError, DataFormatError) as e:
        raise WorkloadError(str(e)) from e
    if dataset is None:
        ctx.reporter.event("EvalNoDataset", "no Dataset known for this model: perplexity and generation skipped; "
                           "set spec.quantization.calibrationDataset to evaluate them", "Warning")
    out_dir = ctx.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    key = {"specHash": ctx.spec_hash, "modelFingerprint": fingerprint(model_dirs)}
    previous = _json(out_dir / "eval.json")
    if previous and not ctx.force and all(previous.get(k) == v for k, v in key.items()):
        print(f"{res.key}: evaluation up to date ({out_dir / 'eval.json'}); use --force to re-evaluate")
        ctx.reporter.progress(**previous["status"])
        refresh_cards(ctx, previous["status"], previous)
        return

    def log(reason: str, message: str) -> None:
        print(f"{res.key}: {message}", flush=True)
        ctx.reporter.event(f"Eval{reason}", message)

    try:
        models = {label: evaluate_model(label, d, spec, dataset, out_dir, log) for label, d in model_dirs.items()}
    except (model_io.ModelLoadError, DataFormatError, ValueError) as e:
        raise WorkloadError(str(e)) from e
    report_path = out_dir / "report.html" if spec.report else None
    results = summarize(models, report_path)
    status = _status_fields(ctx, results, models)
    evaluation = {"kind": res.KIND, "name": res.name, "createdAt": utc_now(), **key,
                  "environment": environment(), "models": models,
                  "results": status["eval"], "status": status}
    if report_path is not None:
        report.write_report(
            report_path, title=f"llmfab evaluation: {res.KIND}/{res.name}", evaluation=evaluation,
            metrics=report.read_metrics(metrics_path) if metrics_path else [],
            spec=res.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            environment=evaluation["environment"],
            cards={label: f"{d.relative_to(out_dir).as_posix()}/{CARD_FILE}" for label, d in own_models(ctx).items()})
    write_json_atomic(out_dir / "eval.json", evaluation)
    ctx.reporter.progress(**status)
    refresh_cards(ctx, status, evaluation)
    log("Completed", f"evaluation written to {out_dir / 'eval.json'}")
