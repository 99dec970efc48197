"""SFT from a base whose tokenizer ships its own ``chat_template.jinja`` (what transformers 5 saves):
training renders with that template, and the export carries it as the one and only template, so
vLLM and every other reader format a chat as training did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmfab.model.hf import CHAT_TEMPLATE_FILE
from llmfab.training.objectives.sft.examples import encode
from llmfab.workload import run_stage
from tests.training.test_reward import CONTEXT, base_home, base_template, write_jsonl  # noqa: F401
from tests.training.test_sft import instructions, sft_spec

TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}"
            "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %} {% endfor %}"
            "{% if add_generation_prompt %}### assistant:{% endif %}")


def test_sft_keeps_the_bases_template_file_as_the_only_chat_template(base_home: Path, tmp_path: Path) -> None:  # noqa: F811
    from transformers import AutoTokenizer

    base = tmp_path / "hf-base"
    shutil.copytree(base_home / "runs" / "base" / "model", base)
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.chat_template = TEMPLATE
    tok.save_pretrained(str(base))  # writes chat_template.jinja and keeps it out of tokenizer_config.json
    write_jsonl(tmp_path / "instructions.jsonl", instructions())
    spec = sft_spec(tmp_path, maxSteps=2, initFrom={"trainingRun": None, "path": str(base)},
                    release={"license": "apache-2.0"})  # a base by path: no llmfab model to take the licence from
    assert run_stage("train", spec) == 0

    out = base_home / "runs" / "sft" / "model"
    assert (out / CHAT_TEMPLATE_FILE).read_text() == TEMPLATE
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    tuned = AutoTokenizer.from_pretrained(str(out))
    chat = [{"role": "user", "content": "define fox"}, {"role": "assistant", "content": "quick brown dog"}]
    assert tuned.apply_chat_template(chat, tokenize=False) == "### user: define fox ### assistant: quick brown dog</s> "
    # What training tokenized (the base's template) is what the export renders.
    assert tuned.apply_chat_template(chat, tokenize=True, return_dict=False) == encode(tok, chat, CONTEXT, False).ids
