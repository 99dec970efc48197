"""TrainingRun: pretrain, SFT, RL from a reward model, or distil a decoder transformer with torchrun + FSDP2.

The model block describes a Llama-architecture decoder (RMSNorm, RoPE, SwiGLU, optional GQA and tied
embeddings) so the export is a plain ``LlamaForCausalLM``. The mission's shapes (6-12 layers, hidden
512-1024, 8-16 heads, context 512) are the presets and defaults; validation enforces what is sound
rather than the mission's range, so tests can train tiny models.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from llmfab.api.common import (
    DELETION_POLICY_DESCRIPTION,
    DNS1123_LABEL,
    NOT_OUTPUT_FIELDS,
    CelRule,
    DeletionPolicy,
    Resource,
    ResourceRef,
    Scheduling,
    Spec,
    StatusBase,
)
from llmfab.api.evaluation import EvalResults, EvalSpec
from llmfab.api.pod import PodSettings, Storage
from llmfab.api.release import RELEASE_DESCRIPTION, Release, license_required

PRESETS: dict[str, dict[str, int]] = {
    "small": {"layers": 6, "hidden": 512, "heads": 8},
    "medium": {"layers": 8, "hidden": 768, "heads": 12},
    "base": {"layers": 12, "hidden": 1024, "heads": 16},
}


def _hidden_divisible(m: Any) -> str | None:
    if m.hidden % m.heads:
        return (
            f"spec.model.hidden: {m.hidden} is not divisible by spec.model.heads ({m.heads}); "
            f"choose a hidden size that is a multiple of {m.heads} (e.g. {m.heads * (m.hidden // m.heads + 1)})"
        )
    return None


def _heads_divisible(m: Any) -> str | None:
    kv = m.kv_heads if m.kv_heads is not None else m.heads
    if m.heads % kv:
        return (
            f"spec.model.heads: {m.heads} is not divisible by spec.model.kvHeads ({kv}); "
            "grouped-query attention needs heads to be a multiple of kvHeads"
        )
    return None


def _head_dim_even(m: Any) -> str | None:
    if m.hidden % m.heads == 0 and (m.hidden // m.heads) % 2:
        return (
            f"spec.model: head size hidden/heads = {m.hidden // m.heads} must be even for rotary embeddings; "
            "change hidden or heads"
        )
    return None


def _sharing_groups(m: Any) -> str | None:
    if m.sharing.groups is not None and m.sharing.groups > m.layers:
        return (
            f"spec.model.sharing.groups: {m.sharing.groups} exceeds spec.model.layers ({m.layers}); "
            "use at most one distinct block per layer"
        )
    return None


class LayerSharing(Spec):
    """ALBERT-style cross-layer sharing: ``groups`` distinct blocks applied cyclically over the layers."""

    groups: int | None = Field(
        default=None, ge=1, description="Distinct blocks; unset = no sharing (one block per layer)."
    )


class ModelSpec(Spec):
    """Shape of the decoder. ``preset`` fills layers/hidden/heads; explicit fields win."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="self.hidden % self.heads == 0",
            message="hidden must be divisible by heads",
            check=_hidden_divisible,
        ),
        CelRule(
            cel="!has(self.kvHeads) || self.heads % self.kvHeads == 0",
            message="heads must be divisible by kvHeads",
            check=_heads_divisible,
        ),
        CelRule(
            cel="self.hidden % self.heads != 0 || (self.hidden / self.heads) % 2 == 0",
            message="hidden/heads (head size) must be even for rotary embeddings",
            check=_head_dim_even,
        ),
        CelRule(
            cel="!has(self.sharing.groups) || self.sharing.groups <= self.layers",
            message="sharing.groups must not exceed layers",
            check=_sharing_groups,
        ),
    )

    preset: Literal["small", "medium", "base"] | None = Field(
        default=None, description="small: 6×512×8; medium: 8×768×12; base: 12×1024×16 (layers×hidden×heads)."
    )
    layers: int = Field(default=6, ge=1, le=48, description="Transformer blocks (mission: 6-12).")
    hidden: int = Field(default=512, ge=32, le=8192, description="Model width (mission: 512-1024).")
    heads: int = Field(default=8, ge=1, le=128, description="Attention heads (mission: 8-16).")
    kv_heads: int | None = Field(default=None, ge=1, description="Key/value heads (GQA); default: heads.")
    intermediate: int | None = Field(
        default=None, ge=32, description="SwiGLU width; default: 8/3 × hidden rounded up to a multiple of 64."
    )
    context_length: int = Field(default=512, ge=16, le=32768, description="Tokens per sequence.")
    rope_theta: float = Field(description="Rotary embedding base.", default=10000.0, gt=0)
    norm_eps: float = Field(default=1e-5, gt=0, description="RMSNorm epsilon.")
    tie_embeddings: bool = Field(default=True, description="Share input embedding and output head.")
    dropout: float = Field(description="Dropout probability.", default=0.0, ge=0, lt=1)
    init_std: float = Field(description="Standard deviation of the initial weights.", default=0.02, gt=0)
    sharing: LayerSharing = Field(default_factory=LayerSharing)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            merged = dict(PRESETS[data["preset"]])
            merged.update(data)
            return merged
        return data

    def intermediate_size(self) -> int:
        if self.intermediate is not None:
            return self.intermediate
        return ((8 * self.hidden // 3) + 63) // 64 * 64


class OptimizerSpec(Spec):
    """AdamW (or a low-memory variant) with warmup and decay; no weight decay on norms, biases, embeddings."""

    type: Literal["adamw", "adamw-bf16", "adamw-8bit", "adafactor"] = Field(
        default="adamw",
        description="adamw: fp32 states; adamw-bf16: bf16 states with stochastic rounding; "
        "adamw-8bit: block-wise 8-bit states; adafactor: factored second moments.",
    )
    lr: float = Field(default=6e-4, gt=0, le=1, description="Peak learning rate.")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="Final LR as a fraction of lr.")
    warmup_steps: int = Field(description="Linear warmup steps.", default=100, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = Field(
        default="cosine", description="Decay after warmup."
    )
    beta1: float = Field(description="Adam beta1.", default=0.9, ge=0, lt=1)
    beta2: float = Field(description="Adam beta2.", default=0.95, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0, description="Adam epsilon.")
    weight_decay: float = Field(default=0.1, ge=0, description="Not applied to norms, biases, embeddings.")
    grad_clip: float | None = Field(default=1.0, gt=0, description="Max global gradient norm; null = off.")


class BatchRamp(Spec):
    start_tokens: int = Field(ge=1, description="Global batch in tokens at step 0.")
    steps: int = Field(ge=1, description="Steps to grow linearly to batch.globalTokens.")


class BatchSpec(Spec):
    """Dynamic batch sizing: the global batch is fixed in tokens; the micro-batch is chosen to fit."""

    global_tokens: int = Field(
        default=65_536, ge=16, description="Tokens per optimizer step over all processes."
    )
    micro_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Sequences per forward pass per process; unset = the largest "
        "that fits (probed on CUDA, halved on out-of-memory).",
    )
    max_micro_batch_size: int = Field(default=64, ge=1, description="Upper bound of the probe.")
    ramp: BatchRamp | None = Field(default=None, description="Optional batch-size warm-up.")


class ActivationCheckpointing(Spec):
    """Recompute block activations in backward instead of storing them."""

    mode: Literal["none", "full", "selective"] = Field(
        default="none", description="full: every block; selective: every `every`-th block."
    )
    every: int = Field(default=2, ge=1, description="With selective: checkpoint one block in `every`.")


class ParallelismSpec(Spec):
    """How many processes train: nodes × processesPerNode (torchrun), sharded with FSDP2."""

    nodes: int = Field(default=1, ge=1, le=256, description="Pods (torchrun --nnodes).")
    processes_per_node: int = Field(
        default=1, ge=1, le=64, description="torchrun --nproc-per-node; on GPUs, GPUs per pod."
    )
    fsdp: bool = Field(default=True, description="Shard with FSDP2 when world size > 1.")
    backend: Literal["auto", "nccl", "gloo"] = Field(default="auto", description="auto: nccl on CUDA.")
    max_restarts: int = Field(
        default=0, ge=0, le=100,
        description="torchrun --max-restarts: restart all workers this many times after a failure, "
        "resuming from the last checkpoint (on one node, an out-of-memory back-off restarts anyway).",
    )


class CheckpointSpec(Spec):
    """Resumable torch.distributed.checkpoint saves."""

    every_steps: int | None = Field(default=200, ge=1, description="Save every N steps.")
    every_minutes: float | None = Field(default=None, gt=0, description="Also save every N minutes.")
    keep_last: int = Field(default=3, ge=1, description="Checkpoints kept; older ones are deleted.")
    async_save: bool = Field(default=False, description="Save in the background (torch DCP async).")


class WandbSpec(Spec):
    """Weights & Biases logging (offline mode needs no network)."""

    enabled: bool = Field(default=False, description="Log to Weights & Biases.")
    project: str = Field(default="llmfab", description="W&B project.")
    mode: Literal["offline", "online"] = Field(default="offline", description="offline writes locally.")


class MonitoringSpec(Spec):
    """Metrics: TensorBoard, Prometheus, W&B."""

    tensorboard: bool = Field(default=True, description="Write TensorBoard event files.")
    prometheus_port: int | None = Field(
        default=9400, ge=1024, le=65535, description="Rank 0 serves /metrics here; null = off."
    )
    log_every_steps: int = Field(description="Log metrics every N steps.", default=10, ge=1)
    wandb: WandbSpec = Field(default_factory=WandbSpec)


class InitFrom(Spec):
    """Initial weights."""

    training_run: str | None = Field(
        default=None, pattern=DNS1123_LABEL, description="Start from this TrainingRun's final model."
    )
    path: str | None = Field(default=None, description="Or from a checkpoint/model directory.")


class SftSpec(Spec):
    """Supervised fine-tuning on instruction examples: JSONL rows of prompt/response, or chat ``messages``.

    Each example is rendered with the base model's chat template and trained one per row (no
    packing); with objective sft the model's shape comes from ``initFrom`` and ``spec.dataset`` is
    optional: training reads the instructions only, the evaluation after it reads the Dataset.
    """

    path: str = Field(description="JSONL file or glob of examples; relative to the spec's directory.")
    prompt_field: str = Field(default="prompt", description="JSONL field with the prompt.")
    response_field: str = Field(default="response", description="JSONL field with the answer.")
    messages_field: str = Field(
        default="messages",
        description="JSONL field with a chat: a list of {role, content} (system/user/assistant); "
        "a row with it is trained on every assistant turn instead of prompt/response.",
    )
    loss_on_prompt: bool = Field(default=False, description="Also train on prompt tokens.")
    val_fraction: float = Field(
        default=0.1, gt=0, lt=1, description="Share of the examples held out for the validation loss."
    )


class RlSpec(Spec):
    """Reinforcement learning against a RewardModel."""

    reward_model: str = Field(pattern=DNS1123_LABEL, description="RewardModel that scores samples.")
    algorithm: Literal["reinforce", "ppo", "grpo"] = Field(
        default="grpo", description="Policy-gradient algorithm."
    )
    samples_per_prompt: int = Field(description="Completions sampled per prompt.", default=4, ge=1)
    max_new_tokens: int = Field(description="Length of each completion.", default=64, ge=1)
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature.")
    kl_coef: float = Field(default=0.05, ge=0, description="KL penalty towards the initial policy.")
    prompts: str | None = Field(
        default=None, description="JSONL file or glob of prompts (one per row); relative to the spec's directory."
    )
    prompt_field: str = Field(default="prompt", description="JSONL field with the prompt.")
    prompts_per_step: int = Field(default=8, ge=1, description="Prompts per optimizer step (k samples each).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling: smallest token set of this mass.")
    clip_range: float = Field(default=0.2, gt=0, lt=1, description="GRPO/PPO ratio clipping ε: [1-ε, 1+ε].")


class DistillSpec(Spec):
    """Knowledge distillation from a teacher TrainingRun."""

    teacher: str = Field(pattern=DNS1123_LABEL, description="TrainingRun whose model teaches.")
    temperature: float = Field(default=2.0, gt=0, description="Softmax temperature of teacher and student.")
    alpha: float = Field(default=0.5, ge=0, le=1, description="Weight of the distillation loss vs CE.")


def _pruning_heads_need_width(p: Any) -> str | None:
    if p.heads is not None and p.structure != "width":
        return (f"spec.pruning.heads: {p.heads} prunes attention heads, which only structure width does "
                f"(structure is {p.structure!r}); set structure: width or remove heads")
    return None


def _pruning_size_needs_structure(p: Any) -> str | None:
    if p.structure not in ("mlp", "width") and (p.intermediate is not None or p.target_parameters is not None):
        field = "intermediate" if p.intermediate is not None else "targetParameters"
        return (f"spec.pruning.{field}: sizes apply to structured pruning, but structure is {p.structure!r} "
                "(zeros in place, same shapes); set structure: mlp or width, or use sparsity")
    return None


def _pruning_one_size(p: Any) -> str | None:
    if p.intermediate is not None and p.target_parameters is not None:
        return ("spec.pruning.intermediate and spec.pruning.targetParameters: set one of them (targetParameters "
                "chooses the intermediate size), not both")
    return None


def _pruning_method_fits(p: Any) -> str | None:
    if p.method == "activation" and p.structure not in ("mlp", "width"):
        return (f"spec.pruning.method: activation ranks whole channels and heads, but structure is {p.structure!r}; "
                "use method: magnitude (or leave it unset) for unstructured and 2:4")
    if p.method == "magnitude" and p.structure == "width":
        return ("spec.pruning.method: magnitude has no criterion for attention heads (structure width); "
                "use method: activation (or leave it unset), or structure: mlp")
    return None


class PruningSpec(Spec):
    """Pruning after training, before the export.

    Structured (``mlp``, ``width``): whole MLP channels (and with ``width`` whole attention heads) are
    removed, ranked by their activations on calibration sequences of the training split
    (Minitron), optionally followed by a short distillation from the unpruned model; the export is
    a smaller ``LlamaForCausalLM``. ``unstructured`` / ``2:4``: the smallest weights become zeros.
    """

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(cel="!has(self.heads) || self.structure == 'width'",
                message="heads needs structure width", check=_pruning_heads_need_width),
        CelRule(cel="(!has(self.intermediate) && !has(self.targetParameters)) || self.structure in ['mlp', 'width']",
                message="intermediate and targetParameters need structure mlp or width",
                check=_pruning_size_needs_structure),
        CelRule(cel="!has(self.intermediate) || !has(self.targetParameters)",
                message="set intermediate or targetParameters, not both", check=_pruning_one_size),
        CelRule(cel="!has(self.method) || (self.method == 'activation' ? self.structure in ['mlp', 'width'] "
                    ": self.structure != 'width')",
                message="activation needs structure mlp or width; magnitude cannot rank heads (width)",
                check=_pruning_method_fits),
    )

    enabled: bool = Field(default=False, description="Prune after training.")
    method: Literal["activation", "magnitude"] | None = Field(
        default=None,
        description="activation: mean |activation| of MLP channels and norm of head outputs on calibration data "
        "(Minitron); magnitude: weight norms (mlp) or |w| (unstructured, 2:4). Unset: activation for mlp and "
        "width, magnitude for unstructured and 2:4.",
    )
    sparsity: float = Field(
        description="unstructured/2:4: share of weights set to zero; mlp/width: share of the MLP intermediate "
        "channels removed, when neither intermediate nor targetParameters is set.",
        default=0.5, gt=0, lt=1,
    )
    structure: Literal["unstructured", "2:4", "mlp", "width"] = Field(
        default="unstructured",
        description="unstructured, 2:4 semi-structured (zeros, same shapes); mlp: whole MLP channels removed; "
        "width: MLP channels and attention heads removed (exported as a smaller LlamaForCausalLM).",
    )
    heads: int | None = Field(
        default=None, ge=1,
        description="width: attention heads kept in every block; whole GQA groups go, so a multiple of "
        "heads/kvHeads. Unset: all heads kept.",
    )
    intermediate: int | None = Field(
        default=None, ge=1,
        description="mlp/width: MLP channels kept in every block (a multiple of 64 where the model's is).",
    )
    target_parameters: int | None = Field(
        default=None, ge=1,
        description="mlp/width: parameters of the pruned model; after the heads, the largest intermediate size "
        "(a multiple of 64 where the model's is) that fits.",
    )
    calibration_samples: int = Field(
        default=128, ge=1, le=65536,
        description="method activation: training-split sequences (contextLength tokens) importance is measured on.",
    )
    recovery_steps: int = Field(
        default=0, ge=0,
        description="Steps of distillation from the unpruned model after pruning (logit KL, T=1; batch.globalTokens "
        "per step, one process); 0: none.",
    )
    recovery_lr: float | None = Field(
        default=None, gt=0, le=1,
        description="Peak learning rate of the recovery (warmup, cosine to optimizer.minLrRatio); default "
        "optimizer.lr / 10.",
    )

    def chosen_method(self) -> str:
        return self.method or ("activation" if self.structure in ("mlp", "width") else "magnitude")


