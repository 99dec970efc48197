"""``llmfab export NAME``: write a TrainingRun's Hugging Face ``model/`` from a checkpoint, on demand.

Training exports at the end; this exports any complete checkpoint (the latest by default) while a
run is still going or after it was stopped, so a half-trained model can be evaluated or served.
The checkpoint may come from any world size: DCP reshards it into one process.
"""

from __future__ import annotations

from pathlib import Path

from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from llmfab.api import ValidationFailed
from llmfab.api.training_run import TrainingRun
from llmfab.cards.facts import CardError, CardFacts, StageFacts, dataset_facts, resolve_release
from llmfab.model.from_spec import model_args_from_spec
from llmfab.model.hf import export_hf
from llmfab.model.transformer import Transformer
from llmfab.stages import spec_file_path
from llmfab.store import artifact_dir, read_manifest
from llmfab.training.components.checkpoint import complete_checkpoints, read_trainer_state
from llmfab.training.components.checkpoint_reader import CorruptCheckpoint, load_checkpoint
from llmfab.training.loop.loss_module import LanguageModelLoss
from llmfab.workload import load_spec_file


class ExportError(Exception):
    """The run, its Dataset or the checkpoint cannot be found; the message says which and why."""


def export_named_run(name: str, root: Path, step: int | None = None, out_dir: Path | None = None) -> Path:
    """``llmfab export NAME``: the TrainingRun is read from the spec file ``llmfab up`` wrote."""
    spec_file = spec_file_path(TrainingRun.ARTIFACT_DIR, name, root)
    try:
        run = load_spec_file(spec_file)
    except FileNotFoundError:
        raise ExportError(f"TrainingRun/{name}: no spec at {spec_file}; run it with `llmfab up` first") from None
    except ValidationFailed as e:
        raise ExportError(str(e)) from None
    if not isinstance(run, TrainingRun):
        raise ExportError(f"{spec_file}: holds a {run.KIND}, not a TrainingRun")
    return export_checkpoint(run, root, step, out_dir)


def export_checkpoint(
    run: TrainingRun, root: Path, step: int | None = None, out_dir: Path | None = None
) -> Path:
    """Export checkpoint ``step`` (default: the latest) of ``run`` to ``out_dir`` (default: model/)."""
    if run.spec.objective in ("sft", "rl"):  # shape and tokenizer are the base's, not spec.model's and the Dataset's
        raise ExportError(f"TrainingRun/{run.name}: objective {run.spec.objective} exports only at the end of "
                          "training (model/); exporting its checkpoints is not implemented yet")
    assert run.spec.dataset is not None  # API rule: pretrain and distill name their Dataset
    run_dir = artifact_dir(run.ARTIFACT_DIR, run.name, root)
    checkpoints = complete_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise ExportError(f"TrainingRun/{run.name}: no complete checkpoint in {run_dir / 'checkpoints'}")
    if step is not None and step not in checkpoints:
        raise ExportError(f"--step {step}: no such checkpoint; complete ones: {sorted(checkpoints)}")
    chosen = checkpoints[step if step is not None else max(checkpoints)]
    dataset_dir = artifact_dir("datasets", run.spec.dataset.name, root)
    manifest = read_manifest(dataset_dir)
    if manifest is None:
        raise ExportError(
            f"spec.dataset.name: Dataset/{run.spec.dataset.name} has no complete artifact in {dataset_dir}"
        )
    args = model_args_from_spec(run.spec.model, int(manifest["vocabSize"]))
    model = Transformer(args)
    # Checkpoints hold the trainer's model+loss module; load through the same module so the keys
    # match, and only its model entries (the optimizer state stays on disk).
    module = LanguageModelLoss(model, run.spec.label_smoothing, run.spec.loss_chunk_tokens)
    state = {"model": get_model_state_dict(module)}
    try:
        trainer_state = read_trainer_state(chosen)
        load_checkpoint(state, chosen)
    except CorruptCheckpoint as e:
        raise ExportError(str(e)) from None
    set_model_state_dict(module, state["model"])
    try:
        release = resolve_release(run.spec.release, None, None)
    except CardError as e:
        raise ExportError(str(e)) from None
    this = StageFacts(kind=run.KIND, name=run.name, role="export", license=release.license, repo_id=release.repo_id,
                      steps=trainer_state.get("step"), tokens=trainer_state.get("tokens"), precision=run.spec.precision,
                      data=[dataset_facts(dataset_dir, "pretraining text")])
    card = CardFacts(this=this, release=release, dataset=run.spec.dataset.name)
    return export_hf(
        model,
        args,
        dataset_dir / "tokenizer",
        out_dir or run_dir / "model",
        dtype="float32" if run.spec.precision == "fp32" else "bfloat16",
        manifest={"checkpoint": chosen.name, "step": trainer_state.get("step")},
        card=card,
    )
