"""W4A16 quantization of a Hugging Face causal LM into a compressed-tensors checkpoint.

Why our own GPTQ and not llmcompressor: llmcompressor pins compressed-tensors and transformers
versions that fit neither the main venv nor vLLM's (FACTS.md "vLLM on CPU"). The math is in
:mod:`llmfab.compress.gptq`; this module walks the model, collects calibration statistics, and
writes the ``pack-quantized`` format with the compressed-tensors library itself (its packer and its
config schema), which vLLM serves with ``CPUWNA16LinearKernel`` on CPU (Marlin on NVIDIA GPUs) and
transformers loads on CPU.

Every linear layer except ``lm_head`` is quantized; embeddings, norms and the head stay as they are.
GPTQ runs layer by layer: the inputs of decoder layer ``i`` are recorded with the layers before it
already quantized, so each layer corrects the error its predecessors introduced.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from llmfab.cards import CardFacts
from llmfab.compress.gptq import HessianAccumulator, QuantizedWeight, gptq_quantize, rtn_quantize
from llmfab.data.shards import DatasetInfo
from llmfab.model.hf import with_model_card
from llmfab.store import staged_directory, write_manifest

BITS = 4
KERNEL_MULTIPLE = 32  # CPUWNA16LinearKernel (and Marlin tiles) need sizes in multiples of 32
SKIP_FILES = {"config.json", "model.safetensors.index.json", "manifest.json", "README.md"}  # its own card


class QuantizationError(ValueError):
    """A model or setting the 4-bit kernels cannot take; the message names the layer and the rule."""


@dataclass
class QuantizeOptions:
    algorithm: Literal["gptq", "rtn"] = "gptq"
    group_size: int = 128
    symmetric: bool = True
    dampening: float = 0.01
    calibration_samples: int = 128
    calibration_seq_len: int = 512


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every nn.Linear except the output head (kept in bf16, as are the embeddings)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head and not name.endswith("lm_head")
    ]


def choose_group_size(linears: list[tuple[str, nn.Linear]], requested: int) -> int:
    """Validate shapes; return ``requested`` or the largest even size below it that divides all inputs.

    Raises :class:`QuantizationError` naming the first layer that breaks a rule, before any work.
    """
    if requested < 2 or requested % 2:
        raise QuantizationError(
            f"spec.quantization.groupSize: {requested} is not even; the 4-bit kernels need an even group "
            "size (use 128, or 32)"
        )
    for name, m in linears:
        for what, size in (("in_features", m.in_features), ("out_features", m.out_features)):
            if size % KERNEL_MULTIPLE:
                raise QuantizationError(
                    f"layer {name}: {what}={size} is not a multiple of {KERNEL_MULTIPLE}; the 4-bit CPU kernel "
                    f"(CPUWNA16) needs every linear layer's size to be a multiple of {KERNEL_MULTIPLE}. Train a "
                    "model whose hidden/intermediate/head sizes are multiples of 32, or serve it unquantized "
                    "(spec.quantization.method: none)"
                )
    group = requested
    while group >= 2 and any(m.in_features % group for _, m in linears):
        group -= 2
    if group < 2 or any(m.in_features % group for _, m in linears):  # pragma: no cover - 32 always divides
        bad = next(n for n, m in linears if m.in_features % requested)
        raise QuantizationError(
            f"layer {bad}: no even group size <= {requested} divides in_features; set spec.quantization.groupSize"
        )
    return group


def load_calibration(dataset_dir: Path, samples: int, seq_len: int, split: str = "val") -> torch.Tensor:
    """``samples`` windows of ``seq_len`` tokens spread evenly over a Dataset split -> [N, T] int64.

    Reads through :mod:`llmfab.data.shards` (memory-mapped: only the windows are copied).
    """
    reader = DatasetInfo.load(dataset_dir).split(split)
    if reader.num_tokens < 2:
        raise QuantizationError(
            f"dataset {dataset_dir.name}: split {split!r} has {reader.num_tokens} tokens; nothing to calibrate on"
        )
    seq_len = min(seq_len, reader.num_tokens)
    n = min(samples, max(1, reader.num_tokens // seq_len))
    starts = np.linspace(0, reader.num_tokens - seq_len, num=n).astype(np.int64)
    return torch.from_numpy(np.stack([reader.read(int(s), seq_len) for s in starts]))


def _decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    n = getattr(model.config, "num_hidden_layers", None)
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return m
    return None


class _Stop(Exception):
    """Raised by a hook to end a calibration forward pass once the layer of interest has run."""


def _calibrate(
    model: nn.Module, targets: list[tuple[str, nn.Linear]], calib: torch.Tensor, stop_at: nn.Module | None
) -> dict[str, HessianAccumulator]:
    """Run calibration batches; return the input Hessian of each target linear."""
    accs = {name: HessianAccumulator(m.in_features) for name, m in targets}
    handles = [
        m.register_forward_pre_hook(lambda _m, args, acc=accs[name]: acc.add(args[0])) for name, m in targets
    ]
    if stop_at is not None:

        def stop(*_: Any) -> None:
            raise _Stop

        handles.append(stop_at.register_forward_hook(stop))
    try:
        with torch.no_grad():
            for batch in calib.split(8):
                try:
                    model(input_ids=batch, use_cache=False)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return accs


def quantize_model(
    model: nn.Module,
    opts: QuantizeOptions,
    calib: torch.Tensor | None,
    scale_dtype: torch.dtype = torch.bfloat16,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, QuantizedWeight], dict[str, Any]]:
    """Quantize ``model`` in place (weights become their dequantized values); return the quantized weights."""
    linears = quantizable_linears(model)
    group = choose_group_size(linears, opts.group_size)
    if group != opts.group_size:
        log(f"group size {opts.group_size} does not divide every layer's inputs; using {group}")
    if opts.algorithm == "gptq" and calib is None:
        raise QuantizationError("spec.quantization.algorithm: gptq needs calibration data; give a dataset or use rtn")
    result: dict[str, QuantizedWeight] = {}
    errors: list[float] = []

    def apply(name: str, m: nn.Linear, acc: HessianAccumulator | None) -> None:
        w = m.weight.data
        if acc is None:
            qw = rtn_quantize(w, group, BITS, opts.symmetric, scale_dtype)
        else:
            qw = gptq_quantize(w, acc.h, group, BITS, opts.symmetric, opts.dampening, scale_dtype)
            diff = (w.double() - qw.dequantized.double())
            base = torch.einsum("oi,ij,oj->", w.double(), acc.h, w.double())
            errors.append(float(torch.einsum("oi,ij,oj->", diff, acc.h, diff) / base))
        result[name] = qw
        m.weight.data = qw.dequantized.to(w.dtype)

    if opts.algorithm == "rtn":
        for name, m in linears:
            apply(name, m, None)
    else:
        assert calib is not None
        layers = _decoder_layers(model)
        done: set[str] = set()
        for i, layer in enumerate(layers or []):
            names = {id(m) for m in layer.modules()}
            targets = [(n, m) for n, m in linears if id(m) in names]
            accs = _calibrate(model, targets, calib, stop_at=layer)
            for n, m in targets:
                apply(n, m, accs[n])
                done.add(n)
            log(f"gptq: layer {i + 1}/{len(layers or [])} ({len(targets)} linears)")
        rest = [(n, m) for n, m in linears if n not in done]
        if rest:
            accs = _calibrate(model, rest, calib, stop_at=None)
            for n, m in rest:
                apply(n, m, accs[n])
    info = {
        "groupSize": group,
        "layers": len(result),
        "gptqRelativeOutputError": (sum(errors) / len(errors)) if errors else None,
    }
    return result, info


def compressed_tensors_config(group_size: int, symmetric: bool) -> dict[str, Any]:
    """The ``quantization_config`` block of config.json, built with compressed-tensors' own schema."""
    import compressed_tensors
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
    )

    args = QuantizationArgs(num_bits=BITS, type="int", symmetric=symmetric, strategy="group", group_size=group_size)
    config = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
        ignore=["lm_head"],
        format="pack-quantized",
        quantization_status=QuantizationStatus.COMPRESSED,
    )
    body: dict[str, Any] = config.model_dump(mode="json", exclude={"quant_method"})
    return {"quant_method": "compressed-tensors", "version": compressed_tensors.__version__, **body}


