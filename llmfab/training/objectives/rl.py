"""``objective: rl``: GRPO against a RewardModel, rollouts sampled by the trainer itself.

    initFrom (a TrainingRun's model/) -> the policy, and a frozen copy of it: the reference
    spec.rl.rewardModel (a RewardModel export with the policy's tokenizer) -> the scorer
    spec.rl.prompts (JSONL) -> prompts, rendered with the policy's chat template
    for each step: lr; promptsPerStep prompts; k = samplesPerPrompt completions each (temperature,
                   top-p, seeded per step, stop at EOS or maxNewTokens); reward-model scores of
                   "User: {prompt}\\nAssistant: {response}" (as the RewardModel was trained);
                   advantages (r - group mean) / (group std + eps); per-token GRPO loss
                   -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A) + β·k3 KL to the reference, averaged over each
                   response's tokens, then over responses; clip; optimizer step; log; checkpoint
    export model/ with the base tokenizer and its chat template; manifest last

One inner epoch per batch of rollouts: the log-probabilities the samples were drawn with are those of
the weights being updated, so ρ = exp(logπ - logπ_old) is 1 with the gradient of the vanilla policy
gradient; the clipped form is kept so that more inner epochs would be correct. KL is the k3 estimator
of the GRPO paper, ``exp(ref - logπ) - (ref - logπ) - 1`` (non-negative, unbiased for KL(π ‖ ref)).
No value network. The optimizer, schedule, precision, checkpoints (resume) and metrics are the
trainer's components; the step loop is this module's (rollouts, not token windows), on one process:
``spec.parallelism`` above one and ``spec.batch.ramp`` are refused; ``algorithm`` must be ``grpo``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmfab.api.training_run import RlSpec, TrainingRunSpec
from llmfab.cards import stage as model_card
from llmfab.cards.facts import file_facts
from llmfab.errors import StageNotSupported, WorkloadError
from llmfab.store import MANIFEST, write_manifest
from llmfab.training.inputs.base_model import base_label, load_base, refuse_pruning, shape_of
from llmfab.training.inputs.jsonl_rows import matching_files, read_rows
from llmfab.workload import WorkloadContext

EPS = 1e-4
SAMPLE_ROWS = 256  # completions sampled in one batch (prompts of one length share each forward)


def refuse_unsupported(spec: TrainingRunSpec) -> None:
    rl = spec.rl
    assert rl is not None  # API rule
    refuse_pruning(spec)
    if spec.parallelism.nodes * spec.parallelism.processes_per_node > 1:
        raise StageNotSupported("spec.parallelism: objective rl runs on one process; set nodes: 1 and "
                                "processesPerNode: 1")
    if spec.batch.ramp is not None:
        raise StageNotSupported("spec.batch.ramp: batch-size warm-up is not implemented for objective rl; remove it")
    if rl.algorithm != "grpo":
        raise StageNotSupported(f"spec.rl.algorithm: {rl.algorithm!r} is not implemented yet; use grpo")
    if rl.samples_per_prompt < 2:
        raise StageNotSupported("spec.rl.samplesPerPrompt: GRPO's group-relative advantage needs at least 2 "
                                "samples per prompt")


def prompt_files(ctx: WorkloadContext, rl: RlSpec) -> list[Path]:
    """The JSONL files ``spec.rl.prompts`` names (a file, directory or glob)."""
    assert rl.prompts is not None
    return [Path(f) for f in matching_files("spec.rl.prompts", rl.prompts, ctx.resolve(rl.prompts), "{prompt} rows")]


def read_prompts(rl: RlSpec, resolved: Path) -> list[str]:
    """Every prompt of the JSONL file(s) ``spec.rl.prompts`` names; a bad line names file, line and field."""
    assert rl.prompts is not None
    files = matching_files("spec.rl.prompts", rl.prompts, resolved, "{prompt} rows")
    prompts: list[str] = []
    for where, row in read_rows("spec.rl.prompts", files):
        value = row.get(rl.prompt_field)
        if not isinstance(value, str) or not value.strip():
            raise WorkloadError(f"spec.rl.promptField: {where} has no non-empty string field "
                                f"{rl.prompt_field!r}; fix the line or set spec.rl.promptField")
        prompts.append(value)
    if not prompts:
        raise WorkloadError(f"spec.rl.prompts: {', '.join(map(str, files))} holds no prompts; add JSONL rows "
                            f"with a {rl.prompt_field!r} field")
    return prompts


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids the policy continues: ``text`` as a user turn of the chat template, then the assistant's cue."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    ids: list[int] = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return ids


@dataclass
class Setup:
    policy: Any  # Transformer
    args: Any  # ModelArgs
    tokenizer: Any
    reward_dir: Path
    model_dir: Path  # the base export: tokenizer and chat template for ours
    base: dict[str, Any]
    prompts: list[list[int]]  # rendered prompt ids
    texts: list[str]
    spec: TrainingRunSpec


def prepare(ctx: WorkloadContext, spec: TrainingRunSpec) -> Setup:
    """Every input checked before training starts; each bad one is an error naming its field."""

    from llmfab.model.reward_head import tokenizer_sha256

    rl = spec.rl
    assert rl is not None
    if rl.prompts is None:
        raise WorkloadError("spec.rl.prompts: objective rl needs a JSONL file of prompts ({prompt} rows)")
    model_dir, field, base, policy, args, tokenizer = load_base(ctx, spec, "RL")
    model_card.release(spec.release, model_dir, base_label(base))  # no licence: fail before training
    reward_dir = ctx.dependency("RewardModel", rl.reward_model)
    name = f"spec.rl.rewardModel: RewardModel/{rl.reward_model}"
    manifest = yaml.safe_load((reward_dir / MANIFEST).read_text()) or {}
    theirs, ours = manifest.get("tokenizerSha256"), tokenizer_sha256(model_dir)
    if ours is None:
        raise WorkloadError(f"{field} has no tokenizer.json in {model_dir}; objective rl compares it with the reward "
                            "model's: export the policy with one")
    if theirs is None:
        raise WorkloadError(f"{name}: its manifest has no tokenizerSha256, so its tokenizer cannot be compared with "
                            "the policy's; rerun the RewardModel with --force")
    if theirs != ours:
        raise WorkloadError(f"{name} was trained with another tokenizer (tokenizerSha256 {str(theirs)[:12]}…, the "
                            f"policy's {ours[:12]}…): its scores of this policy's tokens would mean nothing; train "
                            "the RewardModel on a base with the policy's tokenizer")
    texts = read_prompts(rl, ctx.resolve(rl.prompts))
    prompts = []
    for text in texts:
        ids = prompt_ids(tokenizer, text)
        if len(ids) + rl.max_new_tokens > args.context_length:
            raise WorkloadError(f"spec.rl.maxNewTokens: prompt {text[:40]!r} ({len(ids)} tokens) + {rl.max_new_tokens} "
                                f"new tokens exceed the policy's context {args.context_length}; shorten it")
        prompts.append(ids)
    spec = spec.model_copy(update={"model": shape_of(args, spec.model, "objective rl")})
    return Setup(policy, args, tokenizer, reward_dir, model_dir, base, prompts, texts, spec)


def run(ctx: WorkloadContext, spec: TrainingRunSpec) -> None:
    refuse_unsupported(spec)
    setup = prepare(ctx, spec)
    with contextlib.suppress(FileNotFoundError):
        (ctx.out_dir / MANIFEST).unlink()  # stale: the spec changed or --force; not complete now
    train_rl(ctx, setup)


def sampling_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Positions of the step's prompts, grouped by prompt length (one batch, one length: no padding,
    so the model needs no attention mask) in batches of at most ``size`` prompts."""
    by_length: dict[int, list[int]] = {}
    for position, length in enumerate(lengths):
        by_length.setdefault(length, []).append(position)
    return [same[i : i + size] for same in by_length.values() for i in range(0, len(same), size)]


