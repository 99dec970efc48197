"""llmfab.model: the decoder every stage shares, and nothing about how it is trained.

:mod:`transformer` (the Llama-style decoder, layer sharing), :mod:`kernels` (its eager CPU
kernels), :mod:`losses` and :mod:`distillation_loss` (losses that project hidden states through the
output head in chunks, so no stage holds full logits), :mod:`hf` (the Hugging Face format: export,
load, chat template), :mod:`reward_head` (the decoder with a scalar head: a RewardModel's model and
how it reads a dialogue) and :mod:`from_spec` (the API's ``spec.model`` as the model's arguments;
the model itself never imports the API).

It sits below training and compression: pruning and quantization work on the model without the
training loop, and the loop trains it without knowing how it will be compressed.
"""
