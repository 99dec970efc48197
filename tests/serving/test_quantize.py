"""W4A16 checkpoints of a tiny trained Llama: format, transformers loading, perplexity, bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llmfab.compress.quantize import QuantizationError, QuantizeOptions, load_dequantized, quantize_checkpoint
from llmfab.store import read_manifest
from llmfab.workload import run_stage

from .conftest import TinySetup, write_service
from .tiny_models import build_llama, perplexity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def test_windows(tiny: TinySetup) -> torch.Tensor:
    from llmfab.compress.quantize import load_calibration

    return load_calibration(tiny.dataset, 32, 128, split="test")


def load(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def test_checkpoint_is_compressed_tensors_w4a16_with_head_and_embeddings_kept(gptq_dir: Path) -> None:
    config = json.loads((gptq_dir / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    w = qc["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["strategy"], w["group_size"], w["symmetric"]) == (4, "group", 128, True)
    assert qc["ignore"] == ["lm_head"]
    with safe_open(str(gptq_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.down_proj.weight_packed").shape == (128, 256 // 8)
        assert f.get_tensor("model.layers.0.mlp.down_proj.weight_scale").shape == (128, 2)
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert not any(k.endswith("proj.weight") for k in keys), "a linear layer was left unquantized"
    # The tokenizer and its chat template travel with the model.
    assert (gptq_dir / "tokenizer.json").exists() and (gptq_dir / "chat_template.jinja").exists()
    manifest = read_manifest(gptq_dir)
    assert manifest and manifest["algorithm"] == "gptq" and manifest["layers"] == 14
    assert manifest["sizeBytes"] < 0.6 * manifest["sourceSizeBytes"]


def test_transformers_loads_4bit_and_perplexity_is_close_to_bf16(
    tiny: TinySetup, gptq_dir: Path, rtn_dir: Path, test_windows: torch.Tensor
) -> None:
    ppl_bf16 = perplexity(load(tiny.bf16), test_windows)
    ppl_gptq = perplexity(load(gptq_dir), test_windows)
    ppl_rtn = perplexity(load(rtn_dir), test_windows)
    vocab = json.loads((tiny.bf16 / "config.json").read_text())["vocab_size"]
    assert ppl_bf16 < vocab / 2, "the fixture model did not learn anything; the comparison would be empty"
    for ppl in (ppl_gptq, ppl_rtn):
        assert torch.isfinite(torch.tensor(ppl)) and ppl <= 1.10 * ppl_bf16, (ppl_bf16, ppl_gptq, ppl_rtn)


def test_layer_not_multiple_of_32_fails_before_work_naming_layer(tiny: TinySetup, tmp_path: Path) -> None:
    bad = build_llama(tmp_path / "bad", tiny.tokenizer, hidden=128, intermediate=200, layers=1, heads=4)
    with pytest.raises(QuantizationError, match=r"layer model\.layers\.0\.mlp\.\w+_proj: \w+_features=200 .*multiple of 32"):
        quantize_checkpoint(bad, tmp_path / "out", QuantizeOptions(algorithm="rtn"), None)
    assert not (tmp_path / "out").exists()


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="not a Hugging Face model directory"):
        quantize_checkpoint(tmp_path / "nope", tmp_path / "out", QuantizeOptions(algorithm="rtn"), None)


def test_quantize_workload_calibrates_on_dataset_and_is_reused(
    tiny: TinySetup, test_windows: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMFAB_HOME", str(tiny.root))
    spec = {
        "model": {"path": str(tiny.bf16)},
        "quantization": {"algorithm": "gptq", "calibrationDataset": "tinyds", "calibrationSamples": 8,
                         "symmetric": False, "groupSize": 64},
    }  # fmt: skip
    f = write_service(tmp_path / "svc.yaml", "wq", spec)
    assert run_stage("quantize", f) == 0
    out = tiny.root / "services" / "wq" / "model-4bit"
    manifest = read_manifest(out)
    assert manifest and manifest["calibrationDataset"] == "tinyds" and 1 <= manifest["calibrationSamples"] <= 8
    assert manifest["groupSize"] == 64 and manifest["symmetric"] is False
    mtime = os.stat(out / "model.safetensors").st_mtime
    assert run_stage("quantize", f) == 0  # same spec, same source: reused, not rebuilt
    assert os.stat(out / "model.safetensors").st_mtime == mtime
    assert "up to date" in capsys.readouterr().out
    status = json.loads((tiny.root / "services" / "wq.status.json").read_text())
    assert status["modelSizeBytes"] == manifest["sizeBytes"]
    # Asymmetric checkpoints: transformers 5.24 cannot build them; our loader reads them.
    ppl_bf16, ppl_asym = perplexity(load(tiny.bf16), test_windows), perplexity(load_dequantized(out), test_windows)
    assert ppl_asym <= 1.10 * ppl_bf16, (ppl_bf16, ppl_asym)


def test_quantize_workload_errors(tiny: TinySetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("LLMFAB_HOME", str(tiny.root))
    f = write_service(tmp_path / "a.yaml", "missing", {"model": {"path": str(tmp_path / "no-such-model")}})
    assert run_stage("quantize", f) == 1
    assert "spec.model.path" in capsys.readouterr().err
    f = write_service(tmp_path / "b.yaml", "nocalib", {"model": {"path": str(tiny.bf16)}})
    assert run_stage("quantize", f) == 1
    assert "spec.quantization.calibrationDataset" in capsys.readouterr().err
    spec = {"model": {"path": str(tiny.bf16)}, "quantization": {"calibrationDataset": "not-built"}}
    f = write_service(tmp_path / "c.yaml", "waiting", spec)
    assert run_stage("quantize", f) == 3  # dependency not ready