def sample(policy: Any, prompts: Any, k: int, rl: RlSpec, eos: int, generator: Any) -> Any:
    """k completions of each prompt of [P] or [G, P] -> tokens [G·k, <= maxNewTokens], prompt g's in rows
    g·k to g·k + k - 1 (temperature, top-p; after EOS: EOS). One batch for all G prompts: a step's
    rollouts cost maxNewTokens forwards per batch rather than per prompt."""
    import torch

    rows = (prompts if prompts.dim() == 2 else prompts.unsqueeze(0)).repeat_interleave(k, 0)
    done = torch.zeros(rows.shape[0], dtype=torch.bool, device=prompts.device)
    out = []
    for _ in range(rl.max_new_tokens):  # no KV cache: the contexts are short
        logits = policy.output(policy(rows)[:, -1]).float() / rl.temperature  # the last position only: T x V less
        probs = torch.softmax(logits, -1)
        if rl.top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < rl.top_p  # the smallest prefix of mass >= top_p
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token = torch.where(done, torch.full_like(token, eos), token)
        out.append(token)
        done |= token == eos
        rows = torch.cat([rows, token[:, None]], 1)
        if bool(done.all()):
            break
    return torch.stack(out, 1)


def decode_responses(tokenizer: Any, completions: Any, mask: Any, eos: int) -> list[str]:
    """The text of each completion [k, N]: its tokens under ``mask``, EOS and special tokens left out."""
    return [tokenizer.decode([int(t) for t, m in zip(row, keep, strict=True) if m and t != eos], skip_special_tokens=True)
            for row, keep in zip(completions.tolist(), mask.tolist(), strict=True)]


