"""Pass 3: the SentencePiece model (trained on the train split, or reused) and its Hugging Face copy.

A reused model is looked up before any other work (:func:`reused_tokenizer`), so a wrong path
fails in seconds, not after cleaning. Training samples every k-th train document so the sample is
spread over all sources. The Hugging Face ``tokenizer.json`` written here is what encodes the shards
(:mod:`~.passes.shards`) and what the served model loads; :mod:`~.passes.served_check` checks that
the two agree.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from llmfab.api.dataset import DatasetSpec
from llmfab.data import tokenizer as tok
from llmfab.data.passes.context import BuildContext
from llmfab.data.passes.spill import Spill
from llmfab.data.split import split_of
from llmfab.errors import WorkloadError

ALL = 1 << 62


def reused_tokenizer(spec: DatasetSpec, resolve: Callable[[str], Path],
                     dependency: Callable[[str, str], Path] | None) -> Path | None:
    """The .model file to reuse, checked before any work is done (fail fast), or None."""
    tspec = spec.tokenizer
    if tspec.from_dataset is not None:
        if dependency is None:
            raise WorkloadError("spec.tokenizer.fromDataset: no way to look up other Datasets here; "
                                "use tokenizer.path with the .model file")
        src = dependency("Dataset", tspec.from_dataset.name) / "tokenizer.model"
        if not src.is_file():
            raise WorkloadError(f"spec.tokenizer.fromDataset: Dataset {tspec.from_dataset.name} has no "
                                f"tokenizer.model ({src}); rebuild it or use tokenizer.path")
        return src
    if tspec.path is not None:
        src = resolve(tspec.path)
        if not src.is_file():
            raise WorkloadError(f"spec.tokenizer.path: {tspec.path!r} does not exist (resolved to {src}); "
                                "fix the path or remove it to train a tokenizer")
        try:
            tok.load_processor(src)
        except (RuntimeError, OSError) as e:
            raise WorkloadError(f"spec.tokenizer.path: {src} is not a SentencePiece model ({e}); "
                                "point it at a .model file") from e
        return src
    return None


def build_tokenizer(ctx: BuildContext, spill: Spill, keep: np.ndarray, reused: Path | None) -> Path:
    """Write ``tokenizer.model`` and ``tokenizer/`` into ``ctx.out``; return the model's path."""
    spec = ctx.spec
    model = ctx.out / "tokenizer.model"
    if reused is not None:
        shutil.copyfile(reused, model)
    else:
        def in_train(key: bytes) -> bool:
            return split_of(key, spec.split) == "train"

        n_train = sum(len(b) for b in spill.texts(keep, ALL, in_train))
        stride = max(1, math.ceil(n_train / spec.tokenizer.sample_documents))
        sample = (t for batch in spill.texts(keep, ALL, in_train) for t in batch)
        tok.train_sentencepiece(spec.tokenizer, (t for i, t in enumerate(sample) if i % stride == 0), model)
        ctx.extra["tokenizerTrainingDocuments"] = math.ceil(n_train / stride)
    tok.write_hf_tokenizer(model, ctx.out / "tokenizer")
    return model
