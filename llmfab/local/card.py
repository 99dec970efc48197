"""``llmfab card KIND NAME``: a local model's card as its status has it now.

The card in the model directory was written when the model was exported and again after its
evaluation; this renders it from the same facts (kept in the model directory's manifest) with the
status as it is now, e.g. the final ``usage`` that the runner adds after the last stage.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from llmfab.api import InferenceService, resource_class
from llmfab.cards import card_for
from llmfab.status import read_status
from llmfab.store import artifact_dir, artifact_root, read_manifest

MODEL_DIRS = {"TrainingRun": "model", "RewardModel": "model", "InferenceService": "model-4bit"}


def model_dir(kind: str, name: str, root: Path | None = None) -> Path:
    """The directory whose card ``llmfab card KIND NAME`` prints; LookupError naming what to do."""
    cls = resource_class(kind)
    if cls.KIND not in MODEL_DIRS:
        raise LookupError(f"{cls.KIND} has no model and no card; cards are written for "
                          f"{', '.join(MODEL_DIRS)}")
    root = root or artifact_root()
    directory = artifact_dir(cls.ARTIFACT_DIR, name, root) / MODEL_DIRS[cls.KIND]
    if read_manifest(directory) is None:
        if cls is InferenceService and read_manifest(directory.parent) is None:
            spec = read_status(cls.ARTIFACT_DIR, name, root)
            raise LookupError(f"{cls.KIND}/{name} has no 4-bit model in {directory} (quantization none, or not "
                              f"run yet: {spec.get('phase', 'not found')}); an unquantized service serves its "
                              "TrainingRun's model: `llmfab card trainingrun NAME`")
        raise LookupError(f"{cls.KIND}/{name} has no finished model in {directory}; `llmfab get` says where it is")
    return directory


def card(kind: str, name: str, root: Path | None = None) -> ModelCard:
    """The card of ``kind``/``name`` with its current status; LookupError if it has none."""
    cls = resource_class(kind)
    directory = model_dir(kind, name, root)
    rendered = card_for(directory, read_status(cls.ARTIFACT_DIR, name, root))
    if rendered is None:
        raise LookupError(f"{directory} has no card facts (exported before llmfab wrote cards); "
                          f"run it again with --force to write one")
    return rendered
