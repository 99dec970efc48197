"""Export a llmfab Transformer as a Hugging Face ``LlamaForCausalLM`` directory, and load one back.

The model's numerics are Llama's, so the export is a weight copy: fused q/k/v and gate/up rows are
split into Llama's separate projections, and ALBERT-style sharing is unrolled (layer ``i`` gets a
copy of block ``i % groups``), since the Llama format has no shared layers. The directory holds
``config.json``, ``model.safetensors``, ``generation_config.json``, the tokenizer files (of the Dataset,
or of the base model for post-training) with one chat template (vLLM's ``/v1/chat/completions``
refuses a tokenizer without one), and
``manifest.json``, written last inside a temporary sibling that is renamed into place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmfab.cards import CardFacts, manifest_entry, write_card
from llmfab.cards.facts import model_facts, tokenizer_label
from llmfab.model.transformer import ModelArgs, Transformer
from llmfab.store import staged_directory, write_json_atomic, write_manifest

# A plain-text dialogue format; the SFT objective formats its (prompt, response) pairs the same way.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# What a Hugging Face tokenizer is made of (transformers' file names: fast tokenizer, its config and
# special tokens, SentencePiece/BPE/WordPiece vocabularies, chat templates); nothing else of a
# tokenizer or model directory is copied into an export.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATES_DIR = "additional_chat_templates"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt", CHAT_TEMPLATE_FILE,
                   "chat_template.json")
_WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.", "module.")


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the name parts that compile, activation checkpointing, FSDP or DDP wrappers insert."""
    out = {}
    for name, tensor in state.items():
        for prefix in _WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        out[name] = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return out


def to_hf_state_dict(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """llmfab names -> Llama names, sharing unrolled. Every tensor is its own copy (safetensors
    refuses tensors that share memory)."""
    s = clean_state_dict(state)
    q, kv = args.heads * args.head_dim, args.kv_heads * args.head_dim
    hf = {"model.embed_tokens.weight": s["embed.weight"], "model.norm.weight": s["norm.weight"]}
    if not args.tie_embeddings:
        hf["lm_head.weight"] = s["output.weight"]
    for layer in range(args.layers):
        b, o = f"blocks.{layer % args.sharing_groups}.", f"model.layers.{layer}."
        wq, wk, wv = torch.split(s[b + "attn.qkv.weight"], [q, kv, kv])
        gate, up = s[b + "mlp.gate_up.weight"].chunk(2)
        hf.update({
            o + "input_layernorm.weight": s[b + "attn_norm.weight"],
            o + "self_attn.q_proj.weight": wq, o + "self_attn.k_proj.weight": wk,
            o + "self_attn.v_proj.weight": wv, o + "self_attn.o_proj.weight": s[b + "attn.proj.weight"],
            o + "post_attention_layernorm.weight": s[b + "mlp_norm.weight"],
            o + "mlp.gate_proj.weight": gate, o + "mlp.up_proj.weight": up,
            o + "mlp.down_proj.weight": s[b + "mlp.down.weight"],
        })
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in hf.items()}


def hf_config(args: ModelArgs, dtype: str, special_ids: dict[str, int | None]) -> dict[str, Any]:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=args.context_length, rms_norm_eps=args.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        tie_word_embeddings=args.tie_embeddings, hidden_act="silu",
        attention_bias=False, mlp_bias=False, initializer_range=args.init_std,
        architectures=["LlamaForCausalLM"], bos_token_id=special_ids.get("bos_token_id"),
        eos_token_id=special_ids.get("eos_token_id"), pad_token_id=special_ids.get("pad_token_id"),
    )
    data: dict[str, Any] = config.to_dict()
    data["torch_dtype"] = dtype
    return data


def _special_ids(tokenizer_dir: Path) -> dict[str, int | None]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id}


