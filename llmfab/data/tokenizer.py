"""SentencePiece tokenizer: train on a sample of the train split (or reuse one), write it as a
Hugging Face tokenizer, and encode documents with that Hugging Face tokenizer.

The model is trained with ``normalization_rule_name=identity``, whitespace kept as is (the
pipeline already normalised the text) and no dummy-prefix space (so a Hugging Face tokenizer can
reproduce it, around added tokens too), so a newline survives as the byte piece ``<0x0A>`` with
byte fallback, and ``max_sentence_length`` raised (the SentencePiece default of 4192 bytes silently
skips longer lines). The Hugging Face ``tokenizer.json`` is built with ``tokenizers`` from the
model's own pieces and scores (BPE merges rebuilt from the pieces), so
``transformers.AutoTokenizer`` and vLLM load it offline.

The token shards are encoded by that ``tokenizer.json`` (:class:`Encoder`), not by SentencePiece:
the ids a model trains on must be the ids its served tokenizer gives. The two implementations do
not always agree on a unigram model where two segmentations of a word score within ~1e-3
(``vacan·c·ies`` vs ``vacan·ci·es``, -15.8388 vs -15.8382): SentencePiece's choice depends on where
in the document the word stands (``optimism`` alone gives ``opt·im·ism`` as ``tokenizers`` does,
inside a long document ``op·tim·ism``: its one Viterbi pass over the whole document keeps a float32
running score, whose rounding is then larger than the difference); ``tokenizers`` segments each
word on its own.
The every-build check (:mod:`llmfab.data.passes.served_check`) counts such documents in
``stats.json``; they are no longer an error.
"""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llmfab.api.dataset import Tokenizer as TokenizerSpec
from llmfab.errors import WorkloadError

FIELD = "spec.tokenizer"
UNK, BOS, EOS, PAD = 0, 1, 2, 3
MAX_SENTENCES = 5_000_000  # lines SentencePiece loads at most (bounds its memory on big corpora)
NORMAL, USER_DEFINED = 1, 4  # SentencePiece piece types (ModelProto.SentencePiece.Type)
UNREACHABLE = 1000.0  # below the lowest ordinary piece: longer than any spelling of a control piece costs


def _sentences(texts: Iterable[str], limit: int) -> Iterator[str]:
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line[:limit]


def train_sentencepiece(spec: TokenizerSpec, texts: Iterable[str], out_model: Path, threads: int = 2) -> None:
    """Train a SentencePiece model on ``texts`` (documents; each line is a sentence)."""
    import sentencepiece as spm

    st = spec.special_tokens
    buf = io.BytesIO()
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(0)  # its sentence sampling: same corpus, same model
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(texts, spec.max_sentence_length),
            model_writer=buf,
            model_type=spec.type,
            vocab_size=spec.vocab_size,
            byte_fallback=spec.byte_fallback,
            character_coverage=spec.character_coverage,
            max_sentence_length=spec.max_sentence_length,
            input_sentence_size=MAX_SENTENCES, shuffle_input_sentence=True,
            unk_id=UNK, bos_id=BOS, eos_id=EOS, pad_id=PAD,
            unk_piece=st.unk, bos_piece=st.bos, eos_piece=st.eos, pad_piece=st.pad,
            user_defined_symbols=spec.user_defined_symbols or [],
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            split_digits=True,
            num_threads=threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise WorkloadError(_training_error(spec, str(e))) from e
    out_model.write_bytes(buf.getvalue())


def _training_error(spec: TokenizerSpec, message: str) -> str:
    too_high = re.search(r"Vocabulary size (?:is )?too high \((\d+)\).*?<= ?(\d+)", message)
    if too_high:
        return (f"{FIELD}.vocabSize: {spec.vocab_size} is more than this corpus supports for a {spec.type} model "
                f"(at most {too_high.group(2)}); lower vocabSize to {too_high.group(2)} or less, or add text")
    if "smaller than required" in message or "vocab_size" in message.lower():
        return (f"{FIELD}.vocabSize: {spec.vocab_size} is too small for this corpus ({message.strip()}); raise "
                "vocabSize (byte fallback alone needs 256 + special tokens) or lower characterCoverage")
    return f"{FIELD}: SentencePiece training failed: {message.strip()}; check the tokenizer settings"


def load_processor(model: Path) -> Any:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(model))


def special_ids(model: Path, field: str = FIELD) -> dict[str, int]:
    """bos/eos/pad/unk ids of a model; an EOS is required (it separates documents in shards)."""
    sp = load_processor(model)
    ids = {"bosId": sp.bos_id(), "eosId": sp.eos_id(), "padId": sp.pad_id(), "unkId": sp.unk_id()}
    if ids["eosId"] < 0:
        raise WorkloadError(f"{field}: the tokenizer {model} has no end-of-sequence piece; shards separate "
                            "documents with EOS: use a model trained with eos_id set")
    return ids


