"""Load a Hugging Face model directory (bf16 export or compressed-tensors 4-bit) for evaluation.

Both formats load with ``AutoModelForCausalLM`` on CPU; a 4-bit checkpoint is decompressed into the
compute dtype so the same code measures both and the quantization cost is one number.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


class ModelLoadError(ValueError):
    """The model directory cannot be evaluated; the message says why and what to do."""


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelLoadError(
            f"{model_dir}: no config.json; this is not a Hugging Face model directory "
            "(train the TrainingRun first, or point spec.model.path at an exported model)"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def is_quantized(model_dir: Path) -> bool:
    return "quantization_config" in read_config(model_dir)


def compute_dtype(dtype: str) -> torch.dtype:
    """``auto``: bfloat16 on a GPU; float32 on CPU, where HF's bf16 forward measured ~5x slower."""
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return DTYPES[dtype]


def load_model(model_dir: Path, dtype: str = "auto") -> PreTrainedModel:
    """The model in eval mode (on the GPU if there is one), weights (decompressed if 4-bit) in ``dtype``."""
    config = read_config(model_dir)
    kwargs: dict[str, Any] = {"dtype": compute_dtype(dtype)}
    quant = config.get("quantization_config")
    if quant is not None:
        method = quant.get("quant_method")
        if method == "compressed-tensors":
            if importlib.util.find_spec("compressed_tensors") is None:
                raise ModelLoadError(
                    f"{model_dir}: a compressed-tensors checkpoint needs the `compressed-tensors` package; "
                    "install it in this environment (pip install compressed-tensors)"
                )
            from transformers import CompressedTensorsConfig

            # Decompress to dense weights: the CPU has no packed 4-bit matmul in transformers.
            kwargs["quantization_config"] = CompressedTensorsConfig(run_compressed=False)
        else:
            raise ModelLoadError(
                f"{model_dir}: quantization method {method!r} is not supported for evaluation; "
                "quantize to compressed-tensors (spec.quantization.method: w4a16)"
            )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if torch.cuda.is_available():  # evaluation in a GPU pod (the trainer image); CPU otherwise
        model.to("cuda")  # type: ignore[arg-type]
    model.eval()  # type: ignore[no-untyped-call]
    return model


def load_tokenizer(model_dir: Path, fallback_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer stored with the model, else the Dataset's Hugging Face tokenizer."""
    for candidate in (model_dir, fallback_dir):
        if candidate is not None and (candidate / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(candidate))
    raise ModelLoadError(
        f"{model_dir}: no tokenizer files (tokenizer_config.json) with the model or the Dataset; "
        "re-export the model with its tokenizer"
    )


def context_length(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", 512))


def weights_size_bytes(model_dir: Path) -> int:
    """Bytes of weight files on disk (safetensors/bin), what serving this directory loads."""
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
