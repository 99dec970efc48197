"""RL from a reward model: llmfab's GRPO (``objective: rl``) vs Hugging Face TRL's ``GRPOTrainer``,
measured in one run on the same policy, reward model, prompts and hyper-parameters.

    .venv/bin/python benchmarks/rl_throughput.py --trl-python /tmp/trl-venv/bin/python
    .venv/bin/python benchmarks/rl_throughput.py --trl-python /tmp/trl-venv/bin/python --steps 10 --rounds 2

What both sides get (built here, offline, by the test suite's helpers): a tiny llmfab model exported as
``LlamaForCausalLM`` with a byte-level BPE tokenizer (``tests/training/test_reward.write_base_run``:
2 layers, hidden 64, vocabulary 400, context 64; untrained, as in ``tests/training/test_rl.py``), and a
RewardModel trained by ``llmfab reward run`` on the known-rule preference task of that test (chosen
answers continue a word chain). Both optimise the same GRPO objective: k samples per prompt, advantages
(r - group mean) / group std, per-token clipped ratio (ε 0.2) and k3 KL to the frozen reference (β),
each response's token mean then the mean over responses (TRL ``loss_type="grpo"``), one inner epoch,
AdamW (β 0.9/0.95, no weight decay) at a constant learning rate, gradient clip 1.0, temperature and
top-p sampling up to ``maxNewTokens`` or EOS. TRL's reward function is llmfab's own scoring
(``training/objectives/rl.py``: ``score_responses``), so both are rewarded by the same numbers.

Each side runs as its own process, with one CPU thread (``OMP_NUM_THREADS=1``):
llmfab as its real entrypoint (``python -m llmfab train run --spec``, from the repo's ``.venv``),
TRL as this script's ``--worker trl`` mode under the TRL interpreter. The parent measures each
process's wall and CPU seconds (``os.wait4``). Reported per side:

* **samples/s (loop)**: completions sampled, scored and trained on per wall second of the optimizer
  steps after the first (llmfab's ``samples_per_second`` metric, TRL's step times from a callback);
* **samples per CPU-second (marginal)**: (steps_long - steps_short) x samples per step over the CPU
  seconds the longer run took beyond the shorter one, so imports, model loading and export cancel;
* **reward**: the mean RM score of ``--eval-samples`` completions per prompt sampled from the policy
  before training and from each side's exported policy after it, by one evaluator (llmfab's sampler
  with fixed seeds and the same scorer), and its improvement per CPU-minute of the whole run.

Rounds alternate the order of the sides (ABBA): the machine may be shared and a neighbour's load then
hits both alike. TRL is not an llmfab dependency; set it up in a throwaway venv outside the repo::

    python3.11 -m venv /tmp/trl-venv
    /tmp/trl-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu  # or a local wheel
    /tmp/trl-venv/bin/pip install trl==1.16.0 -c <(grep -E '^(transformers|tokenizers|safetensors)==' constraints.txt)

The TRL worker imports llmfab from this checkout (for the reward scoring) by path.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/rl_throughput.py` puts benchmarks/ first, not the repo
    sys.path.insert(0, str(REPO))

SIDES = ("llmfab", "trl")


# --- TRL side (runs under the TRL interpreter) -------------------------------------------------------


def trl_worker(config_file: Path) -> None:
    """One GRPOTrainer run with ``config_file``'s settings; writes its step times and logs as JSON."""
    cfg = json.loads(config_file.read_text())
    import torch

    torch.set_num_threads(cfg["threads"])
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from llmfab.model.reward_head import load_reward_model
    from llmfab.training.objectives.rl import score_responses

    tokenizer = AutoTokenizer.from_pretrained(cfg["base"])
    scorer = load_reward_model(Path(cfg["reward_model"])).eval().requires_grad_(False)
    texts: list[str] = cfg["prompts"]
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                              add_generation_prompt=True) for t in texts]
    dataset = Dataset.from_list([{"prompt": r, "text": t} for r, t in zip(rendered, texts, strict=True)])

    def llmfab_reward(prompts: list[str], completions: list[str], text: list[str], **_: Any) -> list[float]:
        """llmfab's RewardModel score of each completion, grouped by prompt as llmfab's trainer scores them."""
        out = [0.0] * len(completions)
        with torch.no_grad():
            for prompt in dict.fromkeys(text):
                rows = [i for i, t in enumerate(text) if t == prompt]
                scores = score_responses(scorer, tokenizer, prompt, [completions[i] for i in rows])
                for i, score in zip(rows, scores.tolist(), strict=True):
                    out[i] = score
        return out

    marks: list[float] = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            marks.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            marks.append(time.perf_counter())

    k, rl = cfg["k"], cfg["rl"]
    args = GRPOConfig(
        output_dir=cfg["out"], max_steps=cfg["steps"], seed=cfg["seed"], use_cpu=True, bf16=False,
        per_device_train_batch_size=cfg["prompts_per_step"] * k, gradient_accumulation_steps=1,
        num_generations=k, max_completion_length=rl["maxNewTokens"], temperature=rl["temperature"],
        top_p=rl["topP"], top_k=0, beta=rl["klCoef"], epsilon=rl["clipRange"], num_iterations=1,
        loss_type="grpo", scale_rewards="group", learning_rate=cfg["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
        max_grad_norm=1.0, optim="adamw_torch", logging_steps=1, save_strategy="no", report_to="none",
        dataloader_num_workers=0, disable_dropout=True,
        gradient_checkpointing=False,  # GRPOConfig's default is True; llmfab recomputes nothing here
    )
    trainer = GRPOTrainer(model=cfg["base"], reward_funcs=llmfab_reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimes()])
    trainer.train()
    trainer.save_model(cfg["out"] + "/model")
    tokenizer.save_pretrained(cfg["out"] + "/model")
    steps = [b - a for a, b in itertools.pairwise(marks)]
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    Path(cfg["result"]).write_text(json.dumps({"step_seconds": steps, "rewards": rewards}))


