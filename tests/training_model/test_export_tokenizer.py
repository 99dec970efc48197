"""What of a tokenizer directory the export copies: the tokenizer files only (a model directory given
as the source brings no weights or config), and exactly one chat template."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from llmfab.model.hf import CHAT_TEMPLATE, CHAT_TEMPLATE_FILE, TOKENIZER_FILES, export_hf
from llmfab.model.transformer import Transformer

from .conftest import tiny_args

CUSTOM = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}" \
         "{% if add_generation_prompt %}<|assistant|>{% endif %}"


def base_with_template(tokenizer_dir: Path, tmp_path: Path, also_in_config: bool) -> Path:
    """An exported model whose tokenizer was re-saved by transformers with its own chat template (a
    ``chat_template.jinja`` file), and, with ``also_in_config``, a stale template in the config too."""
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    args = tiny_args()
    base = export_hf(Transformer(args), args, tokenizer_dir, tmp_path / "base", dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.chat_template = CUSTOM
    tok.save_pretrained(str(base))
    assert (base / CHAT_TEMPLATE_FILE).read_text() == CUSTOM
    if also_in_config:
        config = json.loads((base / "tokenizer_config.json").read_text())
        (base / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    (base / "training_args.bin").write_bytes(b"not a tokenizer file")
    return base


def test_a_model_directory_as_tokenizer_source_brings_only_its_tokenizer(tokenizer_dir: Path, tmp_path: Path) -> None:
    base = base_with_template(tokenizer_dir, tmp_path, also_in_config=False)
    torch.manual_seed(1)
    args = tiny_args()
    tuned = Transformer(args)
    out = export_hf(tuned, args, base, tmp_path / "tuned", dtype="float32")
    tokenizer_files = {p.name for p in base.iterdir()} & set(TOKENIZER_FILES)
    assert {"tokenizer.json", "tokenizer_config.json", CHAT_TEMPLATE_FILE} <= tokenizer_files
    assert {p.name for p in out.iterdir()} == tokenizer_files | {
        "config.json", "generation_config.json", "manifest.json", "model.safetensors"}
    assert not (out / "training_args.bin").exists()
    weights = load_file(str(out / "model.safetensors"))  # ours, not the base's
    torch.testing.assert_close(weights["model.embed_tokens.weight"], tuned.embed.weight.detach())
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()


def test_a_template_file_stays_the_only_chat_template(tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    for also_in_config in (False, True):
        base = base_with_template(tokenizer_dir, tmp_path / str(also_in_config), also_in_config)
        args = tiny_args()
        out = export_hf(Transformer(args), args, base, tmp_path / str(also_in_config) / "tuned", dtype="float32")
        assert (out / CHAT_TEMPLATE_FILE).read_text() == CUSTOM
        assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())  # not a second one
        tok = AutoTokenizer.from_pretrained(str(out))
        assert tok.chat_template == CUSTOM
        assert tok.apply_chat_template([{"role": "user", "content": "w1"}], tokenize=False,
                                       add_generation_prompt=True) == "<|user|>w1</s><|assistant|>"


def test_a_tokenizer_without_a_template_gets_the_default_in_its_config(tokenizer_dir: Path, tmp_path: Path) -> None:
    args = tiny_args()
    out = export_hf(Transformer(args), args, tokenizer_dir, tmp_path / "m", dtype="float32")
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert not (out / CHAT_TEMPLATE_FILE).exists()
