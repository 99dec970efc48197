"""llmfab.training: the TrainingRun and RewardModel stages (``llmfab train run``, ``llmfab reward run``).

Walk it in this order:

- :mod:`workload` is ``run(ctx)``: it refuses what no objective supports and hands the run to the
  objective ``spec.objective`` names (:mod:`objectives`, looked up by name; it imports none).
- :mod:`loop` is the pretraining loop (``loop.trainer.train``), which knows one small interface
  (``loop.objective.Objective``: the batches, the loss module, the step metrics, what is reported)
  and imports no objective; ``loop.launcher`` trains in this process or starts torchrun on itself.
- :mod:`components` are what the loop is composed of, one concern each: batching, checkpoint,
  distributed (FSDP2, compile, activation checkpointing), precision, optimizers, metrics.
- :mod:`objectives`: pretrain, distill, sft (through the loop); rl (GRPO) and reward
  (Bradley-Terry, the RewardModel kind) with step loops of their own, built from the same components.
- :mod:`inputs`: what post-training objectives read (the base model, JSONL rows).

The model is ``llmfab.model``; pruning and quantization are ``llmfab.compress``.
"""
