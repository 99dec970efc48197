"""``objective: sft``: a tiny base model fine-tuned on a known instruction mapping ("define WORD" -> a
fixed gloss): response-only labels, held-out loss below the base's, the chat template in the export,
and clear errors on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from llmfab.status import read_status
from llmfab.training.objectives.sft.examples import IGNORE, encode, render
from llmfab.workload import run_stage
from tests.training.test_reward import CONTEXT, WORDS, base_home, base_template, write_jsonl  # noqa: F401

VOCAB_WORDS = sorted(set(WORDS))


def gloss(i: int) -> str:
    n = len(VOCAB_WORDS)
    return " ".join(VOCAB_WORDS[(i * k + 3) % n] for k in (1, 2, 5))


def instructions() -> list[dict[str, Any]]:
    """Each word asked three ways, the answer its fixed gloss; one in three as a chat ``messages`` row."""
    rows: list[dict[str, Any]] = []
    for i, word in enumerate(VOCAB_WORDS):
        for j, prompt in enumerate((f"define {word}", f"what does {word} mean", f"{word} means what")):
            if j == 2:
                rows.append({"messages": [{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": gloss(i)}]})
            else:
                rows.append({"prompt": prompt, "response": gloss(i)})
    return rows


def sft_spec(path: Path, name: str = "sft", **overrides: Any) -> Path:
    spec: dict[str, Any] = {
        "objective": "sft", "dataset": {"name": "tiny"}, "initFrom": {"trainingRun": "base"},
        "sft": {"path": "instructions.jsonl", "valFraction": 0.1},
        "maxSteps": 40, "seed": 1, "precision": "fp32",  # base: seed 0, so a fresh init would differ
        "optimizer": {"lr": 3e-3, "warmupSteps": 4, "weightDecay": 0.0},
        "batch": {"globalTokens": CONTEXT * 16},
        "checkpoint": {"everySteps": 20, "keepLast": 1},
        "evalEverySteps": 20,
        "monitoring": {"prometheusPort": None, "logEverySteps": 10, "tensorboard": False},
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    file = path / f"{name}.yaml"
    file.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": "TrainingRun",
                                    "metadata": {"name": name}, "spec": spec}))
    return file


def held_out_loss(model_dir: Path, root: Path) -> float:
    """Loss of an exported model on the run's held-out examples, computed from the export."""
    from transformers import AutoTokenizer

    from llmfab.api.training_run import TrainingRun
    from llmfab.model.hf import load_hf
    from llmfab.training.loop.trainer import LanguageModelLoss, inputs_and_targets
    from llmfab.training.objectives.sft.examples import instruction_files, read_chats, split_examples, to_rows

    spec = TrainingRun.model_validate(yaml.safe_load((root.parent / "sft.yaml").read_text())).spec
    assert spec.sft is not None
    chats = read_chats(instruction_files(spec.sft.path, root.parent / spec.sft.path), spec.sft)
    _, held = split_examples(chats, spec.sft.val_fraction, spec.seed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model, args = load_hf(model_dir)
    rows = to_rows([encode(tok, chat, args.context_length, False) for _, chat in held], args.context_length,
                   tok.pad_token_id)
    with torch.no_grad():
        return float(LanguageModelLoss(model.eval(), 0.0, 4096)(*inputs_and_targets(rows)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base_template: Path) -> Path:  # noqa: F811
    """`llmfab train run`: one SFT run of 40 steps on the instructions (a tenth held out); returns the artifact root."""
    work = tmp_path_factory.mktemp("sft")
    root = work / "home"
    shutil.copytree(base_template, root / "runs" / "base")
    write_jsonl(work / "instructions.jsonl", instructions())
    env = {**os.environ, "LLMFAB_HOME": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "llmfab", "train", "run", "--spec", str(sft_spec(work))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return root


def test_labels_cover_the_response_and_its_eos_only(base_template: Path) -> None:  # noqa: F811
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_template / "model"))
    chat = [{"role": "user", "content": "define fox"}, {"role": "assistant", "content": "quick brown dog"}]
    ex = encode(tok, chat, CONTEXT, loss_on_prompt=False)
    trained_on = [t for t, label in zip(ex.ids, ex.labels, strict=True) if label != IGNORE]
    assert tok.decode(trained_on) == "quick brown dog</s>"  # not the template's turn marker nor its "\n"
    prompt = tok.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    prompt_len = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert set(ex.labels[:prompt_len]) == {IGNORE} and tok.decode(ex.ids[:prompt_len]) == prompt
    assert ex.labels[prompt_len:] == [*ex.ids[prompt_len:-1], IGNORE]
    turns = [{"role": "system", "content": "be brief"}, *chat, {"role": "user", "content": "and dog"},
             {"role": "assistant", "content": "lazy"}]
    multi = encode(tok, turns, 4 * CONTEXT, loss_on_prompt=False)
    assert not multi.truncated and encode(tok, turns, 8, loss_on_prompt=False).truncated
    assert tok.decode([t for t, label in zip(multi.ids, multi.labels, strict=True) if label != IGNORE]) == \
        "quick brown dog</s>lazy</s>"  # every assistant turn, nothing else
    everything = encode(tok, chat, CONTEXT, loss_on_prompt=True)
    assert everything.labels[:-1] == everything.ids[:-1]  # all but the "\n" after EOS


def test_sft_run_succeeds_and_the_held_out_loss_falls_below_the_base(trained: Path) -> None:
    status = read_status("runs", "sft", trained)
    assert status["phase"] == "Succeeded" and status["step"] == 40 and status["valLoss"] is not None
    manifest = json.loads((trained / "runs" / "sft" / "manifest.json").read_text())
    held = round(len(instructions()) * 0.1)
    assert manifest["objective"] == "sft" and manifest["heldOutExamples"] == held
    assert manifest["examples"] == len(instructions()) - held
    assert manifest["base"] == {"trainingRun": "base", "specHash": "fixture"}
    before = held_out_loss(trained / "runs" / "base" / "model", trained)
    after = held_out_loss(trained / "runs" / "sft" / "model", trained)
    print(f"held-out loss: base {before:.3f} -> sft {after:.3f} (status valLoss {status['valLoss']:.3f})")
    assert after == pytest.approx(status["valLoss"], abs=1e-3)
    assert after < before - 1.0


def test_the_export_carries_the_chat_template_training_used(trained: Path) -> None:
    from transformers import AutoTokenizer

    model_dir = trained / "runs" / "sft" / "model"
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoTokenizer.from_pretrained(str(trained / "runs" / "base" / "model"))
    assert tok.chat_template and tok.chat_template == base.chat_template
    chat = [{"role": "user", "content": "define fox"}, {"role": "assistant", "content": gloss(0)}]
    text, _ = render(base, chat)  # what training tokenized
    assert tok.apply_chat_template(chat, tokenize=False) == text and gloss(0) + tok.eos_token in text
    assert tok.apply_chat_template(chat, tokenize=True, return_dict=False) == encode(base, chat, CONTEXT, False).ids


def test_training_starts_from_the_base_weights(base_home: Path, tmp_path: Path) -> None:  # noqa: F811
    from safetensors.torch import load_file

    write_jsonl(tmp_path / "instructions.jsonl", instructions())
    spec = sft_spec(tmp_path, maxSteps=1, optimizer={"lr": 1e-12, "warmupSteps": 0})
    assert run_stage("train", spec) == 0
    base = load_file(str(base_home / "runs" / "base" / "model" / "model.safetensors"))
    tuned = load_file(str(base_home / "runs" / "sft" / "model" / "model.safetensors"))
    assert base.keys() == tuned.keys()
    for name, tensor in base.items():
        torch.testing.assert_close(tuned[name], tensor, atol=1e-6, rtol=0)


GOOD = {"prompt": "define fox", "response": "quick brown dog"}


@pytest.mark.parametrize(("rows", "overrides", "code", "expected"), [
    ([GOOD, {"prompt": "define dog"}], {}, 1, "spec.sft.responseField: "),
    ([GOOD, {"question": "x", "response": "y"}], {}, 1, "spec.sft.promptField: "),
    ([GOOD, {**GOOD, "response": " "}], {}, 1, "spec.sft.responseField: "),
    ([GOOD, {"messages": [{"role": "user", "content": "hi"}]}], {}, 1, "spec.sft.messagesField: "),
    ([], {}, 1, "spec.sft.path: "),
    ([GOOD] * 4, {"sft": {"path": "missing/*.jsonl"}}, 1, "spec.sft.path: 'missing/*.jsonl'"),
    ([GOOD] * 4, {"model": {"hidden": 128}}, 1, "spec.model.hidden: 128 differs from the base model's 64"),
    ([GOOD] * 4, {"initFrom": {"trainingRun": "nope"}}, 3, "waiting for TrainingRun/nope"),
    ([GOOD] * 4, {"initFrom": {"trainingRun": None, "path": "nowhere"}, "release": {"license": "apache-2.0"}}, 1,
     "spec.initFrom.path: 'nowhere' has no tokenizer"),
], ids=["no-response", "no-prompt", "empty-response", "no-assistant-turn", "no-examples", "no-file", "shape",
        "base-not-ready", "no-tokenizer"])
def test_bad_input_is_a_clear_error_naming_the_field(base_home: Path, tmp_path: Path,  # noqa: F811
                                                    rows: list[dict[str, Any]], overrides: dict[str, Any],
                                                    code: int, expected: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "instructions.jsonl", rows)
    assert run_stage("train", sft_spec(tmp_path, maxSteps=2, **overrides)) == code
    err = capsys.readouterr().err
    assert expected in err and "error:" in err and "Traceback" not in err
    assert not (base_home / "runs" / "sft" / "manifest.json").exists()


def test_a_base_without_a_tokenizer_is_refused(base_home: Path, tmp_path: Path,  # noqa: F811
                                               capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = base_home / "runs" / "base" / "model"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / f).unlink()
    write_jsonl(tmp_path / "instructions.jsonl", [GOOD] * 4)
    assert run_stage("train", sft_spec(tmp_path, maxSteps=2)) == 1
    assert "spec.initFrom.trainingRun: TrainingRun/base has no tokenizer" in capsys.readouterr().err


def test_two_process_fsdp_sft_loads_the_base_into_shards_and_trains(base_home: Path, tmp_path: Path) -> None:  # noqa: F811
    write_jsonl(tmp_path / "instructions.jsonl", instructions())
    spec = sft_spec(tmp_path, maxSteps=20, parallelism={"processesPerNode": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "llmfab", "train", "run", "--spec", str(spec)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    status = read_status("runs", "sft", base_home)
    assert status["phase"] == "Succeeded" and status["valLoss"] < 5.0  # the base: 6.0
    assert sorted(p.name for p in (base_home / "runs" / "sft" / "checkpoints" / "step-00000020").glob("*.distcp")) \
        == ["__0_0.distcp", "__1_0.distcp"]