def score_responses(scorer: Any, tokenizer: Any, prompt: str, responses: list[str]) -> Any:
    """Reward-model scores [len(responses)] of each response to ``prompt``, encoded as the RewardModel
    was trained (``reward_head.reward_input_ids``). The caller sets no_grad and autocast."""
    import torch

    from llmfab.model.reward_head import reward_input_ids

    context = scorer.model.args.context_length
    rows = [reward_input_ids(tokenizer, prompt, text.strip(), context)[0] for text in responses]
    width = max(map(len, rows))
    device = next(scorer.parameters()).device
    batch = torch.tensor([r + [scorer.pad_id] * (width - len(r)) for r in rows], device=device)
    return scorer(batch).float()


def response_mask(completions: Any, eos: int) -> Any:
    """1 for each response token up to and including its first EOS."""
    import torch

    is_eos = (completions == eos).int()
    before = torch.cumsum(is_eos, 1) - is_eos  # EOS seen strictly before this position
    return (before == 0).float()


def token_logprobs(model: Any, prompt_len: int, sequences: Any) -> Any:
    """log π(token) of each response token of ``sequences`` [k, P + N] -> [k, N]."""
    import torch

    hidden = model(sequences[:, :-1])[:, prompt_len - 1:]
    logits = model.output(hidden).float()
    return torch.log_softmax(logits, -1).gather(-1, sequences[:, prompt_len:, None]).squeeze(-1)


def group_advantages(rewards: Any) -> Any:
    """[groups, k] rewards -> (r - group mean) / (group std + eps)."""
    return (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + EPS)


def grpo_loss(logp: Any, old_logp: Any, ref_logp: Any, advantages: Any, mask: Any, clip: float,
              kl_coef: float) -> tuple[Any, Any]:
    """(loss, mean KL per token): the clipped surrogate and β·k3 KL per token, each response's
    token mean, then the mean over responses. ``advantages``: [k] per response."""
    import torch

    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    surrogate = torch.min(ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a)
    diff = ref_logp - logp
    kl = torch.exp(diff) - diff - 1
    per_token = -surrogate + kl_coef * kl
    lengths = mask.sum(1).clamp(min=1)
    loss = ((per_token * mask).sum(1) / lengths).mean()
    return loss, (kl * mask).sum() / mask.sum().clamp(min=1)


