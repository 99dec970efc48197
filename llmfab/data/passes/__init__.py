"""The passes of a Dataset build, in the order :func:`llmfab.data.pipeline.build_dataset` runs them.

:mod:`clean` (workers normalise and filter, the driver drops exact duplicates and spills the
survivors), :mod:`select` (near dedup and the statistical filters over the whole corpus),
:mod:`tokenizer` (train or reuse SentencePiece, write and check the Hugging Face copy) and
:mod:`shards` (workers encode, the driver writes token shards). They share a
:class:`~llmfab.data.passes.context.BuildContext` and hand documents on through a
:class:`~llmfab.data.passes.spill.Spill` file, so no pass holds the corpus in memory.
"""
