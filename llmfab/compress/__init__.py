"""llmfab.compress: making a trained model smaller, in one place.

Quantization: :mod:`gptq` (GPTQ and round-to-nearest on one weight), :mod:`quantize` (a whole model to
4-bit compressed-tensors, calibrated on the Dataset) and :mod:`quantize_workload` (the ``quantize``
stage of an InferenceService). Pruning: :mod:`pruning` (magnitude masks), :mod:`width_pruning`
(structured: MLP channels by activation importance) and :mod:`post_training_pruning` (a TrainingRun's
``spec.pruning``: prune to the target size, then recover by distillation from the unpruned model).
Distillation as a training objective is ``llmfab.training.objectives.distill``.

Compression reads the model (``llmfab.model``) and the Dataset's token windows (``llmfab.data``),
never the training loop; serving runs what it writes.
"""