def _objective_blocks(s: Any) -> str | None:
    if s.objective == "rl" and s.rl is None:
        return "spec.rl: objective rl needs spec.rl.rewardModel"
    if s.objective == "distill" and s.distill is None:
        return "spec.distill: objective distill needs spec.distill.teacher"
    if s.objective == "sft" and s.sft is None:
        return "spec.sft: objective sft needs spec.sft.path (the JSONL instruction examples)"
    if s.objective in ("sft", "rl") and s.init_from is None:
        return f"spec.initFrom: objective {s.objective} starts from a trained model; set initFrom.trainingRun"
    if s.objective in ("pretrain", "distill") and s.dataset is None:
        return (f"spec.dataset: objective {s.objective} trains on a Dataset's token shards; set dataset.name "
                "(only sft and rl, which bring their own examples, may leave it out)")
    return None


def _steps_positive(s: Any) -> str | None:
    if s.max_steps is None and s.max_tokens is None:
        return "spec.maxSteps: set maxSteps or maxTokens so the run knows when to stop"
    return None


class TrainingRunSpec(Spec):
    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="(self.objective != 'rl' || has(self.rl)) && (self.objective != 'distill' || has(self.distill))"
            " && (self.objective != 'sft' || has(self.sft))"
            " && (!(self.objective in ['sft', 'rl']) || has(self.initFrom))"
            " && (self.objective in ['sft', 'rl'] || has(self.dataset))",
            message="rl needs spec.rl, distill needs spec.distill, sft needs spec.sft, sft and rl need "
            "spec.initFrom, pretrain and distill need spec.dataset",
            check=_objective_blocks,
        ),
        CelRule(
            cel="(has(self.release) && has(self.release.license)) || (has(self.initFrom) && has(self.initFrom.trainingRun))",
            message="spec.release.license: a model trained from scratch needs the licence it is released under "
            "(a Hugging Face licence id such as apache-2.0, mit or cc-by-4.0); runs from initFrom.trainingRun inherit it",
            check=lambda s: license_required(s.init_from is not None and s.init_from.training_run is not None, s.release),
        ),
        CelRule(
            cel="has(self.maxSteps) || has(self.maxTokens)",
            message="set maxSteps or maxTokens",
            check=_steps_positive,
        ),
    )

    objective: Literal["pretrain", "sft", "rl", "distill"] = Field(
        default="pretrain", description="pretrain, sft (supervised fine-tuning), rl or distill."
    )
    dataset: ResourceRef | None = Field(
        default=None,
        description="The Dataset whose token shards are trained on (pretrain, distill: required). sft and rl "
        "train on their own examples (spec.sft.path, spec.rl.prompts) and may leave it out; given, it is the "
        "Dataset the evaluation after training scores the model on (perplexity, generation on its held-out "
        "splits), which must share the base model's tokenizer.",
    )
    init_from: InitFrom | None = Field(default=None, description="Start from a trained model.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    max_steps: int | None = Field(default=1000, ge=1, description="Optimizer steps.")
    max_tokens: int | None = Field(default=None, ge=1, description="Or stop after this many tokens.")
    seed: int = Field(description="Seed for init, data order and dropout.", default=0)
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="auto: bf16 where it is faster here, else fp32 (on CPU a probe of the model's shapes at "
        "start, about a second, decides; cached in the run directory; on CUDA bf16 where supported). bf16: the same, "
        "with a warning when fp32 is chosen (LLMFAB_CPU_BF16=force insists). fp32: never bf16. bf16 is autocast "
        "compute with fp32 master weights and gradient reduction.",
    )
    compile: bool = Field(
        default=False, description="torch.compile the blocks (inductor), on CUDA and CPU. On CPU the first step "
        "compiles C++ kernels (~30 s at 6x512 on 2 cores); measured there 1.13x eager in bf16, 1.03x in fp32.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    loss_chunk_tokens: int = Field(
        default=4096, ge=64, description="Tokens per chunk of the output-head + loss; never the full logits."
    )
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch: BatchSpec = Field(default_factory=BatchSpec)
    activation_checkpointing: ActivationCheckpointing = Field(default_factory=ActivationCheckpointing)
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    eval_every_steps: int | None = Field(default=100, ge=1, description="Validation loss every N steps.")
    eval_batches: int = Field(default=10, ge=1, description="Micro-batches per validation.")
    eval: EvalSpec = Field(default_factory=EvalSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)
    sft: SftSpec | None = None
    rl: RlSpec | None = None
    distill: DistillSpec | None = None
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    release: Release = Field(default_factory=Release, description=RELEASE_DESCRIPTION)
    storage: Storage = Field(default_factory=Storage)
    pod: PodSettings = Field(default_factory=PodSettings)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    suspend: bool = Field(
        default=False,
        description="Cluster only: true deletes the training pods and keeps the checkpoints; false "
        "again resumes from the last checkpoint (as Kubeflow Trainer's suspend, for Kueue).",
    )
    deletion_policy: DeletionPolicy = Field(default="Retain", description=DELETION_POLICY_DESCRIPTION)

    @property
    def dataset_name(self) -> str:
        """``spec.dataset.name`` where the objective needs it (pretrain, distill); validation ensures it."""
        if self.dataset is None:
            raise ValueError(f"spec.dataset: objective {self.objective} needs a Dataset here; set dataset.name")
        return self.dataset.name


