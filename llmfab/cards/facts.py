"""What a model card says, as data: gathered by the stage that exports a model, kept in the model
directory's ``manifest.json`` (key ``card``), rendered by :mod:`llmfab.cards.render`.

The facts are collected where they are known (the trainer knows its steps and tokens, the Dataset's
manifest and ``stats.json`` know its sources and filters, a parent model's manifest knows the chain
before it) and stored with the weights, so a later stage (evaluation) or ``llmfab card`` renders the
card again with newer figures without reading anything that may have gone since.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmfab.api.release import LICENSE_HINT, Release
from llmfab.store import read_manifest

CARD_FILE = "README.md"
CARD_KEY = "card"  # the model directory manifest's key that holds the facts

Role = Literal["pretrain", "distill", "sft", "rl", "reward", "quantized", "export"]


class CardError(ValueError):
    """A card that cannot be written as asked (a licence nobody stated); names the field and the fix."""


class Facts(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReleaseFacts(Facts):
    """``spec.release`` with the licence resolved, and where the licence was stated."""

    license: str
    license_name: str | None = None
    license_link: str | None = None
    license_from: str = Field(description="'spec.release.license' or the model it was inherited from")
    language: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    repo_id: str | None = None
    intended_use: str | None = None
    limitations: str | None = None


class ModelFacts(Facts):
    architecture: str
    parameters: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    context_length: int
    vocab_size: int
    dtype: str
    tokenizer: str | None = None


class SourceFacts(Facts):
    name: str | None = None
    where: str | None = None
    license: str | None = None
    origin: str | None = None
    documents: int | None = None


class StepFacts(Facts):
    name: str
    documents_in: int
    documents_out: int
    removed: dict[str, int] = Field(default_factory=dict)


class DataFacts(Facts):
    """One input of one training step: a Dataset (sources, filters, dedup, tokens) or a file."""

    kind: Literal["Dataset", "file"]
    name: str
    role: str = Field(description="What it was used for: pretraining text, SFT examples, preference pairs ...")
    sources: list[SourceFacts] = Field(default_factory=list)
    steps: list[StepFacts] = Field(default_factory=list)
    documents: int | None = None
    split_tokens: dict[str, int] = Field(default_factory=dict)
    sha256: str | None = None
    rows: int | None = None


class StageFacts(Facts):
    """One model of the chain: what made it, from what, and its figures."""

    kind: str
    name: str
    role: Role
    license: str
    repo_id: str | None = None
    steps: int | None = None
    tokens: int | None = None
    precision: str | None = None
    hardware: str | None = None
    data: list[DataFacts] = Field(default_factory=list)
    figures: dict[str, float] = Field(default_factory=dict, description="status path -> value")
    usage: dict[str, Any] | None = None


class CardFacts(Facts):
    """Everything the card of one model directory is rendered from."""

    this: StageFacts
    release: ReleaseFacts
    model: ModelFacts | None = Field(default=None, description="Filled in by the export, from its config.json")
    parents: list[StageFacts] = Field(default_factory=list, description="The chain before this model, oldest first")
    related: list[StageFacts] = Field(default_factory=list, description="Teacher, reward model: used, not built on")
    details: dict[str, Any] = Field(default_factory=dict, description="distill, pruning, quantization numbers")
    dataset: str | None = Field(default=None, description="The Dataset the evaluation scores on")


# --- gathering --------------------------------------------------------------------------------


def facts_in(manifest: dict[str, Any] | None) -> CardFacts | None:
    """The card facts a model directory's manifest holds, or None (made before cards)."""
    data = manifest.get(CARD_KEY) if isinstance(manifest, dict) else None
    return CardFacts.model_validate(data) if isinstance(data, dict) else None


def read_facts(model_dir: Path) -> CardFacts | None:
    """The facts a model directory's manifest holds, or None (no manifest, or made before cards)."""
    return facts_in(read_manifest(Path(model_dir)))


def parent_label(training_run: str | None, path: str | None) -> str:
    """How a card and its errors name the model another was made from: ``TrainingRun/<name>`` or its path."""
    return f"TrainingRun/{training_run}" if training_run else f"the model at {path}"


def resolve_release(release: Release, parent_dir: Path | None, parent_label: str | None,
                    field: str = "spec.release.license") -> ReleaseFacts:
    """``release`` with its licence: the spec's, else the parent model's (what its card states).

    :class:`CardError` naming ``field`` when neither states one. Run before any training, so a
    missing licence fails in seconds, not after the run."""
    body = release.model_dump(exclude={"license"})
    if release.license is not None:
        return ReleaseFacts(license=release.license, license_from=field, **body)
    parent = read_facts(parent_dir) if parent_dir is not None else None
    if parent is None:
        where = f"{parent_label}'s model has no card with a licence (made before llmfab wrote cards, or by " \
                "something else)" if parent_label else "nothing to inherit it from"
        raise CardError(f"{field}: not set, and {where}; set it to {LICENSE_HINT}")
    inherited = parent.release
    return ReleaseFacts(
        license=inherited.license, license_name=inherited.license_name, license_link=inherited.license_link,
        license_from=f"{parent_label} (inherited)",
        language=release.language or inherited.language, tags=release.tags, repo_id=release.repo_id,
        intended_use=release.intended_use, limitations=release.limitations,
    )


