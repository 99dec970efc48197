"""Export to Hugging Face Llama: transformers loads the directory and its logits equal llmfab's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmfab.model.hf import export_hf, load_hf
from llmfab.model.transformer import Transformer
from llmfab.store import read_manifest

from .conftest import VOCAB, tiny_args


@pytest.mark.parametrize(("overrides", "name"), [
    ({}, "plain-tied"),
    ({"layers": 4, "sharing_groups": 2, "kv_heads": 2}, "shared-gqa"),
    ({"tie_embeddings": False, "kv_heads": 1}, "untied-mqa"),
])
def test_transformers_logits_equal_llmfab_logits_in_fp32(overrides: dict, name: str, tokenizer_dir: Path,
                                                          tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    args = tiny_args(rope_theta=5000.0, norm_eps=1e-6, **overrides)
    model = Transformer(args).eval()
    with torch.no_grad():  # non-trivial norm weights, so a swapped norm would show
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    out = export_hf(model, args, tokenizer_dir, tmp_path / name, dtype="float32")
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert hf.config.num_hidden_layers == args.layers  # sharing unrolled
    assert hf.config.tie_word_embeddings == args.tie_embeddings
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(input_ids=tokens).logits
        ours = model.logits(tokens)
    assert (theirs - ours).abs().max().item() < 1e-4


def test_export_dir_is_complete_for_serving(tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    args = tiny_args()
    out = export_hf(Transformer(args), args, tokenizer_dir, tmp_path / "model", manifest={"run": "tiny"})
    assert read_manifest(out)["run"] == "tiny"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["torch_dtype"] == "bfloat16"
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 3)
    tok = AutoTokenizer.from_pretrained(str(out))
    prompt = tok.apply_chat_template([{"role": "user", "content": "w1 w2"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "User: w1 w2\nAssistant:"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_bf16_export_reloads_into_llmfab(tokenizer_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    args = tiny_args(layers=4, sharing_groups=2, kv_heads=2, tie_embeddings=False)
    model = Transformer(args).eval()
    out = export_hf(model.state_dict(), args, tokenizer_dir, tmp_path / "m")
    loaded, loaded_args = load_hf(out)
    assert loaded_args.layers == 4 and loaded_args.sharing_groups == 4 and loaded_args.kv_heads == 2
    tokens = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        assert (loaded.eval().logits(tokens) - model.logits(tokens)).abs().max() < 0.05  # bf16 weights


def test_wrapper_prefixes_in_the_state_dict_are_ignored(tokenizer_dir: Path, tmp_path: Path) -> None:
    args = tiny_args()
    state = {k.replace("blocks.0.", "blocks.0._checkpoint_wrapped_module."): v
             for k, v in Transformer(args).state_dict().items()}
    export_hf(state, args, tokenizer_dir, tmp_path / "m", special_ids={"bos_token_id": 1, "eos_token_id": 2,
                                                                        "pad_token_id": 3})
    assert read_manifest(tmp_path / "m") is not None


def test_missing_tokenizer_fails_before_anything_is_written(tmp_path: Path) -> None:
    args = tiny_args()
    with pytest.raises(FileNotFoundError, match="tokenizer_dir"):
        export_hf(Transformer(args), args, tmp_path / "nothing", tmp_path / "m")
    assert not (tmp_path / "m").exists()
