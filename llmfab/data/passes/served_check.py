"""Pass 5, on every build: the ids in the shards are the ids the served model's tokenizer gives.

A sample of the documents written (every k-th in input order, so it spans all sources, up to
:data:`CHECK_CHARS` of text) is read back from the shard files and compared with the exported
``tokenizer/`` loaded as transformers and vLLM load it (``AutoTokenizer``). A difference is a
defect of llmfab (or of a transformers version that loads ``tokenizer.json`` differently), so it
fails the build: a model trained on other ids than it is served with is quietly worse. The same
sample says, in ``stats.json``, on how many documents SentencePiece's own encoder would have given
other ids (near-ties of a unigram model, a reused model's dummy prefix): no longer an error, since
SentencePiece's ids reach neither training nor serving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmfab.data import tokenizer as tok
from llmfab.data.passes.context import BuildContext
from llmfab.data.shards import SPLITS, SplitReader, token_dtype
from llmfab.errors import WorkloadError

CHECK_DOCUMENTS = 200
CHECK_CHARS = 4_000_000  # ~2 CPU-s of encoding at the ~2 MB/s the Hugging Face unigram encodes here


@dataclass
class CheckSample:
    """Chooses, while the shards are written, which documents the check reads back: every
    ``stride``-th one (``stride`` from the number of documents to write), until the sample holds
    :data:`CHECK_DOCUMENTS` documents or :data:`CHECK_CHARS` characters (always at least one)."""

    documents: int
    chosen: list[tuple[str, int, str]] = field(default_factory=list)  # (split, index in split, text)
    _seen: int = 0
    _chars: int = 0
    _per_split: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))

    @property
    def stride(self) -> int:
        return max(1, math.ceil(self.documents / CHECK_DOCUMENTS))

    def offer(self, split: str, text: str) -> None:
        index = self._per_split[split]
        self._per_split[split] += 1
        seen, self._seen = self._seen, self._seen + 1
        if seen % self.stride or len(self.chosen) >= CHECK_DOCUMENTS:
            return
        if self.chosen and self._chars + len(text) > CHECK_CHARS:
            return
        self.chosen.append((split, index, text))
        self._chars += len(text)


def _shard_documents(ctx: BuildContext, manifest: dict[str, Any], wanted: dict[str, set[int]]
                     ) -> dict[tuple[str, int], list[int]]:
    """The ids of the wanted documents, read back from the shard files (EOS dropped)."""
    found: dict[tuple[str, int], list[int]] = {}
    dtype = token_dtype(manifest["vocabSize"])
    for split, indexes in wanted.items():
        reader = SplitReader(ctx.out, manifest["splits"][split], dtype, manifest["eosId"])
        for i, (start, end) in enumerate(reader.document_spans()):
            if i in indexes:
                found[(split, i)] = reader.read(start, end - start - 1).tolist()
    return found


def check_served_ids(ctx: BuildContext, manifest: dict[str, Any], sample: CheckSample, model: Path,
                     reused: bool) -> None:
    """Fail the build if the served tokenizer gives other ids than the shards hold; record the
    counts as ``stats.json``'s ``hfTokenizerCheck``."""
    hf_dir = ctx.out / manifest["hfTokenizer"]
    served = tok.load_served_tokenizer(hf_dir)
    for name in ("eos", "bos"):
        want, got = manifest.get(f"{name}Id"), getattr(served, f"{name}_token_id")
        if want is not None and want >= 0 and got != want:
            raise WorkloadError(f"spec.tokenizer: the exported tokenizer's {name}_token_id is {got}, the shards "
                                f"use {want} for {name.upper()}; report this as a defect")
    specials = list(served.all_special_tokens)
    sp = tok.load_processor(model)
    wanted: dict[str, set[int]] = {}
    for split, index, _ in sample.chosen:
        wanted.setdefault(split, set()).add(index)
    shard_ids = _shard_documents(ctx, manifest, wanted)
    control_text = sp_differs = decode_differs = 0
    bad: list[str] = []
    for split, index, text in sample.chosen:
        ids = shard_ids[(split, index)]
        # vLLM maps a special token written in a prompt to its id; the shards spell it out, as the
        # served tokenizer does when asked to (split_special_tokens), so that is what is compared
        split_specials = tok.has_control_text(text, specials)
        control_text += split_specials
        served_ids = served(text, add_special_tokens=False, split_special_tokens=split_specials)["input_ids"]
        if list(served_ids) != ids:
            bad.append(text)
        sp_differs += sp.encode(text) != ids
        decode_differs += served.decode(ids) != text
    checked = len(sample.chosen)
    ctx.extra["hfTokenizerCheck"] = {"documents": checked, "mismatches": len(bad),
                                     "withSpecialTokenText": control_text, "sentencepieceDiffers": sp_differs,
                                     "decodeDiffers": decode_differs}
    if bad:
        raise WorkloadError(f"spec.tokenizer: the exported tokenizer (loaded with transformers' AutoTokenizer, as "
                            f"vLLM loads it) gives other ids than the shards hold on {len(bad)} of {checked} "
                            f"documents (e.g. {bad[0][:80]!r}); report this as a defect, with the transformers "
                            "and tokenizers versions")
    if reused and sp_differs and ctx.reporter is not None:  # e.g. a dummy-prefix model
        ctx.reporter.event("TokenizerMismatch", f"the reused SentencePiece model gives other ids than its Hugging "
                           f"Face tokenizer on {sp_differs} of {checked} documents; the shards hold the Hugging "
                           "Face ids, which the served model uses", "Warning")
