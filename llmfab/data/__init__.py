"""llmfab.data: the Dataset stage (``llmfab data run``).

One module per step family, datatrove-style: :mod:`readers` (sources → Arrow batches; raw web
text through :mod:`warc`, :mod:`mediawiki` and :mod:`archives`, HTML and wikitext converted by
:mod:`html_text` and :mod:`mediawiki` in the child processes of :mod:`isolated`, each reader
reporting to a :mod:`record_sink`),
:mod:`url_filter` (block lists, patterns and an allow-list on the ``url`` column),
:mod:`normalize`, :mod:`language`, :mod:`gopher_repetition`, :mod:`gopher_quality`, :mod:`c4`,
:mod:`fineweb`, :mod:`pii` (per-document steps, run in workers by :mod:`cleaning`),
:mod:`exact_dedup`, :mod:`near_dedup` (MinHash + LSH + exact Jaccard check, on :mod:`hashing`),
:mod:`perplexity`, :mod:`outliers`, :mod:`split`, :mod:`tokenizer` (SentencePiece + Hugging Face
copy), :mod:`shards` (writer and ``open_split`` reader). :mod:`registry` lists the steps in
pipeline order and :mod:`steps` holds what they share (counts, :class:`~steps.Removal`);
:mod:`audit` keeps the sample of removed documents written to ``removed/``. :mod:`engine` runs
worker functions (local processes or Ray Data); :mod:`passes` holds the build's passes (clean,
select, tokenizer, shards) and their checkpoints (:mod:`passes.checkpoint`: a killed build
resumes), :mod:`pipeline` composes them (``build_dataset``) and :mod:`workload` is ``run(ctx)``.
"""