class DistillResults(Spec):
    """Objective distill: the student against its teacher, on the student's validation batches."""

    distill_loss: float | None = Field(default=None, description="Last step's T²·KL(teacher ‖ student) per token.")
    teacher_val_loss: float | None = None
    student_val_loss: float | None = None
    teacher_val_perplexity: float | None = None
    student_val_perplexity: float | None = None
    teacher_parameters: int | None = None
    student_parameters: int | None = None
    parameter_ratio: float | None = Field(default=None, description="Student parameters / teacher parameters.")


class PruningResults(Spec):
    """spec.pruning: the exported model against the trained one, on the same validation batches."""

    structure: str | None = None
    method: str | None = None
    intermediate_size: int | None = Field(default=None, description="MLP intermediate size of the export.")
    heads: int | None = Field(default=None, description="Attention heads of the export.")
    kv_heads: int | None = Field(default=None, description="Key/value heads of the export.")
    head_dim: int | None = None
    recovery_steps: int | None = None
    val_loss_before: float | None = Field(default=None, description="The unpruned model.")
    val_loss_pruned: float | None = Field(default=None, description="Pruned, before recovery.")
    val_loss_after: float | None = Field(default=None, description="The export (after recovery, if any).")
    val_perplexity_before: float | None = None
    val_perplexity_pruned: float | None = None
    val_perplexity_after: float | None = None
    parameters_before: int | None = None
    parameters_after: int | None = None
    sparsity: float | None = Field(default=None, description="Share of zeros among the blocks' weights.")