def copy_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    """The tokenizer files of ``tokenizer_dir`` (a Dataset's ``tokenizer/`` or a model directory)
    into ``out``, byte for byte, and exactly one chat template.

    Only the files a Hugging Face tokenizer is made of are copied (:data:`TOKENIZER_FILES`), so a
    model directory given as the tokenizer source does not bring its weights, config or manifest.
    A template stored as a file (``chat_template.jinja``, what transformers 5 saves) takes priority
    over ``tokenizer_config.json``'s ``chat_template`` when transformers loads the tokenizer; the
    export keeps such a file and drops the config's key, and adds :data:`CHAT_TEMPLATE` to the config
    only where the tokenizer has no template at all. Two templates would let tools that read only
    the config render chats differently from what training and vLLM used.
    """
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, out / name)
    if (tokenizer_dir / CHAT_TEMPLATES_DIR).is_dir():
        shutil.copytree(tokenizer_dir / CHAT_TEMPLATES_DIR, out / CHAT_TEMPLATES_DIR)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if (out / CHAT_TEMPLATE_FILE).is_file():
        if config.pop("chat_template", None) is None:
            return  # the source's config is already as it should be: keep its bytes
    elif config.get("chat_template"):
        return
    else:
        config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_hf(model_or_state: nn.Module | dict[str, torch.Tensor], args: ModelArgs, tokenizer_dir: Path,
              out_dir: Path, *, dtype: str = "bfloat16", special_ids: dict[str, int | None] | None = None,
              manifest: dict[str, Any] | None = None, spec_hash: str | None = None,
              card: CardFacts | None = None) -> Path:
    """Write ``out_dir`` atomically as a ``LlamaForCausalLM`` directory; returns ``out_dir``.

    ``model_or_state``: the model or its full (unsharded) state dict. ``dtype``: "bfloat16" or
    "float32" for the stored weights. ``special_ids``: bos/eos/pad token ids (default: read from the
    tokenizer). ``manifest``: extra fields for ``manifest.json``.
    """
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype: {dtype!r} is not supported; use 'bfloat16' or 'float32'")
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").exists() and not (tokenizer_dir / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"tokenizer_dir: {tokenizer_dir} holds no Hugging Face tokenizer files "
                                "(tokenizer.json / tokenizer_config.json); pass the Dataset's tokenizer/ dir")
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    weights = {k: v.to(getattr(torch, dtype)) for k, v in to_hf_state_dict(state, args).items()}
    ids = special_ids if special_ids is not None else _special_ids(tokenizer_dir)
    with staged_directory(Path(out_dir)) as tmp:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json_atomic(tmp / "config.json", hf_config(args, dtype, ids))
        write_json_atomic(tmp / "generation_config.json", {**ids, "_from_model_config": True})
        copy_tokenizer(tokenizer_dir, tmp)
        parameters = sum(v.numel() for v in weights.values())
        body = {"kind": "HFModel", "architecture": "LlamaForCausalLM", "dtype": dtype,
                "parameters": parameters, **(manifest or {})}
        if card is not None:
            body.update(with_model_card(tmp, card, parameters))
        write_manifest(tmp, body, spec_hash)
    return Path(out_dir)


def with_model_card(directory: Path, card: CardFacts, parameters: int, dtype: str | None = None) -> dict[str, Any]:
    """Write ``README.md`` in a staged model directory from ``card`` and its ``config.json``; return
    the manifest entry that keeps the facts. ``dtype``: how the weights are stored, where the config's
    dtype does not say it (4-bit)."""
    config = json.loads((directory / "config.json").read_text())
    model = model_facts(config, parameters, tokenizer_label(directory))
    facts = card.model_copy(update={"model": model.model_copy(update={"dtype": dtype}) if dtype else model})
    write_card(directory, facts)
    return manifest_entry(facts)


def args_from_hf_config(config: dict[str, Any]) -> ModelArgs:
    rope = config.get("rope_parameters") or {}
    layers = config["num_hidden_layers"]
    return ModelArgs(
        vocab_size=config["vocab_size"], layers=layers, hidden=config["hidden_size"],
        heads=config["num_attention_heads"], head_dim=config.get("head_dim") or 0,
        kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        intermediate=config["intermediate_size"], context_length=config["max_position_embeddings"],
        rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
        norm_eps=config["rms_norm_eps"], tie_embeddings=config.get("tie_word_embeddings", False),
        init_std=config.get("initializer_range", 0.02), sharing_groups=layers,
    )


def load_hf(model_dir: Path) -> tuple[Transformer, ModelArgs]:
    """Rebuild a llmfab Transformer (fp32, no sharing) from an exported directory (e.g. initFrom)."""
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(f"{model_dir}/config.json: model_type {config.get('model_type')!r} is not 'llama'")
    args = args_from_hf_config(config)
    hf = {k: v.float() for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    state = {"embed.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"],
             "output.weight": hf.get("lm_head.weight", hf["model.embed_tokens.weight"])}
    for i in range(args.layers):
        o, b = f"model.layers.{i}.", f"blocks.{i}."
        state.update({
            b + "attn_norm.weight": hf[o + "input_layernorm.weight"],
            b + "attn.qkv.weight": torch.cat([hf[o + f"self_attn.{n}_proj.weight"] for n in "qkv"]),
            b + "attn.proj.weight": hf[o + "self_attn.o_proj.weight"],
            b + "mlp_norm.weight": hf[o + "post_attention_layernorm.weight"],
            b + "mlp.gate_up.weight": torch.cat([hf[o + "mlp.gate_proj.weight"], hf[o + "mlp.up_proj.weight"]]),
            b + "mlp.down.weight": hf[o + "mlp.down_proj.weight"],
        })
    model = Transformer(args)
    model.load_state_dict(state)
    return model, args
