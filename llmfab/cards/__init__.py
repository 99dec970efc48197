"""Model cards: every exported model directory carries a ``README.md`` that says where it came from.

- :mod:`.facts`: what a card says, as data, gathered by the stage that exports the model and kept
  in the model directory's manifest (``card``), with the licence resolved (:func:`resolve_release`);
- :mod:`.metadata`: the front matter (``huggingface_hub.ModelCardData``, a ``model-index`` of status
  figures) and its checks;
- :mod:`.render`: the card (``huggingface_hub.ModelCard``), section by section;
- this module: writing it into a staged directory before its manifest, and writing it again when
  the figures change (evaluation) or ``spec.release`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from llmfab.api.release import Release
from llmfab.cards.facts import (
    CARD_FILE,
    CARD_KEY,
    CardError,
    CardFacts,
    facts_in,
    read_facts,
    resolve_release,
    with_release,
)
from llmfab.cards.metadata import status_figures
from llmfab.cards.render import render
from llmfab.store import MANIFEST, read_manifest, write_json_atomic, write_text_atomic

__all__ = ["CARD_FILE", "CardError", "CardFacts", "card_for", "manifest_entry", "refresh_card",
           "resolve_release", "status_figures", "write_card"]


def manifest_entry(facts: CardFacts) -> dict[str, Any]:
    """The model directory manifest's ``card`` entry: the facts, for later renderings."""
    return {CARD_KEY: facts.model_dump(mode="json")}


def write_card(directory: Path, facts: CardFacts, figures: dict[str, float] | None = None) -> ModelCard:
    """``README.md`` in ``directory`` (a staged model directory whose manifest is still to come)."""
    card = render(facts, figures if figures is not None else facts.this.figures)
    (Path(directory) / CARD_FILE).write_text(str(card), encoding="utf-8")
    return card


def _bias(evaluation: dict[str, Any] | None, model_dir: Path) -> dict[str, Any] | None:
    """The per-category bias probes of the model at ``model_dir`` in an ``eval.json``, if any."""
    for model in ((evaluation or {}).get("models") or {}).values():
        if isinstance(model, dict) and Path(str(model.get("path"))).resolve() == model_dir.resolve():
            bias = model.get("bias")
            return bias if isinstance(bias, dict) else None
    return None


def _evaluation_beside(model_dir: Path) -> dict[str, Any] | None:
    """The resource's ``eval.json`` (beside its model directories), if it has one."""
    try:
        data = json.loads((model_dir.parent / "eval.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _now(facts: CardFacts, status: dict[str, Any]) -> CardFacts:
    """``facts`` with the status's figures and usage; the ones they had where the status has none
    (unreadable now, or not written yet)."""
    now = facts.model_copy(deep=True)
    now.this.figures = status_figures(status) or facts.this.figures
    if isinstance(status.get("usage"), dict) and status["usage"]:
        now.this.usage = status["usage"]
    return now


def _render(model_dir: Path, facts: CardFacts, evaluation: dict[str, Any] | None) -> ModelCard:
    """The card, with the per-category bias probes of ``evaluation`` (default: the ``eval.json``
    beside the model directory)."""
    return render(facts, facts.this.figures, _bias(evaluation or _evaluation_beside(model_dir), model_dir))


def card_for(model_dir: Path, status: dict[str, Any], evaluation: dict[str, Any] | None = None) -> ModelCard | None:
    """The card of a published model directory as the status has it now (figures and usage); None
    when the directory has no card facts."""
    facts = read_facts(Path(model_dir))
    return _render(Path(model_dir), _now(facts, status), evaluation) if facts is not None else None


def refresh_card(model_dir: Path, status: dict[str, Any], evaluation: dict[str, Any] | None = None,
                 release: Release | None = None) -> ModelCard | None:
    """Write a published model's card again, atomically: after its evaluation (``status`` then has
    the figures) or when ``spec.release`` changed. The facts in its manifest are brought up to date
    too (figures, usage, release), so the cards of models made from it later show them in their
    chain. None, and nothing written, for a directory without card facts."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    facts = facts_in(manifest)
    if manifest is None or facts is None:
        return None
    updated = _now(facts, status)
    if release is not None:
        parent = facts.parents[-1] if facts.parents else None
        updated.release = with_release(facts.release, release,
                                       (f"{parent.kind}/{parent.name}", parent.license) if parent else None)
        updated.this.license, updated.this.repo_id = updated.release.license, updated.release.repo_id
    if updated != facts:
        write_json_atomic(model_dir / MANIFEST, {**manifest, CARD_KEY: updated.model_dump(mode="json")})
    card = _render(model_dir, updated, evaluation)
    write_text_atomic(model_dir / CARD_FILE, str(card))
    return card