class TrainingRunStatus(StatusBase):
    step: int | None = None
    total_steps: int | None = None
    tokens: int | None = Field(default=None, description="Tokens trained on.")
    loss: float | None = None
    val_loss: float | None = None
    tokens_per_second: float | None = None
    mfu: float | None = Field(default=None, description="Model FLOPs utilisation, where peak is known.")
    eta_seconds: float | None = None
    parameters: int | None = Field(default=None, description="Trainable parameters (shared counted once).")
    last_checkpoint: str | None = None
    model_path: str | None = Field(default=None, description="Hugging Face export, relative to the root.")
    eval: EvalResults | None = None
    distill: DistillResults | None = None
    pruning: PruningResults | None = None
    mean_reward: float | None = Field(default=None, description="Objective rl: mean reward-model score of the last step's samples.")
    kl: float | None = Field(default=None, description="Objective rl: last step's KL(policy ‖ reference) per token (k3), nats.")
    response_length: float | None = Field(default=None, description="Objective rl: last step's mean sampled response length, tokens.")


class TrainingRun(Resource):
    """TrainingRun: pretraining, SFT, RL or distillation of a decoder transformer with torchrun + FSDP2, exported in Hugging Face format."""

    KIND: ClassVar[str] = "TrainingRun"
    PLURAL: ClassVar[str] = "trainingruns"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("ltr",)
    STAGE: ClassVar[str] = "train"
    ARTIFACT_DIR: ClassVar[str] = "runs"
    PRINTER_COLUMNS: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.loss"},
        {"name": "ETA(s)", "type": "integer", "jsonPath": ".status.etaSeconds"},
    )

    kind: Literal["TrainingRun"] = "TrainingRun"
    spec: TrainingRunSpec
    status: TrainingRunStatus | None = None

    def references(self) -> list[tuple[str, str]]:
        s = self.spec
        refs = [("Dataset", s.dataset.name)] if s.dataset else []
        if s.init_from and s.init_from.training_run:
            refs.append(("TrainingRun", s.init_from.training_run))
        if s.rl:
            refs.append(("RewardModel", s.rl.reward_model))
        if s.distill:
            refs.append(("TrainingRun", s.distill.teacher))
        return refs

    def spec_hash_input(self) -> dict[str, Any]:
        # Monitoring and pod placement do not change the trained weights.
        data: dict[str, Any] = self.spec.model_dump(
            mode="json", by_alias=True, exclude={*NOT_OUTPUT_FIELDS, "monitoring", "release"}
        )
        return data
