"""`llmfab up` runs examples/rlhf.yaml end to end with tiny shapes: Dataset -> pretrain -> SFT ->
RewardModel -> RL (GRPO) -> InferenceService (vLLM on CPU), on post-training data built from WordNet
and the sample corpus the way `make post-training-data` builds it.

The YAML run is the example's own, with only shapes, steps, ports and data paths made small (and the
4-bit step left out: tests/serving covers quantization), so a broken example breaks this test.
Needs the serving venv (`make serve-venv`) and WordNet (`make tools`), as `make test` sets up.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Processes

from llmfab.data import instruction_data

REPO = Path(__file__).resolve().parents[2]
SERVE_PYTHON = REPO / ".venv-serve" / "bin" / "python"

pytestmark = [pytest.mark.slow, pytest.mark.serve]

CONTEXT = 128  # the example's: its examples fit
TRAINING = {"precision": "fp32", "monitoring": {"prometheusPort": None, "tensorboard": False, "logEverySteps": 1}}
TINY: dict[str, dict[str, Any]] = {  # the example's fields that are replaced (nested dicts merged)
    "rlhf-books": {},
    "rlhf-base": {**TRAINING, "model": {"layers": 2, "hidden": 64, "heads": 2, "contextLength": CONTEXT},
                  "maxSteps": 8, "batch": {"globalTokens": 1024}, "checkpoint": {"everySteps": 8},
                  "evalEverySteps": 8, "evalBatches": 1, "labelSmoothing": 0.0},
    "rlhf-sft": {**TRAINING, "maxSteps": 6, "batch": {"globalTokens": CONTEXT * 8}, "checkpoint": {"everySteps": 6},
                 "evalEverySteps": 6, "evalBatches": 1},
    "rlhf-judge": {**TRAINING, "maxSteps": 6, "batch": {"globalTokens": 2 * CONTEXT * 8},
                   "checkpoint": {"everySteps": 6}},
    "rlhf-policy": {**TRAINING, "maxSteps": 2, "checkpoint": {"everySteps": 2},
                    "rl": {"samplesPerPrompt": 2, "promptsPerStep": 2, "maxNewTokens": 8}},
    "rlhf-chat": {"quantization": {"method": "none"}, "server": {"maxModelLen": CONTEXT, "maxNumSeqs": 4}},
}
STAGE_KINDS = {"Dataset": "datasets", "TrainingRun": "runs", "RewardModel": "rewardmodels",
               "InferenceService": "services"}


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tiny_pipeline(work: Path, data: Path, port: int) -> Path:
    """examples/rlhf.yaml with tiny shapes, its relative paths pointed at the example's corpus and ``data``."""
    docs = list(yaml.safe_load_all((REPO / "examples" / "rlhf.yaml").read_text()))
    assert [d["metadata"]["name"] for d in docs] == list(TINY)  # the test follows the example's stages
    for doc in docs:
        spec = merged(doc["spec"], TINY[doc["metadata"]["name"]])
        if doc["kind"] == "Dataset":
            spec["sources"][0]["path"] = str(REPO / "examples" / spec["sources"][0]["path"])
        for block, field in (("sft", "path"), ("preferences", "path"), ("rl", "prompts")):
            if block in spec:
                spec[block][field] = str(data / Path(spec[block][field]).name)
        if doc["kind"] == "InferenceService":
            spec["server"]["port"] = port
        doc["spec"] = spec
    path = work / "rlhf.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(home: Path, kind: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / STAGE_KINDS[kind] / f"{name}.status.json").read_text())
    return data


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        data: dict[str, Any] = json.load(answer)
        return data


