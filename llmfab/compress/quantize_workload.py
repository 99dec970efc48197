"""``llmfab quantize run --spec FILE`` (InferenceService): the 4-bit checkpoint under ``services/<name>/``.

Runs in the main (trainer) environment, where torch, transformers and compressed-tensors live;
vLLM never needs to be importable here. The output ``<root>/services/<name>/model-4bit/`` is built
in a temporary sibling and renamed into place with its manifest written last. Its manifest's
``specHash`` covers the model source and the quantization settings (not eval or server options),
so a changed server port never re-quantizes, while a re-trained model or new settings do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llmfab.api.inference_service import InferenceService
from llmfab.cards import refresh_card
from llmfab.cards import stage as card_stage
from llmfab.cards.facts import dataset_facts, parent_label
from llmfab.errors import WorkloadError
from llmfab.store import is_complete, read_manifest
from llmfab.workload import WorkloadContext

QUANTIZED_DIR = "model-4bit"


def source_model_dir(ctx: WorkloadContext) -> Path:
    """The HF model directory to serve: a TrainingRun's export, or ``spec.model.path``."""
    assert isinstance(ctx.resource, InferenceService)
    spec = ctx.resource.spec
    if spec.model.training_run:
        model_dir = ctx.dependency("TrainingRun", spec.model.training_run) / "model"
        field = f"spec.model.trainingRun ({spec.model.training_run})"
    else:
        assert spec.model.path is not None
        model_dir = ctx.resolve(spec.model.path)
        field = f"spec.model.path ({spec.model.path})"
    if not model_dir.is_dir():
        raise WorkloadError(f"{field}: model directory {model_dir} does not exist; train/export it or fix the path")
    if not (model_dir / "config.json").is_file():
        raise WorkloadError(
            f"{field}: {model_dir} is not a Hugging Face model directory (no config.json); "
            "point at the export (runs/<name>/model) or a directory written by save_pretrained"
        )
    return model_dir


def _source_fingerprint(model_dir: Path) -> dict[str, Any]:
    """What identifies the source weights: the exporter's manifest hash, else file sizes and mtimes."""
    manifest = read_manifest(model_dir) or read_manifest(model_dir.parent) or {}
    files = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in model_dir.glob("*.safetensors"))
    return {"path": str(model_dir), "specHash": manifest.get("specHash"), "createdAt": manifest.get("createdAt"),
            "files": files}


def quantization_hash(resource: InferenceService, model_dir: Path) -> str:
    payload = {
        "quantization": resource.spec.quantization.model_dump(mode="json", by_alias=True),
        "source": _source_fingerprint(model_dir),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def calibration_dataset_dir(ctx: WorkloadContext) -> Path | None:
    """``spec.quantization.calibrationDataset``, else the Dataset the TrainingRun was trained on."""
    assert isinstance(ctx.resource, InferenceService)
    spec = ctx.resource.spec
    q = spec.quantization
    if q.calibration_dataset:
        return ctx.dependency("Dataset", q.calibration_dataset)
    if spec.model.training_run:
        run_manifest = read_manifest(ctx.dependency("TrainingRun", spec.model.training_run)) or {}
        ds = run_manifest.get("dataset")
        name = ds.get("name") if isinstance(ds, dict) else ds
        if name:
            return ctx.dependency("Dataset", str(name))
    return None


def ensure_quantized(ctx: WorkloadContext, model_dir: Path | None = None, force: bool = False) -> Path:
    """Quantize unless an up-to-date ``model-4bit/`` exists; return its path."""
    from llmfab.compress.quantize import (
        QuantizationError,
        QuantizeOptions,
        load_calibration,
        quantize_checkpoint,
    )

    resource = ctx.resource
    assert isinstance(resource, InferenceService)
    q = resource.spec.quantization
    model_dir = model_dir or source_model_dir(ctx)
    label = parent_label(resource.spec.model.training_run, resource.spec.model.path)
    card_stage.release(resource.spec.release, model_dir, label)  # no licence: fail before the work
    out = ctx.out_dir / QUANTIZED_DIR
    wanted = quantization_hash(resource, model_dir)
    if not force and is_complete(out, wanted):
        print(f"{resource.key}: 4-bit model up to date ({out})")
        refresh_card(out, ctx.reporter.current(), release=resource.spec.release)  # spec.release may have changed
        return out

    calib = None
    calib_name = None
    ds_dir: Path | None = None
    if q.algorithm == "gptq":
        ds_dir = calibration_dataset_dir(ctx)
        if ds_dir is None:
            raise WorkloadError(
                "spec.quantization.calibrationDataset: GPTQ needs calibration text and this model has no "
                "TrainingRun dataset; name a Dataset, or set spec.quantization.algorithm: rtn"
            )
        config = json.loads((model_dir / "config.json").read_text())
        seq_len = min(512, int(config.get("max_position_embeddings", 512)))
        try:
            calib = load_calibration(ds_dir, q.calibration_samples, seq_len, split="val")
        except (FileNotFoundError, KeyError, ValueError) as e:
            raise WorkloadError(f"spec.quantization: cannot read calibration data from {ds_dir}: {e}") from e
        calib_name = ds_dir.name
    ctx.reporter.event("Quantizing", f"W4A16 {q.algorithm} of {model_dir}")
    opts = QuantizeOptions(
        algorithm=q.algorithm,
        group_size=q.group_size,
        symmetric=q.symmetric,
        dampening=q.dampening,
        calibration_samples=q.calibration_samples,
    )
    try:
        manifest = quantize_checkpoint(
            model_dir, out, opts, calib, spec_hash=wanted,
            extra_manifest={"calibrationDataset": calib_name, "service": resource.name},
            card=card_stage.facts(
                ctx, resource.spec.release, "quantized", steps=None, tokens=None, precision=None, world_size=None,
                data=[dataset_facts(ds_dir, "calibration")] if ds_dir is not None else [],
                figures={}, parent_dir=model_dir, parent_label=label, dataset=calib_name),
        )  # fmt: skip
    except QuantizationError as e:
        raise WorkloadError(str(e)) from e
    ctx.reporter.progress(quantizedPath=str(out), modelSizeBytes=manifest["sizeBytes"])
    ctx.reporter.event(
        "Quantized",
        f"{manifest['layers']} layers, group {manifest['groupSize']}: "
        f"{manifest['sourceSizeBytes']} -> {manifest['sizeBytes']} bytes in {manifest['seconds']} s",
    )
    return out


def run(ctx: WorkloadContext) -> None:
    """Entry point of ``llmfab quantize run``."""
    resource = ctx.resource
    assert isinstance(resource, InferenceService)
    if resource.spec.quantization.method == "none":
        raise WorkloadError(
            "spec.quantization.method: none; there is nothing to quantize (set method: w4a16, or just serve)"
        )
    ensure_quantized(ctx, force=ctx.force)
