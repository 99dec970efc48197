"""`llmfab reward run`: a RewardModel trained on preference pairs with a known rule, its held-out
accuracy in status, its Hugging Face export, and clear errors on bad input."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from llmfab.cards import CardFacts
from llmfab.cards.facts import ReleaseFacts, StageFacts
from llmfab.model.hf import export_hf
from llmfab.model.reward_head import ARCHITECTURE, bradley_terry_loss, load_reward_model
from llmfab.model.transformer import ModelArgs, Transformer
from llmfab.status import events_path, read_status
from llmfab.store import write_manifest
from llmfab.workload import run_stage
from tests.serving.tiny_models import build_tokenizer

WORDS = (
    "the quick brown fox jumps over a lazy dog and the cat runs far away while small birds "
    "sing in tall green trees near the old river bank every morning"
).split()
CONTEXT = 64


def base_card(name: str) -> CardFacts:
    """The card facts of a base trained with ``release: {license: apache-2.0}``: the licence its
    SFT, RL and reward models inherit when their specs name none (as a real base's card has it)."""
    release = ReleaseFacts(license="apache-2.0", license_from="spec.release.license")
    return CardFacts(this=StageFacts(kind="TrainingRun", name=name, role="pretrain", license=release.license),
                     release=release)


def write_base_run(root: Path, name: str = "base") -> Path:
    """A complete TrainingRun artifact: an (untrained) tiny llmfab model exported with a BPE tokenizer
    and its model card."""
    tokenizer_dir = root / "tokenizer-src"
    text = "\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) + "\nUser: Assistant:"
    build_tokenizer(text, tokenizer_dir, vocab_size=400)
    args = ModelArgs(vocab_size=400, layers=2, hidden=64, heads=4, kv_heads=4, intermediate=128,
                     context_length=CONTEXT, sharing_groups=2)
    torch.manual_seed(0)
    run_dir = root / "runs" / name
    export_hf(Transformer(args), args, tokenizer_dir, run_dir / "model", dtype="float32", card=base_card(name))
    write_manifest(run_dir, {"kind": "TrainingRun", "name": name, "model": "model"}, "fixture")
    return run_dir


def synthetic_pairs(count: int, seed: int) -> list[dict[str, str]]:
    """The known rule: the prompt is three words of the chain WORDS; the chosen answer continues the
    chain (on topic, grammatical); the rejected one is random words, one word repeated, or a
    grammatical run of the chain that does not follow the prompt (off topic)."""
    rng = random.Random(seed)
    n = len(WORDS)

    def chain(start: int, length: int) -> str:
        return " ".join(WORDS[(start + j) % n] for j in range(length))

    pairs = []
    for _ in range(count):
        i, k = rng.randrange(n), rng.randint(5, 9)
        kind = rng.randrange(3)
        if kind == 0:
            rejected = " ".join(rng.choice(WORDS) for _ in range(k))
        elif kind == 1:
            rejected = " ".join([WORDS[i]] * k)
        else:
            rejected = chain(i + 3 + rng.randrange(5, n - 5), k)
        pairs.append({"prompt": chain(i, 3), "chosen": chain(i + 3, k), "rejected": rejected})
    return pairs


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reward_spec(path: Path, name: str = "rm", **overrides: Any) -> Path:
    spec: dict[str, Any] = {
        "base": {"trainingRun": "base"},
        "preferences": {"path": "pairs.jsonl", "valFraction": 0.25},
        "maxSteps": 100, "seed": 0, "precision": "fp32",
        "optimizer": {"lr": 1e-3, "warmupSteps": 5, "weightDecay": 0.0},
        "batch": {"globalTokens": 2 * CONTEXT * 16},
        "checkpoint": {"everySteps": 50, "keepLast": 1},
        "monitoring": {"prometheusPort": None, "logEverySteps": 10, "tensorboard": False},
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    file = path / f"{name}.yaml"
    file.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": "RewardModel",
                                    "metadata": {"name": name}, "spec": spec}))
    return file