def _pack(qw: QuantizedWeight, group_size: int, symmetric: bool) -> dict[str, torch.Tensor]:
    """compressed-tensors' packer re-derives our integers from (dequantized, scale, zero point)."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=BITS, type="int", symmetric=symmetric, strategy="group", group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = {"weight": qw.dequantized, "weight_scale": qw.scale, "weight_zero_point": qw.zero_point}
    packed = PackedQuantizationCompressor.compress(state, scheme)
    return {k: v.contiguous() for k, v in packed.items()}


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weights_size(path: Path) -> int:
    """Bytes of the weight files (what a server loads), excluding tokenizer and configs."""
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def quantize_checkpoint(
    model_dir: Path,
    out_dir: Path,
    opts: QuantizeOptions,
    calibration: torch.Tensor | None,
    spec_hash: str | None = None,
    extra_manifest: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    card: CardFacts | None = None,
) -> dict[str, Any]:
    """Quantize the HF model in ``model_dir`` into ``out_dir`` (atomically, manifest last); return the manifest."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    if not (model_dir / "config.json").is_file():
        raise QuantizationError(
            f"spec.model: {model_dir} is not a Hugging Face model directory (no config.json); "
            "give a TrainingRun that finished exporting or a path to an HF model dir"
        )
    sources = sorted(model_dir.glob("*.safetensors"))
    if not sources:
        raise QuantizationError(f"spec.model: {model_dir} has no *.safetensors weights; re-export the model")
    started = time.time()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    state: dict[str, torch.Tensor] = {}
    for f in sources:
        state.update(load_file(f))
    float_dtypes = [t.dtype for k, t in state.items() if k.endswith(".weight") and t.is_floating_point()]
    scale_dtype = float_dtypes[0] if float_dtypes and float_dtypes[0] in (torch.float16, torch.bfloat16) else torch.bfloat16

    scale_dtype_name = str(scale_dtype).removeprefix("torch.")
    qweights, info = quantize_model(model, opts, calibration, scale_dtype, log)
    for name, qw in qweights.items():
        if f"{name}.weight" not in state:
            raise QuantizationError(f"layer {name}: its weight is not in {model_dir}'s safetensors; re-export the model")
        del state[f"{name}.weight"]
        for k, v in _pack(qw, info["groupSize"], opts.symmetric).items():
            state[f"{name}.{k}"] = v

    with staged_directory(out_dir) as tmp:
        for p in model_dir.iterdir():
            if p.name in SKIP_FILES or p.suffix == ".safetensors" or p.name.startswith("."):
                continue
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = json.loads((model_dir / "config.json").read_text())
        config["quantization_config"] = compressed_tensors_config(info["groupSize"], opts.symmetric)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        manifest = {
            "kind": "QuantizedModel",
            "format": "compressed-tensors/pack-quantized",
            "scheme": "W4A16",
            "algorithm": opts.algorithm,
            "symmetric": opts.symmetric,
            "bits": BITS,
            "source": str(model_dir),
            "calibrationSamples": 0 if calibration is None else int(calibration.shape[0]),
            "calibrationTokens": 0 if calibration is None else int(calibration.numel()),
            "sizeBytes": weights_size(tmp),
            "sourceSizeBytes": sum(p.stat().st_size for p in sources),
            "seconds": round(time.time() - started, 2),
            **info,
            **(extra_manifest or {}),
        }
        if card is not None:
            quantization = {k: v for k, v in manifest.items() if not isinstance(v, list | dict)}
            facts = card.model_copy(update={"details": {**card.details, "quantization": quantization}})
            manifest.update(with_model_card(tmp, facts, sum(p.numel() for p in model.parameters()),
                                            dtype=f"int4 weights (W4A16, group {info['groupSize']}), {scale_dtype_name} scales"))
        write_manifest(tmp, manifest, spec_hash)
    log(
        f"quantized {info['layers']} linear layers ({opts.algorithm}, group {info['groupSize']}, "
        f"{'sym' if opts.symmetric else 'asym'}) in {manifest['seconds']} s: "
        f"{manifest['sourceSizeBytes'] / 2**20:.2f} MiB -> {manifest['sizeBytes'] / 2**20:.2f} MiB"
    )
    return manifest


def load_dequantized(path: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a W4A16 checkpoint as a plain model with the dequantized weights (for evaluation).

    ``AutoModelForCausalLM.from_pretrained`` loads symmetric checkpoints, but transformers 5.24 with
    compressed-tensors 0.19/0.20 rejects asymmetric ones (it expects unpacked zero points while
    building the model); this reads any of ours with compressed-tensors' own unpacker.
    """
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = json.loads((path / "config.json").read_text())
    qc = raw.pop("quantization_config", None)
    config = AutoConfig.for_model(**raw)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state: dict[str, torch.Tensor] = {}
    for f in sorted(path.glob("*.safetensors")):
        state.update(load_file(f))
    if qc:
        args = QuantizationArgs(**qc["config_groups"]["group_0"]["weights"])
        scheme = QuantizationScheme(targets=["Linear"], weights=args)
        for prefix in [k.removesuffix(".weight_packed") for k in state if k.endswith(".weight_packed")]:
            local = {k.removeprefix(prefix + "."): state.pop(k) for k in list(state) if k.startswith(prefix + ".")}
            state[f"{prefix}.weight"] = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise QuantizationError(f"{path}: checkpoint does not match its config: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval()
