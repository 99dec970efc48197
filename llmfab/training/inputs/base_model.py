"""The model a post-training objective (sft, rl) starts from: ``spec.initFrom`` (a TrainingRun's
``model/`` or a Hugging Face model directory), its tokenizer with a chat template, and its shape as
``spec.model``. Every bad input is a ``WorkloadError`` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llmfab.api.training_run import ModelSpec, TrainingRunSpec
from llmfab.cards.facts import parent_label
from llmfab.errors import StageNotSupported, WorkloadError
from llmfab.store import MANIFEST
from llmfab.workload import WorkloadContext


def refuse_pruning(spec: TrainingRunSpec) -> None:
    """A post-training run keeps its base's shape; a smaller model comes from pruning the base run."""
    if spec.pruning.enabled:
        raise StageNotSupported(
            f"spec.pruning.enabled: pruning is not implemented for objective {spec.objective} yet; "
            "prune the base TrainingRun instead, or set enabled: false"
        )


def base_model_dir(ctx: WorkloadContext, spec: TrainingRunSpec) -> tuple[Path, str, dict[str, Any]]:
    """(model directory, spec field naming it, base record for the manifest)."""
    init = spec.init_from
    assert init is not None  # API rule: sft needs initFrom
    if init.training_run:
        run_dir = ctx.dependency("TrainingRun", init.training_run)
        manifest = yaml.safe_load((run_dir / MANIFEST).read_text()) or {}
        return (run_dir / str(manifest.get("model", "model")), f"spec.initFrom.trainingRun: TrainingRun/{init.training_run}",
                {"trainingRun": init.training_run, "specHash": manifest.get("specHash")})
    if init.path:
        return ctx.resolve(init.path), f"spec.initFrom.path: {init.path!r}", {"path": init.path}
    raise WorkloadError("spec.initFrom: objective sft needs initFrom.trainingRun or initFrom.path (an HF model directory)")


def base_label(base: dict[str, Any]) -> str:
    """How a card and its errors name the base record's model (:func:`llmfab.cards.facts.parent_label`)."""
    return parent_label(base.get("trainingRun"), base.get("path"))


def load_base(ctx: WorkloadContext, spec: TrainingRunSpec, objective: str) -> tuple[Path, str, dict[str, Any], Any, Any, Any]:
    """(model dir, spec field naming it, base record, model, model args, tokenizer) of the model a
    post-training objective starts from; its tokenizer gets the default chat template if it has none
    (the export writes the same)."""
    from transformers import AutoTokenizer

    from llmfab.model.hf import CHAT_TEMPLATE, load_hf

    model_dir, field, base = base_model_dir(ctx, spec)
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise WorkloadError(f"{field} has no tokenizer in {model_dir} (tokenizer.json / tokenizer_config.json); "
                            f"{objective} tokenizes with the base model's tokenizer: export it with one")
    try:
        model, args = load_hf(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError) as e:
        raise WorkloadError(f"{field} has no loadable model in {model_dir} ({e}); rerun it with --force") from e
    if tokenizer.eos_token is None or len(tokenizer) > args.vocab_size:
        raise WorkloadError(f"{field}: its tokenizer ({len(tokenizer)} tokens, eos {tokenizer.eos_token!r}) needs an "
                            f"eos token and at most the model's {args.vocab_size} tokens; rerun it")
    tokenizer.chat_template = tokenizer.chat_template or CHAT_TEMPLATE
    warn_if_dataset_tokenizer_differs(ctx, spec, model_dir, field)
    return model_dir, field, base, model, args, tokenizer


def warn_if_dataset_tokenizer_differs(ctx: WorkloadContext, spec: TrainingRunSpec, model_dir: Path, field: str) -> None:
    """``spec.dataset`` of a post-training run is what the evaluation after training scores the model
    on; a Dataset tokenized otherwise than the base would give meaningless numbers, so say so now."""
    from llmfab.model.reward_head import tokenizer_sha256
    from llmfab.store import artifact_dir, read_manifest

    if spec.dataset is None:
        return
    dataset_dir = artifact_dir("datasets", spec.dataset.name, ctx.root)
    theirs, ours = tokenizer_sha256(dataset_dir / "tokenizer"), tokenizer_sha256(model_dir)
    if read_manifest(dataset_dir) is not None and theirs and ours and theirs != ours:
        ctx.reporter.event(
            "DatasetTokenizerDiffers",
            f"spec.dataset.name: Dataset/{spec.dataset.name} has another tokenizer than the base model ({field}); "
            "the evaluation after training would score this model on tokens it does not read. Remove spec.dataset "
            "or name the Dataset the base model was trained on", "Warning")


def shape_of(args: Any, user: ModelSpec, objective: str = "SFT") -> ModelSpec:
    """The base model's shape as ``spec.model``; a field the spec sets to another value is an error.

    A field at its API default counts as not set: a spec rendered for torchrun or a pod (``render_spec``)
    carries every default, so the default cannot mean "chosen"."""
    derived = ModelSpec(layers=args.layers, hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                        intermediate=args.intermediate, context_length=args.context_length,
                        rope_theta=args.rope_theta, norm_eps=args.norm_eps, tie_embeddings=args.tie_embeddings,
                        init_std=args.init_std, dropout=user.dropout)
    for name in sorted(user.model_fields_set - {"dropout", "preset"}):
        mine, theirs = getattr(user, name), getattr(derived, name)
        if mine != theirs and mine != ModelSpec.model_fields[name].get_default(call_default_factory=True):
            alias = ModelSpec.model_fields[name].alias or name
            raise WorkloadError(f"spec.model.{alias}: {mine!r} differs from the base model's {theirs!r}; {objective} "
                                f"keeps the base's shape: remove spec.model.{alias}")
    return derived