@pytest.fixture(scope="module")
def base_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reward-base")
    write_base_run(root)
    return root / "runs" / "base"


@pytest.fixture
def base_home(home: Path, base_template: Path) -> Path:
    """conftest's artifact root (LLMFAB_HOME) with a complete TrainingRun/base in it."""
    shutil.copytree(base_template, home / "runs" / "base")
    return home


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, base_template: Path) -> Iterator[tuple[Path, Path]]:
    """One RewardModel trained on 400 synthetic pairs (100 of them held out): (root, spec file)."""
    work = tmp_path_factory.mktemp("reward-trained")
    root = work / "home"
    shutil.copytree(base_template, root / "runs" / "base")
    write_jsonl(work / "pairs.jsonl", synthetic_pairs(400, seed=0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMFAB_HOME", str(root))
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        spec = reward_spec(work)
        assert run_stage("reward", spec) == 0
        yield root, spec


def test_bradley_terry_loss_is_log2_at_a_tie_and_the_margin_raises_it() -> None:
    tie = torch.zeros(4)
    assert bradley_terry_loss(tie, tie).item() == pytest.approx(0.6931, abs=1e-4)
    assert bradley_terry_loss(tie + 1, tie, margin=1.0).item() == pytest.approx(0.6931, abs=1e-4)
    assert bradley_terry_loss(tie + 5, tie).item() < 0.01


def test_reward_model_learns_the_known_rule_and_reports_held_out_accuracy(trained: tuple[Path, Path]) -> None:
    root, _ = trained
    out = root / "rewardmodels" / "rm"
    status = read_status("rewardmodels", "rm", root)
    assert status["phase"] == "Succeeded"
    assert status["accuracy"] >= 0.7
    assert status["pairs"] == 300 and status["step"] == 100 and status["loss"] is not None
    assert status["modelPath"] == "rewardmodels/rm/model"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["accuracy"] == status["accuracy"] and manifest["heldOutPairs"] == 100
    assert manifest["base"] == {"trainingRun": "base", "specHash": "fixture"}
    assert (out / "metrics.jsonl").is_file() and (out / "checkpoints" / "step-00000100").is_dir()


def test_export_loads_in_transformers_with_the_same_scores_as_llmfab(trained: tuple[Path, Path]) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = trained[0] / "rewardmodels" / "rm" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and len(config["id2label"]) == 1
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = ["User: the quick brown\nAssistant: fox jumps over a lazy dog",
             "User: the quick brown\nAssistant: cat cat cat cat cat", "User: river\nAssistant: bank"]
    rows = [tok(t)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    hf = AutoModelForSequenceClassification.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    assert hf.config.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        hf_scores = hf(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long()).logits[:, 0]
        ours = load_reward_model(model_dir).eval()(ids)
    torch.testing.assert_close(ours, hf_scores, atol=1e-4, rtol=0)
    assert ours[0] > ours[1]  # the rule: on-topic continuation beats repetition


def test_a_forced_rerun_resumes_from_the_last_checkpoint(trained: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root, spec = trained
    before = json.loads((root / "rewardmodels" / "rm" / "manifest.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMFAB_HOME", str(root))
        assert run_stage("reward", spec) == 0  # same spec: a no-op
        assert "up to date" in capsys.readouterr().out
        assert run_stage("reward", spec, force=True) == 0
    assert "resumed from step-00000100 (step 100)" in events_path("rewardmodels", "rm", root).read_text()
    after = json.loads((root / "rewardmodels" / "rm" / "manifest.json").read_text())
    assert after["accuracy"] == before["accuracy"] and after["loss"] == before["loss"]


GOOD = {"prompt": "the quick", "chosen": "brown fox", "rejected": "dog dog"}


@pytest.mark.parametrize(("rows", "overrides", "code", "expected"), [
    ([GOOD] * 8 + [{**GOOD, "rejected": "brown fox"}], {}, 1, "pairs.jsonl:9 has identical 'chosen' and 'rejected'"),
    ([GOOD] * 8 + [{**GOOD, "chosen": " "}], {}, 1, "spec.preferences.chosenField: "),
    ([GOOD] * 8 + [{**GOOD, "rejected": ""}], {}, 1, "spec.preferences.rejectedField: "),
    # Longer than the base's 64-token context and different only at the start: the model reads the same tokens.
    ([GOOD] * 8 + [{**GOOD, "chosen": "fox " + "dog " * 80, "rejected": "cat " + "dog " * 80}], {}, 1,
     "pairs.jsonl:9 has chosen and rejected texts that the reward model cannot tell apart: they agree in their "
     "last 64 tokens"),
    ([{**GOOD, "prompt": ""}] * 8, {}, 1, "spec.preferences.promptField: "),
    ([GOOD] * 8, {"preferences": {"chosenField": "good"}}, 1, "spec.preferences.chosenField: "),
    ([GOOD] * 3, {}, 1, "spec.preferences.minPairs: found 3 pairs"),
    ([GOOD] * 8, {"preferences": {"path": "missing/*.jsonl"}}, 1, "spec.preferences.path: 'missing/*.jsonl'"),
    ([GOOD] * 8, {"preferences": {"path": None, "inferenceService": "svc"}}, 3,
     "spec.preferences.inferenceService: InferenceService/svc has 0 usable preference votes"),
    ([GOOD] * 8, {"parallelism": {"processesPerNode": 2}}, 2, "spec.parallelism: reward training runs on one process"),
    ([GOOD] * 8, {"base": {"trainingRun": "nope"}}, 3, "waiting for TrainingRun/nope"),
], ids=["identical", "empty-chosen", "empty-rejected", "same-tokens-after-truncation", "empty-prompt",
        "missing-field", "too-few", "no-file", "no-feedback-yet",
        "parallel", "base-not-ready"])
def test_bad_input_is_a_clear_error_naming_the_field(base_home: Path, tmp_path: Path, rows: list[dict[str, str]],
                                                    overrides: dict[str, Any], code: int, expected: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert run_stage("reward", reward_spec(tmp_path, maxSteps=2, **overrides)) == code
    err = capsys.readouterr().err
    assert expected in err and "error:" in err and "Traceback" not in err
    assert not (base_home / "rewardmodels" / "rm" / "manifest.json").exists()


def test_votes_from_the_feedback_app_train_the_reward_model(base_home: Path, tmp_path: Path) -> None:
    """``spec.preferences.inferenceService``: the service's feedback store is the preference data
    (ties skipped, an edit replaces the chosen text)."""
    from llmfab.serving.feedback_store import FILENAME, FeedbackStore

    store = FeedbackStore(base_home / "services" / "svc" / FILENAME)
    sampling = ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0, "top_p": 0.95})
    pairs = synthetic_pairs(40, seed=1)
    prompts = list(dict.fromkeys(p["prompt"] for p in pairs))
    store.add_prompts(prompts)  # a fresh store numbers them 1, 2, ... in this order
    for pair in pairs:
        pair_id = store.add_pair(prompts.index(pair["prompt"]) + 1, (pair["chosen"], pair["rejected"]), sampling)
        store.vote(pair_id, "a", voter="v1")
    store.vote(store.add_pair(1, ("same", "other"), sampling), "tie", voter="v1")
    store.close()
    spec = reward_spec(tmp_path, maxSteps=5, preferences={"path": None, "inferenceService": "svc"})
    assert run_stage("reward", spec) == 0
    status = json.loads((base_home / "rewardmodels" / "rm.status.json").read_text())
    assert status["phase"] == "Succeeded" and status["pairs"] == 30  # 40 A/B votes, a quarter held out
