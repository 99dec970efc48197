"""llmfab.data: the Dataset stage (``llmfab data run``).

One module per step family, datatrove-style: :mod:`readers` (sources → Arrow batches; raw web
text through :mod:`warc`, :mod:`mediawiki` and :mod:`archives`, HTML and wikitext converted by
:mod:`html_text` and :mod:`mediawiki` in the child processes of :mod:`isolated`, each reader
reporting to a :mod:`record_sink`),
:mod:`normalize`, :mod:`language`, :mod:`gopher_repetition`, :mod:`gopher_quality`, :mod:`c4`,
:mod:`fineweb` (per-document steps, run in workers by :mod:`cleaning`), :mod:`exact_dedup`,
:mod:`near_dedup` (MinHash + LSH + exact Jaccard check, on :mod:`hashing`), :mod:`perplexity`,
:mod:`outliers`, :mod:`split`, :mod:`tokenizer` (SentencePiece + Hugging Face copy),
:mod:`shards` (writer and ``open_split`` reader). :mod:`registry` lists the steps in pipeline
order and :mod:`steps` holds what they share (counts, :class:`~steps.Removal`). :mod:`engine` runs
worker functions (local processes or Ray Data); :mod:`passes` holds the build's passes (clean,
select, tokenizer, shards), :mod:`pipeline` composes them (``build_dataset``) and :mod:`workload`
is ``run(ctx)``.
"""