# --- the parent (runs under the repo's .venv) --------------------------------------------------------


def run_measured(command: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[float, float]:
    """(wall s, CPU s) of one child process; its output goes to ``log``, a failure stops the benchmark."""
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            child.kill()
            _, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(0.05)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        sys.exit(f"{' '.join(command[:4])}... failed ({child.returncode}); last lines of {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-25:]))
    return wall, usage.ru_utime + usage.ru_stime


def build_inputs(work: Path, env: dict[str, str], prompt_rows: list[dict[str, str]]) -> Path:
    """TrainingRun/base and RewardModel/rm under ``work/home`` (the RL tests' pair), and the prompts."""
    from tests.training.test_reward import reward_spec, synthetic_pairs, write_base_run, write_jsonl

    home = work / "home"
    if (home / "rewardmodels" / "rm" / "manifest.json").is_file():  # --work of an earlier run: reuse its pair
        write_jsonl(work / "prompts.jsonl", prompt_rows)
        return home
    write_base_run(home)
    write_jsonl(work / "pairs.jsonl", synthetic_pairs(300, seed=0))
    write_jsonl(work / "prompts.jsonl", prompt_rows)
    spec = reward_spec(work, maxSteps=60, checkpoint={"everySteps": 60})
    wall, cpu = run_measured([sys.executable, "-m", "llmfab", "reward", "run", "--spec", str(spec)], env,
                             work / "reward.log", 900)
    accuracy = json.loads((home / "rewardmodels" / "rm" / "manifest.json").read_text())["accuracy"]
    print(f"setup: RewardModel/rm trained in {wall:.0f} s ({cpu:.0f} CPU s), held-out accuracy {accuracy:.2f}")
    return home


def run_llmfab(work: Path, env: dict[str, str], name: str, steps: int, opts: argparse.Namespace,
               rl: dict[str, Any]) -> dict[str, Any]:
    from tests.training.test_rl import rl_spec

    spec = rl_spec(work, name=name, maxSteps=steps, seed=opts.seed, rl=rl,
                   optimizer={"lr": opts.lr, "schedule": "constant"}, checkpoint={"everySteps": 10_000})
    run_dir = work / "home" / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a no-op or a resume of an earlier --work
    wall, cpu = run_measured([sys.executable, "-m", "llmfab", "train", "run", "--spec", str(spec)], env,
                             work / f"{name}.log", opts.timeout)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_step = opts.prompts_per_step * opts.k
    return {"wall": wall, "cpu": cpu, "model": run_dir / "model", "rewards": [r["mean_reward"] for r in rows],
            "step_seconds": [per_step / r["samples_per_second"] for r in rows]}


def run_trl(work: Path, env: dict[str, str], name: str, steps: int, opts: argparse.Namespace,
            rl: dict[str, Any], prompts: list[str]) -> dict[str, Any]:
    out = work / name
    config = {"base": str(work / "home" / "runs" / "base" / "model"),
              "reward_model": str(work / "home" / "rewardmodels" / "rm" / "model"), "prompts": prompts,
              "k": opts.k, "prompts_per_step": opts.prompts_per_step, "rl": rl, "lr": opts.lr, "steps": steps,
              "seed": opts.seed, "threads": opts.threads, "out": str(out), "result": str(work / f"{name}.json")}
    (work / f"{name}.config.json").write_text(json.dumps(config))
    wall, cpu = run_measured([opts.trl_python, str(Path(__file__).resolve()), "--worker", "trl",
                              "--config", str(work / f"{name}.config.json")],
                             {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                              "PYTHONPATH": str(REPO)}, work / f"{name}.log", opts.timeout)
    result = json.loads((work / f"{name}.json").read_text())
    return {"wall": wall, "cpu": cpu, "model": out / "model", **result}


def mean_reward(model_dir: Path, reward_dir: Path, prompts: list[str], samples: int, rl: dict[str, Any],
                seed: int) -> float:
    """Mean RM score of ``samples`` completions per prompt from ``model_dir``'s policy: one evaluator,
    llmfab's sampler with fixed seeds, for the policy before training and both trained ones."""
    import torch
    from transformers import AutoTokenizer

    from llmfab.api.training_run import RlSpec
    from llmfab.model.hf import load_hf
    from llmfab.model.reward_head import load_reward_model
    from llmfab.training.objectives.rl import (
        decode_responses,
        prompt_ids,
        response_mask,
        sample,
        score_responses,
    )

    spec = RlSpec.model_validate({"rewardModel": "rm", **rl})
    policy, _ = load_hf(model_dir)
    policy.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    scorer = load_reward_model(reward_dir).eval()
    eos = int(tokenizer.eos_token_id)
    total = []
    with torch.no_grad():
        for i, text in enumerate(prompts):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
            completions = sample(policy, torch.tensor(prompt_ids(tokenizer, text)), samples, spec, eos, generator)
            responses = decode_responses(tokenizer, completions, response_mask(completions, eos), eos)
            total += score_responses(scorer, tokenizer, text, responses).tolist()
    return sum(total) / len(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=["trl"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trl-python", default="/tmp/trl-venv/bin/python", help="interpreter with trl installed")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each measured run")
    parser.add_argument("--short-steps", type=int, default=4, help="steps of the run subtracted for the marginal rate")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the side order alternates between them")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--k", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--kl-coef", type=float, default=0.1)
    parser.add_argument("--eval-samples", type=int, default=16, help="completions per prompt for the reward")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    parser.add_argument("--work", type=Path, help="working directory, kept (default: a temporary one); "
                        "its RewardModel is reused when complete")
    opts = parser.parse_args()
    if opts.worker == "trl":
        trl_worker(opts.config)
        return
    if not Path(opts.trl_python).is_file():
        sys.exit(f"--trl-python {opts.trl_python}: no such interpreter; set up TRL as this script's docstring says")

    from tests.training.test_rl import prompts as all_prompts

    prompt_rows = all_prompts()[::3]  # every third start of the word chain, as in tests/training/test_rl.py
    prompts = [row["prompt"] for row in prompt_rows]
    rl = {"samplesPerPrompt": opts.k, "promptsPerStep": opts.prompts_per_step, "maxNewTokens": opts.max_new_tokens,
          "temperature": 1.0, "topP": 0.95, "klCoef": opts.kl_coef, "clipRange": 0.2, "prompts": "prompts.jsonl"}
    threads = str(opts.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as tmp:
        work = opts.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env["LLMFAB_HOME"] = str(work / "home")
        home = build_inputs(work, env, prompt_rows)
        reward_dir = home / "rewardmodels" / "rm" / "model"
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for r in range(opts.rounds):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                result = {}
                for steps in (opts.steps, opts.short_steps):
                    name = f"{side}-r{r}-s{steps}"
                    runner = run_llmfab(work, env, name, steps, opts, rl) if side == "llmfab" else \
                        run_trl(work, env, name, steps, opts, rl, prompts)
                    result["short" if steps == opts.short_steps else "long"] = runner
                    print(f"round {r} {side:6s} {steps:3d} steps: {runner['wall']:6.1f} s wall, {runner['cpu']:6.1f} CPU s")
                runs[side].append(result)
        start = mean_reward(home / "runs" / "base" / "model", reward_dir, prompts, opts.eval_samples, rl, opts.seed)
        report(runs, start, reward_dir, prompts, opts, rl)


def report(runs: dict[str, list[dict[str, Any]]], start: float, reward_dir: Path, prompts: list[str],
           opts: argparse.Namespace, rl: dict[str, Any]) -> None:
    per_step = opts.prompts_per_step * opts.k
    numbers: dict[str, dict[str, float]] = {}
    for side in SIDES:
        loop, marginal, gains, per_minute, walls, cpus = [], [], [], [], [], []
        for result in runs[side]:
            long, short = result["long"], result["short"]
            loop.append(per_step / statistics.median(long["step_seconds"][1:] or long["step_seconds"]))
            marginal.append((opts.steps - opts.short_steps) * per_step / max(1e-9, long["cpu"] - short["cpu"]))
            end = mean_reward(long["model"], reward_dir, prompts, opts.eval_samples, rl, opts.seed)
            gains.append(end - start)
            per_minute.append((end - start) / (long["cpu"] / 60))
            walls.append(long["wall"])
            cpus.append(long["cpu"])
            curve = long["rewards"]
            print(f"{side:6s} own per-step mean reward: first 3 {statistics.mean(curve[:3]):+.3f}, "
                  f"last 3 {statistics.mean(curve[-3:]):+.3f}")
        numbers[side] = {"loop": statistics.median(loop), "marginal": statistics.median(marginal),
                         "gain": statistics.median(gains), "per_minute": statistics.median(per_minute),
                         "wall": statistics.median(walls), "cpu": statistics.median(cpus),
                         "e2e": opts.steps * per_step / statistics.median(cpus)}
    print(f"\n{opts.steps} steps x {opts.prompts_per_step} prompts x k={opts.k}, {opts.max_new_tokens} new tokens, "
          f"{opts.threads} thread(s), {opts.rounds} round(s); reward before training {start:+.3f} "
          f"({opts.eval_samples} samples x {len(prompts)} prompts)")
    rows = [("samples/s, loop wall (steps 2..)", "loop", "{:.1f}"),
            ("samples per CPU-s, marginal", "marginal", "{:.1f}"),
            ("samples per CPU-s, whole run", "e2e", "{:.1f}"),
            ("whole run wall s", "wall", "{:.1f}"), ("whole run CPU s", "cpu", "{:.1f}"),
            ("RM reward gain (end - start)", "gain", "{:+.3f}"),
            ("RM reward gain per CPU-minute", "per_minute", "{:+.3f}")]
    print(f"| {'':34s} | {'llmfab':>9s} | {'TRL':>9s} | {'llmfab/TRL':>10s} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 12}|")
    for label, key, fmt in rows:
        a, b = numbers["llmfab"][key], numbers["trl"][key]
        ratio = f"{a / b:.2f}" if b else "n/a"
        print(f"| {label:34s} | {fmt.format(a):>9s} | {fmt.format(b):>9s} | {ratio:>10s} |")


if __name__ == "__main__":
    main()
