"""llmfab.eval: perplexity, BLEU/ROUGE, bias probes and the run report (``llmfab eval run``).

Modules: ``perplexity`` (sliding window), ``generation`` (continuation task, sacrebleu/rouge-score),
``bias`` (minimal pairs) and ``regard`` (completion sentiment) over the probes in ``probes/``,
``report`` (report.html), ``workload`` (the stage entrypoint); ``splits`` and ``model_io`` read the
Dataset artifact and Hugging Face model directories (bf16 or compressed-tensors 4-bit).
"""