def with_release(current: ReleaseFacts, release: Release, parent: tuple[str, str] | None = None) -> ReleaseFacts:
    """A card's release after ``spec.release`` changed: its stated licence; else the parent's
    (``(label, licence)`` from the chain) where the spec stopped stating one; else the one it had.
    The other fields as the spec has them now."""
    body = release.model_dump(exclude={"license", "license_name", "license_link"})
    if release.license is not None:
        return ReleaseFacts(license=release.license, license_name=release.license_name,
                            license_link=release.license_link, license_from="spec.release.license", **body)
    body["language"] = release.language or current.language
    if parent is not None and current.license_from == "spec.release.license" and parent[1] != "other":
        return ReleaseFacts(license=parent[1], license_from=f"{parent[0]} (inherited)", **body)
    return ReleaseFacts(license=current.license, license_name=current.license_name, license_link=current.license_link,
                        license_from=current.license_from, **body)


def model_facts(config: dict[str, Any], parameters: int, tokenizer: str | None = None) -> ModelFacts:
    """From a Hugging Face ``config.json`` (Llama)."""
    heads = int(config["num_attention_heads"])
    return ModelFacts(
        architecture=(config.get("architectures") or ["LlamaForCausalLM"])[0], parameters=parameters,
        layers=int(config["num_hidden_layers"]), hidden=int(config["hidden_size"]), heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads), intermediate=int(config["intermediate_size"]),
        context_length=int(config["max_position_embeddings"]), vocab_size=int(config["vocab_size"]),
        dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"), tokenizer=tokenizer,
    )


def tokenizer_label(model_dir: Path) -> str | None:
    """``"<type> (<n> tokens)"`` from a Hugging Face ``tokenizer.json`` (Unigram, BPE, ...)."""
    data = _json(Path(model_dir) / "tokenizer.json")
    model = data.get("model") if isinstance(data.get("model"), dict) else None
    if model is None:
        return None
    vocab = model.get("vocab")
    size = len(vocab) if isinstance(vocab, list | dict) else None
    return f"{model.get('type', 'unknown')}" + (f" ({size:,} tokens)" if size else "")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def dataset_facts(dataset_dir: Path, role: str) -> DataFacts:
    """A Dataset's sources (licence, origin, documents read), filter and dedup steps and tokens,
    from its ``manifest.json`` and ``stats.json``."""
    manifest, stats = _json(dataset_dir / "manifest.json"), _json(dataset_dir / "stats.json")
    steps = [s for s in stats.get("steps", []) if isinstance(s, dict)]
    read = {str(s.get("source")): s.get("documents") for step in steps if step.get("name") == "read"
            for s in step.get("sources", [])}
    sources = []
    for s in manifest.get("sources", []):
        hub = s.get("huggingface") or {}
        where = s.get("path") or (f"huggingface:{hub.get('path')}" + (f" ({hub['name']})" if hub.get("name") else "")
                                  if hub else None)
        sources.append(SourceFacts(name=s.get("name"), where=where, license=s.get("license"), origin=s.get("origin"),
                                   documents=read.get(str(s.get("name")))))
    return DataFacts(
        kind="Dataset", name=str(manifest.get("name") or dataset_dir.name), role=role, sources=sources,
        steps=[StepFacts(name=s["name"], documents_in=int(s.get("documentsIn", 0)),
                         documents_out=int(s.get("documentsOut", 0)),
                         removed={k: int(v) for k, v in (s.get("removed") or {}).items()}) for s in steps],
        documents=stats.get("documents"),
        split_tokens={k: int(v["tokens"]) for k, v in (manifest.get("splits") or {}).items() if "tokens" in v},
    )


def file_facts(path: Path, role: str, rows: int | None = None) -> DataFacts:
    """A file of examples (SFT rows, preference pairs, RL prompts): its path, sha256 and rows."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return DataFacts(kind="file", name=str(path), role=role, sha256=digest.hexdigest(), rows=rows)


def chain_of(parent_dir: Path | None) -> list[StageFacts]:
    """The parent model's chain and the parent itself, oldest first ([] without a parent card)."""
    parent = read_facts(parent_dir) if parent_dir is not None else None
    return [*parent.parents, parent.this] if parent is not None else []


def stage_of(model_dir: Path | None) -> StageFacts | None:
    """The stage that made a model (a teacher, a reward model), from its card's facts."""
    facts = read_facts(model_dir) if model_dir is not None else None
    return facts.this if facts is not None else None