def train_rl(ctx: WorkloadContext, setup: Setup) -> None:
    import copy

    import torch

    from llmfab.model.reward_head import load_reward_model
    from llmfab.training.components import distributed as D
    from llmfab.training.components.checkpoint import (
        CheckpointIOError,
        CheckpointManager,
        IncompatibleCheckpoint,
        architecture_of,
        parameter_fingerprint,
    )
    from llmfab.training.components.metrics import MetricsSink
    from llmfab.training.components.optim import build_optimizer, lr_multiplier
    from llmfab.training.components.precision import resolve as resolve_precision

    spec, rl = setup.spec, setup.spec.rl
    assert rl is not None
    env = D.init_distributed(spec)
    spec = spec.model_copy(update={"precision": resolve_precision(
        spec.precision, env.device, env.world_size, setup.args, ctx.out_dir, ctx.reporter)})
    device = env.device
    torch.manual_seed(spec.seed)
    policy = setup.policy.to(device).train()
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    try:
        scorer = load_reward_model(setup.reward_dir / "model").to(device).eval().requires_grad_(False)
    except (OSError, ValueError, KeyError) as e:
        raise WorkloadError(f"spec.rl.rewardModel: RewardModel/{rl.reward_model} has no loadable model ({e}); "
                            "rerun it with --force") from e
    if scorer.model.args.context_length < setup.args.context_length:
        raise WorkloadError(f"spec.rl.rewardModel: RewardModel/{rl.reward_model} reads {scorer.model.args.context_length}"
                            f" tokens, fewer than the policy's context {setup.args.context_length}")
    tok, eos = setup.tokenizer, int(setup.tokenizer.eos_token_id)
    optimizer = build_optimizer(policy, spec.optimizer, seed=spec.seed)
    fingerprint = parameter_fingerprint(policy, spec.optimizer.type, architecture_of(setup.args))
    checkpoints = CheckpointManager(ctx.out_dir / "checkpoints", spec.checkpoint, env, fingerprint)
    step, values = 0, {}
    try:
        if (latest := checkpoints.latest()) is not None:
            state = checkpoints.load(latest, policy, optimizer)
            step, values = int(state["step"]), dict(state.get("values", {}))
            ctx.reporter.event("Resumed", f"resumed from {latest.name} (step {step})")
    except (CheckpointIOError, IncompatibleCheckpoint) as e:
        raise WorkloadError(str(e)) from e
    steps = spec.max_steps or 1
    if spec.max_tokens is not None:
        steps = min(steps, max(1, spec.max_tokens // (rl.prompts_per_step * rl.samples_per_prompt * rl.max_new_tokens)))
    sink = MetricsSink(ctx.out_dir, spec.monitoring, ctx.resource.name, True, spec.model_dump(mode="json", by_alias=True))
    parameters = sum(p.numel() for p in policy.parameters())
    ctx.reporter.progress(step=step, totalSteps=steps, parameters=parameters)
    tokens = 0

    def rewards_of(prompt: str, completions: Any, mask: Any) -> Any:
        with torch.no_grad(), D.autocast(spec, env):
            return score_responses(scorer, tok, prompt, decode_responses(tok, completions, mask, eos))

    try:
        while step < steps:
            started = time.perf_counter()
            lr = spec.optimizer.lr * lr_multiplier(step, steps, spec.optimizer)
            for group in optimizer.param_groups:
                group["lr"] = lr
            generator = torch.Generator(device=device).manual_seed(spec.seed * 1_000_003 + step)
            order = torch.randperm(len(setup.prompts), generator=generator).tolist()
            chosen = [order[i % len(order)] for i in range(rl.prompts_per_step)]
            groups = []
            policy.eval()
            k = rl.samples_per_prompt
            with torch.no_grad():
                sampled: dict[int, Any] = {}  # position in chosen -> its k completions
                for batch in sampling_batches([len(setup.prompts[i]) for i in chosen], max(1, SAMPLE_ROWS // k)):
                    prompts = torch.tensor([setup.prompts[chosen[j]] for j in batch], device=device)
                    with D.autocast(spec, env):
                        completions = sample(policy, prompts, k, rl, eos, generator)
                    sampled.update({j: completions[n * k : (n + 1) * k] for n, j in enumerate(batch)})
                # log-probabilities, rewards and (below) the update per prompt: k rows of logits at a time
                for j, index in enumerate(chosen):
                    prompt = torch.tensor(setup.prompts[index], device=device)
                    completions = sampled[j]
                    mask = response_mask(completions, eos)
                    sequences = torch.cat([prompt.unsqueeze(0).repeat(completions.shape[0], 1), completions], 1)
                    with D.autocast(spec, env):
                        old = token_logprobs(policy, len(prompt), sequences)
                        ref = token_logprobs(reference, len(prompt), sequences)
                    groups.append((len(prompt), sequences, mask, old, ref,
                                   rewards_of(setup.texts[index], completions, mask)))
            policy.train()
            rewards = torch.stack([g[5] for g in groups])  # [prompts, k]
            advantages = group_advantages(rewards)
            step_loss, step_kl = 0.0, 0.0
            for (prompt_len, sequences, mask, old, ref, _), adv in zip(groups, advantages, strict=True):
                with D.autocast(spec, env):
                    logp = token_logprobs(policy, prompt_len, sequences)
                loss, kl = grpo_loss(logp, old, ref, adv, mask, rl.clip_range, rl.kl_coef)
                (loss / len(groups)).backward()
                step_loss += float(loss.detach()) / len(groups)
                step_kl += float(kl.detach()) / len(groups)
            norm = float(torch.nn.utils.clip_grad_norm_(policy.parameters(), spec.optimizer.grad_clip or math.inf))
            if not (math.isfinite(step_loss) and math.isfinite(norm)):
                raise WorkloadError(
                    f"step {step + 1}: loss {step_loss}, gradient norm {norm}; training stopped before the update. "
                    "Lower spec.optimizer.lr, raise spec.rl.klCoef or set spec.optimizer.gradClip"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            lengths = torch.cat([g[2].sum(1) for g in groups])
            tokens += int(lengths.sum())
            values = {"loss": step_loss, "lr": lr, "grad_norm": norm, "mean_reward": float(rewards.mean()),
                      "reward_std": float(rewards.std()), "kl": step_kl, "response_length": float(lengths.mean()),
                      # completions sampled, scored and trained on per second of this step (before its checkpoint)
                      "samples_per_second": rewards.numel() / (time.perf_counter() - started)}
            if checkpoints.due(step) or step == steps:
                try:
                    checkpoints.save(step, policy, optimizer, {"values": values})
                except CheckpointIOError as e:
                    raise WorkloadError(str(e)) from e
            if step % spec.monitoring.log_every_steps == 0 or step == steps:
                sink.log(step, values)
                sink.print_progress(step, steps, values)
            # Every step: the per-step numbers are what an RL run is watched by.
            ctx.reporter.progress(step=step, totalSteps=steps, loss=step_loss, meanReward=values["mean_reward"],
                                  kl=step_kl, responseLength=values["response_length"], parameters=parameters)
        checkpoints.wait()
    finally:
        sink.close()
    publish(ctx, setup, policy, step, tokens, parameters, values)


def publish(ctx: WorkloadContext, setup: Setup, policy: Any, steps: int, tokens: int, parameters: int,
            values: dict[str, Any]) -> None:
    """Export ``model/`` with the base tokenizer and chat template, report the final numbers, then the manifest."""
    from llmfab.model.hf import export_hf

    spec, rl = setup.spec, setup.spec.rl
    assert rl is not None
    model_dir = ctx.out_dir / "model"
    state = {k: v.detach().float().cpu() for k, v in policy.state_dict().items()}
    # The base model directory is the tokenizer source: export_hf copies only its tokenizer files.
    files = prompt_files(ctx, rl)
    # The figures are the last step's, as status has them (reported every step).
    figures = {k: float(values[v]) for k, v in (("meanReward", "mean_reward"), ("kl", "kl")) if values.get(v) is not None}
    card = model_card.facts(
        ctx, spec.release, "rl", steps=steps, tokens=tokens, precision=spec.precision,
        world_size=spec.parallelism.nodes * spec.parallelism.processes_per_node,
        data=[file_facts(f, "RL prompts", len(setup.prompts) if len(files) == 1 else None) for f in files],
        figures=figures, parent_dir=setup.model_dir, parent_label=base_label(setup.base),
        related=[setup.reward_dir / "model"], dataset=spec.dataset.name if spec.dataset else None)
    export_hf(state, setup.args, setup.model_dir, model_dir,
              dtype="float32" if spec.precision == "fp32" else "bfloat16", card=card)
    model_path = str(model_dir.relative_to(ctx.root)) if model_dir.is_relative_to(ctx.root) else str(model_dir)
    ctx.reporter.progress(modelPath=model_path, step=steps)
    write_manifest(ctx.out_dir, {
        "kind": "TrainingRun", "name": ctx.resource.name, "objective": "rl", "algorithm": rl.algorithm,
        "steps": steps, "tokens": tokens, "parameters": parameters, "loss": values.get("loss"),
        "meanReward": values.get("mean_reward"), "kl": values.get("kl"),
        "responseLength": values.get("response_length"), "prompts": len(setup.prompts), "model": "model",
        "base": setup.base, "rewardModel": rl.reward_model,
    }, ctx.spec_hash)