def test_up_runs_the_rlhf_example_from_text_to_a_served_rl_policy(tmp_path: Path, processes: Processes) -> None:
    from transformers import AutoTokenizer

    if not SERVE_PYTHON.exists():
        pytest.fail(f"{SERVE_PYTHON} missing: `make serve-venv` creates the vLLM serving venv")
    data = tmp_path / "post-training"
    started = time.monotonic()
    instruction_data.write(data, options=instruction_data.Options(max_words=12, max_glosses=240, max_passages=40))
    port = free_port()
    pipeline = tiny_pipeline(tmp_path, data, port)
    home = tmp_path / "home"
    env = {**os.environ, "LLMFAB_HOME": str(home), "COLUMNS": "200", "OMP_NUM_THREADS": "1",
           "LLMFAB_SERVE_PYTHON": str(SERVE_PYTHON)}
    up = processes.run([sys.executable, "-m", "llmfab", "up", "-f", str(pipeline), "--detach"], env=env,
                       timeout=1200)
    try:
        assert up.returncode == 0, up.stdout[-6000:] + up.stderr[-3000:]
        assert f"serving InferenceService/rlhf-chat at http://127.0.0.1:{port}/v1" in up.stdout
        for kind, name in (("Dataset", "rlhf-books"), ("TrainingRun", "rlhf-base"), ("TrainingRun", "rlhf-sft"),
                           ("RewardModel", "rlhf-judge"), ("TrainingRun", "rlhf-policy")):
            assert status(home, kind, name)["phase"] == "Succeeded", (kind, name)
        sft = status(home, "TrainingRun", "rlhf-sft")
        assert isinstance(sft["valLoss"], float) and sft["valLoss"] > 0
        judge = status(home, "RewardModel", "rlhf-judge")
        assert 0.0 <= judge["accuracy"] <= 1.0 and judge["pairs"] > 0
        policy = status(home, "TrainingRun", "rlhf-policy")
        assert policy["step"] == 2 and isinstance(policy["meanReward"], float) and policy["kl"] >= 0
        rows = [json.loads(line) for line in (home / "runs" / "rlhf-policy" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows if "mean_reward" in r] == [1, 2]  # the reward of every step
        assert_every_model_has_its_card(home)
        service = status(home, "InferenceService", "rlhf-chat")
        assert service["phase"] == "Running" and service["url"] == f"http://127.0.0.1:{port}/v1"

        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{url}/v1/models", timeout=60) as answer:
            served = json.load(answer)["data"][0]
        assert Path(served["root"]) == home / "runs" / "rlhf-policy" / "model"  # the RL policy, no other
        messages = [{"role": "user", "content": "Define whale."}]
        reply = post(f"{url}/v1/chat/completions", {"model": served["id"], "messages": messages, "max_tokens": 8,
                                                     "temperature": 0})
        assert reply["choices"][0]["message"]["role"] == "assistant" and reply["usage"]["completion_tokens"] >= 1
        # The endpoint renders a chat with the SFT run's template: "User: ...\nAssistant:".
        sft_tokenizer = AutoTokenizer.from_pretrained(str(home / "runs" / "rlhf-sft" / "model"))
        expected = sft_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
        assert sft_tokenizer.decode(expected).endswith("User: Define whale.\nAssistant:")
        rendered = post(f"{url}/tokenize", {"model": served["id"], "messages": messages,
                                            "add_generation_prompt": True})
        assert rendered["tokens"] == expected and reply["usage"]["prompt_tokens"] == len(expected)
        record_timing(up.stdout, time.monotonic() - started)
    finally:
        down = processes.run([sys.executable, "-m", "llmfab", "down"], env=env, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def assert_every_model_has_its_card(home: Path) -> None:
    """Each model of the chain carries a card huggingface_hub loads, whose metadata passes the checks,
    whose model-index figures are its status figures, with the licence the base run stated."""
    from huggingface_hub import ModelCard

    from llmfab.cards.metadata import check, figures_of

    cards = {}
    for kind, name, figures in (("TrainingRun", "rlhf-base", {"eval.valPerplexity", "eval.testPerplexity"}),
                                ("TrainingRun", "rlhf-sft", {"eval.valPerplexity"}),
                                ("RewardModel", "rlhf-judge", {"accuracy"}),
                                ("TrainingRun", "rlhf-policy", {"meanReward", "kl"})):
        card = cards[name] = ModelCard.load(home / STAGE_KINDS[kind] / name / "model" / "README.md")
        assert check(card) == [], (name, check(card))
        assert card.data.license == "apache-2.0" and card.data.language == ["en"], name
        found, state = figures_of(card), status(home, kind, name)
        assert set(found) == figures, (name, found)
        for path, value in found.items():
            expected: Any = state
            for part in path.split("."):
                expected = expected[part]
            assert value == expected, (name, path, value, expected)
    assert "base_model" not in cards["rlhf-base"].data.to_dict()
    assert cards["rlhf-sft"].data.base_model == "llmfab/TrainingRun/rlhf-base"
    assert cards["rlhf-judge"].data.base_model == "llmfab/TrainingRun/rlhf-sft"
    assert cards["rlhf-policy"].data.base_model == "llmfab/TrainingRun/rlhf-sft"
    policy = cards["rlhf-policy"].text
    for expected in ("TrainingRun `rlhf-base` | pretrain", "TrainingRun `rlhf-sft` | sft", "TrainingRun `rlhf-policy` | rl",
                     "RewardModel `rlhf-judge` (reward, accuracy", "SFT examples", "RL prompts", "public-domain",
                     "TrainingRun/rlhf-sft (inherited)"):
        assert expected in policy, expected
    assert "preference pairs" in cards["rlhf-judge"].text


def record_timing(up_output: str, seconds: float) -> None:
    """Wall time per stage as `llmfab up` reports it (printed; `pytest -s` shows it)."""
    stages = [" ".join(line.split()[:5]) for line in up_output.splitlines() if line.lstrip().startswith("✓")]
    print(f"rlhf pipeline: {seconds:.0f} s in all (data built, up, serving ready, asserts); " + "; ".join(stages))