def _bpe_merges(vocab: dict[str, int], normal: set[str]) -> list[tuple[str, str]]:
    """Merges that rebuild each BPE piece from two smaller pieces, ordered by the piece's rank
    (SentencePiece stores BPE as scored pieces, ``tokenizers`` wants merge rules). Only ordinary
    pieces (``normal``) take part: SentencePiece never builds ``<s>`` from ``<`` and ``s>``."""
    merges: list[tuple[int, int, int, str, str]] = []
    for piece, rank in vocab.items():
        if piece not in normal:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                merges.append((rank, vocab[left], vocab[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def _unigram_scores(proto: Any) -> list[tuple[str, float]]:
    """Pieces and scores for ``tokenizers``' Unigram. Its lattice matches every vocabulary string in
    the text, SentencePiece's only ordinary pieces: a control, unknown or byte piece written in the
    text (``</s>``, ``<0x0A>``) must come out spelled in ordinary pieces, as SentencePiece spells it,
    so those pieces score far below any ordinary spelling. Not where a character of the spelling is
    missing from the vocabulary: ``tokenizers`` scores an unknown character 10 below its lowest
    piece, so ``<unk>`` in a corpus without ``<`` stays one piece (in the shards and when served)."""
    normal = [p.score for p in proto.pieces if p.type == NORMAL]
    floor = min(normal, default=0.0) - UNREACHABLE
    return [(p.piece, p.score if p.type in (NORMAL, USER_DEFINED) else floor) for p in proto.pieces]


def write_hf_tokenizer(model: Path, out_dir: Path) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json`` for ``model``
    (with ``tokenizers`` only: importing transformers here would cost ~10 s per build)."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE, Unigram

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(model.read_bytes())
    trainer, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score) for p in proto.pieces]
    unk_id = trainer.unk_id
    if trainer.model_type == 1:
        tok = HFTokenizer(Unigram(_unigram_scores(proto), unk_id=unk_id, byte_fallback=trainer.byte_fallback))
    elif trainer.model_type == 2:
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        normal = {p.piece for p in proto.pieces if p.type == NORMAL}
        tok = HFTokenizer(BPE(vocab, _bpe_merges(vocab, normal), unk_token=pieces[unk_id][0],
                              fuse_unk=True, byte_fallback=trainer.byte_fallback))
    else:
        raise WorkloadError(f"{FIELD}.path: {model} is neither a unigram nor a BPE SentencePiece model; "
                            "train one with type unigram or bpe")
    steps: list[Any] = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    # Split before each "▁" as SentencePiece does (split_by_whitespace): same pieces, and BPE never
    # runs over a whole document as one word (quadratic). A dummy prefix exists only in reused
    # models; Hugging Face then differs on text that starts with a space.
    prepend = "first" if norm.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend,
                                                 split=proto.trainer_spec.split_by_whitespace)
    dec: list[Any] = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(dec)
    # control pieces (type 3) are special tokens; user-defined symbols (type 4) plain added tokens
    tok.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                    for p in proto.pieces if p.type in (3, 4)])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))

    def piece(i: int) -> str | None:
        return pieces[i][0] if 0 <= i < len(pieces) else None

    special = {f"{name}_token": piece(i) for name, i in (("bos", trainer.bos_id), ("eos", trainer.eos_id),
                                                        ("unk", unk_id), ("pad", trainer.pad_id)) if piece(i)}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
              "model_max_length": 1 << 30, "add_bos_token": False, "add_eos_token": False, **special}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def control_pieces(model: Path) -> list[str]:
    """The control pieces of a model (``<s>``, ``</s>``, ``<pad>``, ``<unk>``)."""
    sp = load_processor(model)
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]


def has_control_text(text: str, controls: Iterable[str]) -> bool:
    """Whether ``text`` contains a control piece literally: a Hugging Face tokenizer called as
    vLLM calls it maps it to the special token, SentencePiece and :class:`Encoder` spell it out;
    every converted SentencePiece tokenizer (Llama's included) has that difference."""
    return any(c in text for c in controls)


def hf_mismatches(model: Path, hf_dir: Path, texts: Iterable[str], use_transformers: bool = False) -> list[str]:
    """Texts whose Hugging Face ids differ from SentencePiece's (text with a control piece left out,
    :func:`has_control_text`)."""
    sp = load_processor(model)
    controls = control_pieces(model)
    if use_transformers:  # what users load; slow to import
        hf = load_served_tokenizer(hf_dir)

        def encode(text: str) -> list[int]:
            return list(hf(text, add_special_tokens=False)["input_ids"])
    else:
        from tokenizers import Tokenizer as HFTokenizer

        fast = HFTokenizer.from_file(str(hf_dir / "tokenizer.json"))

        def encode(text: str) -> list[int]:
            return list(fast.encode(text, add_special_tokens=False).ids)
    return [text for text in texts if not has_control_text(text, controls) and sp.encode(text) != encode(text)]


_TRANSFORMERS_IMPORT = threading.Lock()
"""transformers resolves its names lazily on first use, and two threads doing so at once can get
``ImportError: cannot import name 'AutoTokenizer'`` (seen with Dataset builds on threads)."""


def load_served_tokenizer(hf_dir: Path) -> Any:
    """The tokenizer of ``hf_dir`` loaded as transformers and vLLM load it (``AutoTokenizer``, the
    fast tokenizer; vLLM's ``get_tokenizer`` calls the same). Importing transformers costs seconds."""
    with _TRANSFORMERS_IMPORT:
        from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hf_dir))


class Encoder:
    """Encode batches of documents to ids with the exported Hugging Face ``tokenizer.json`` (the
    implementation transformers and vLLM run), loaded lazily in each worker process.

    A control piece written in the text (``</s>``) is spelled out in ordinary pieces, as
    SentencePiece does, never encoded as the control id: a document never ends early or holds a BOS
    the pipeline did not put there. transformers does the same with ``split_special_tokens=True``;
    without it (vLLM's default for a prompt) it gives the control id.
    """

    def __init__(self, tokenizer_json: str) -> None:
        self.tokenizer_json = tokenizer_json
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer_json": self.tokenizer_json, "_tok": None}

    def encode(self, texts: list[str]) -> list[list[int]]:
        if self._tok is None:
            from tokenizers import Tokenizer as HFTokenizer

            self._tok = HFTokenizer.from_str(self.tokenizer_json)
            self._tok.encode_special_tokens = True
        # offsets are not needed: the fast path skips tracking them
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]
