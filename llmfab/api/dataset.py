"""Dataset: collect text, clean it, deduplicate, filter, train or reuse a SentencePiece tokenizer,
tokenize and split.

Defaults follow the published pipelines whose thresholds they reuse (Gopher, C4, FineWeb, CCNet);
each filter step's docstring in ``llmfab/data`` cites its source.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from llmfab.api.common import (
    DELETION_POLICY_DESCRIPTION,
    DNS1123_LABEL,
    CelRule,
    DeletionPolicy,
    Resource,
    ResourceRef,
    Scheduling,
    Spec,
    StatusBase,
)
from llmfab.api.pod import PodSettings, Storage


def _source_has_one_origin(s: Any) -> str | None:
    if (s.path is None) == (s.huggingface is None):
        return "give exactly one of path (files or globs) or huggingface (a dataset) in each source"
    return None


class HuggingFaceSource(Spec):
    """A Hugging Face ``datasets`` dataset: a local ``save_to_disk`` directory, Arrow files, or a hub id."""

    path: str = Field(description="Local dataset directory, .arrow file(s), or a hub id when online.")
    split: str = Field(default="train", description="Which split to read.")
    name: str | None = Field(default=None, description="Dataset configuration name (hub datasets).")
    revision: str | None = Field(default=None, description="Hub revision; ignored for local paths.")


class HtmlExtraction(Spec):
    """How WARC response records become text: the page's charset, then its main text.

    Resiliparse (DCLM's extraction) by default, or trafilatura (datatrove's and FineWeb's); either
    runs in child processes (one per engine worker), a child killed and replaced when one page
    takes longer than ``timeoutSeconds`` (Resiliparse's main-content pass is quadratic in the
    nesting depth of a page: 10,000 nested ``div`` s take seconds).
    """

    extractor: Literal["resiliparse", "trafilatura"] = Field(
        default="resiliparse",
        description="resiliparse: fast (12x datatrove's documents/s on one core); trafilatura: ~12x slower, "
        "keeps less boilerplate (benchmarks/RESULTS.md, issue 23).",
    )
    main_content: bool = Field(
        default=True,
        description="Keep only the main content (navigation, headers, footers and sidebars dropped); "
        "false keeps all visible text (Resiliparse) or favours recall (trafilatura).",
    )
    timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Longest a page's extraction may take; a slower page is counted as "
        "extraction_timeout and skipped.",
    )


class Source(Spec):
    """One input of a Dataset; a Dataset reads several and mixes them by weight."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="has(self.path) != has(self.huggingface)",
            message="give exactly one of path or huggingface",
            check=_source_has_one_origin,
        ),
    )

    name: str | None = Field(default=None, description="Label for stats; default: the path.")
    path: str | None = Field(
        default=None,
        description="File, directory or glob (relative to the spec file, or absolute). .txt, .md, "
        ".jsonl/.json, .parquet, WARC/WET (.warc, .wet), MediaWiki XML dumps (.xml, "
        "*-pages-articles*.xml-p*); all but Parquet optionally .gz/.zst/.bz2/.xz compressed; tar "
        "archives (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz, .tar.zst) are read member by member, "
        "members that are themselves compressed or tar archives too.",
    )
    huggingface: HuggingFaceSource | None = Field(default=None, description="A datasets dataset.")
    format: Literal["auto", "text", "jsonl", "parquet", "warc", "mediawiki"] = Field(
        default="auto",
        description="auto picks by file extension (in an archive: by member name, a compressed member "
        "without one is looked into for a tar archive); warc: response records with an HTML payload "
        "become their extracted text (see html), WET conversion records their text; mediawiki: "
        "articles (namespace 0) of a MediaWiki XML dump as plain text, redirects and "
        "disambiguation pages skipped.",
    )
    html: HtmlExtraction = Field(
        default_factory=HtmlExtraction, description="WARC only: charset and text extraction of HTML pages."
    )
    license: str | None = Field(
        default=None, max_length=256,
        description="The licence of this source's text (e.g. public-domain, cc-by-sa-4.0), as the model cards "
        "of models trained on it list it; unset: the cards say it was not stated.",
    )
    origin: str | None = Field(
        default=None, max_length=2048,
        description="Where the text came from (a URL, a crawl or dump name), for the model cards; the path "
        "or dataset id is recorded besides.",
    )
    text_field: str = Field(default="text", description="JSONL key / Parquet or Arrow column of the text.")
    id_field: str | None = Field(default=None, description="Column with a document id; default: file:line.")
    document_per: Literal["file", "paragraph", "line"] = Field(
        default="file",
        description="How plain text files become documents: whole file, blank-line separated "
        "paragraph groups (see paragraphsPerDocument), or each line.",
    )
    paragraphs_per_document: int = Field(
        default=20, ge=1, description="With documentPer=paragraph: paragraphs grouped into one document."
    )
    max_documents: int | None = Field(default=None, ge=1, description="Read at most this many documents.")
    weight: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="Sampling weight: documents kept ≈ weight × documents read "
        "(weights above 1 repeat documents), applied before dedup.",
    )
    max_document_bytes: int = Field(
        default=8 << 20,
        ge=1,
        le=1 << 30,
        description="Longest record read, in bytes after decompression: a file (documentPer=file), "
        "paragraph, line, JSON line, JSON array file or table cell. A longer one is too long "
        "(onError: fail names file and line; skip counts it as too_long); keeps memory bounded.",
    )
    on_error: Literal["fail", "skip"] = Field(
        default="fail",
        description="A malformed, too long or unreadable record (bad JSON line, missing text field, "
        "corrupt compressed data): fail naming file and line, or skip and count it by reason.",
    )


class Normalize(Spec):
    """Text normalisation, each step switchable."""

    unicode: Literal["NFC", "NFKC", "none"] = Field(default="NFC", description="Unicode normal form.")
    fix_mojibake: bool = Field(default=True, description="Repair mis-decoded text with ftfy.")
    remove_control_chars: bool = Field(default=True, description="Drop C0/C1 controls except \\n and \\t.")
    normalize_whitespace: bool = Field(
        default=True, description="CRLF/CR to LF, collapse runs of spaces, strip line ends, ≤ 2 newlines."
    )
    unwrap_lines: bool = Field(
        default=False, description="Join hard-wrapped lines inside a paragraph with spaces (books, "
        "e-texts), so line rules (C4 terminal punctuation, FineWeb) judge paragraphs, not wrapped halves."
    )
    remove_boilerplate_lines: bool = Field(
        default=False, description="Drop lines seen in many documents (headers, footers, licences)."
    )
    boilerplate_min_documents: int = Field(
        default=10, ge=2, description="A line in at least this many documents is boilerplate."
    )


def _near_dedup_bands(n: Any) -> str | None:
    if (n.bands is None) != (n.rows is None):
        return "set both spec.dedup.near.bands and rows, or neither (then threshold picks them)"
    if n.bands is not None and n.rows is not None and n.bands * n.rows > n.permutations:
        return (
            f"spec.dedup.near: bands × rows = {n.bands * n.rows} exceeds permutations ({n.permutations}); "
            "raise permutations or lower bands/rows"
        )
    return None


class NearDedup(Spec):
    """MinHash + LSH near-duplicate removal; one document of each cluster is kept."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="has(self.bands) == has(self.rows) && "
            "(!has(self.bands) || self.bands * self.rows <= self.permutations)",
            message="set both bands and rows (bands × rows ≤ permutations) or neither",
            check=_near_dedup_bands,
        ),
    )

    enabled: bool = Field(default=True, description="Remove near duplicates.")
    shingle_size: int = Field(default=5, ge=1, le=32, description="Word n-gram size of shingles.")
    permutations: int = Field(default=128, ge=16, le=1024, description="MinHash permutations.")
    threshold: float = Field(default=0.8, gt=0, lt=1, description="Jaccard similarity to call a duplicate.")
    bands: int | None = Field(default=None, ge=1, description="LSH bands; default: chosen from threshold.")
    rows: int | None = Field(default=None, ge=1, description="Rows per band; default: chosen from threshold.")
    seed: int = Field(default=1, description="Hash seed.")


class Dedup(Spec):
    """Exact and near-duplicate removal; runs before the split so duplicates never straddle train/test."""

    exact: bool = Field(default=True, description="Remove exact duplicates of the normalised text.")
    near: NearDedup = Field(default_factory=NearDedup)


class GopherQuality(Spec):
    """Gopher quality rules (Rae et al. 2021, MassiveText, appendix A)."""

    enabled: bool = Field(default=True, description="Apply this filter.")
    min_words: int = Field(default=50, ge=0, description="Fewest words in a document.")
    max_words: int = Field(default=100_000, ge=1, description="Most words in a document.")
    min_mean_word_length: float = Field(
        description="Shortest mean word length (characters).", default=3.0, ge=0
    )
    max_mean_word_length: float = Field(
        default=10.0, ge=0, description="Longest mean word length (characters)."
    )
    max_symbol_word_ratio: float = Field(default=0.1, ge=0, description="'#' and '...' per word.")
    max_bullet_lines_ratio: float = Field(
        description="Most lines that may start with a bullet.", default=0.9, ge=0, le=1
    )
    max_ellipsis_lines_ratio: float = Field(
        default=0.3, ge=0, le=1, description="Most lines that may end with an ellipsis."
    )
    min_alpha_words_ratio: float = Field(default=0.8, ge=0, le=1, description="Words with a letter.")
    min_stop_words: int = Field(default=2, ge=0, description="Of: the, be, to, of, and, that, have, with.")


class NgramThreshold(Spec):
    """A limit on the share of characters covered by n-grams of size n."""

    n: int = Field(description="n-gram size in words.", ge=1, le=20)
    max_ratio: float = Field(description="Largest allowed share of characters.", ge=0, le=1)


class GopherRepetition(Spec):
    """Gopher repetition rules (Rae et al. 2021, table A1)."""

    enabled: bool = Field(default=True, description="Apply this filter.")
    max_duplicate_line_fraction: float = Field(
        description="Most lines that may be duplicates of other lines.", default=0.3, ge=0, le=1
    )
    max_duplicate_paragraph_fraction: float = Field(
        description="Most paragraphs that may be duplicates.", default=0.3, ge=0, le=1
    )
    max_duplicate_line_char_fraction: float = Field(
        description="Most characters that may be in duplicated lines.", default=0.2, ge=0, le=1
    )
    max_duplicate_paragraph_char_fraction: float = Field(
        description="Most characters that may be in duplicated paragraphs.", default=0.2, ge=0, le=1
    )
    top_ngrams: list[NgramThreshold] = Field(
        default_factory=lambda: [
            NgramThreshold(n=2, max_ratio=0.2),
            NgramThreshold(n=3, max_ratio=0.18),
            NgramThreshold(n=4, max_ratio=0.16),
        ],
        description="Characters in the most frequent n-gram / all characters.",
    )
    duplicate_ngrams: list[NgramThreshold] = Field(
        default_factory=lambda: [
            NgramThreshold(n=5, max_ratio=0.15),
            NgramThreshold(n=6, max_ratio=0.14),
            NgramThreshold(n=7, max_ratio=0.13),
            NgramThreshold(n=8, max_ratio=0.12),
            NgramThreshold(n=9, max_ratio=0.11),
            NgramThreshold(n=10, max_ratio=0.10),
        ],
        description="Characters in repeated n-grams / all characters.",
    )


class C4Filter(Spec):
    """C4 line and document rules (Raffel et al. 2020, section 2.2)."""

    enabled: bool = Field(default=True, description="Apply this filter.")
    require_terminal_punctuation: bool = Field(default=True, description='Drop lines without . ! ? or ".')
    min_words_per_line: int = Field(default=3, ge=0, description="Drop lines with fewer words.")
    min_sentences: int = Field(default=5, ge=0, description="Drop documents with fewer sentences.")
    max_word_length: int = Field(
        description="Drop lines with a longer word (characters).", default=1000, ge=1
    )
    remove_javascript_lines: bool = Field(default=True, description="Drop lines that mention javascript.")
    remove_policy_lines: bool = Field(default=True, description="Drop cookie/privacy/terms-of-use lines.")
    drop_lorem_ipsum: bool = Field(default=True, description="Drop documents containing 'lorem ipsum'.")
    drop_curly_braces: bool = Field(default=True, description="Drop documents containing '{' (code).")


class FineWebFilter(Spec):
    """FineWeb quality rules (Penedo et al. 2024, section 3.3)."""

    enabled: bool = Field(default=True, description="Apply this filter.")
    min_line_punctuation_ratio: float = Field(
        description="Fewest lines that must end in terminal punctuation.", default=0.12, ge=0, le=1
    )
    max_duplicate_line_char_ratio: float = Field(
        description="Most characters that may be in duplicated lines.", default=0.1, ge=0, le=1
    )
    max_short_line_ratio: float = Field(
        description="Most lines that may be shorter than shortLineLength.", default=0.67, ge=0, le=1
    )
    short_line_length: int = Field(
        description="A line shorter than this many characters is short.", default=30, ge=1
    )


class LanguageFilter(Spec):
    """Language identification with the model shipped inside ``py3langid`` (nothing downloaded)."""

    enabled: bool = Field(default=True, description="Apply this filter.")
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1, description="ISO 639-1 codes.")
    min_confidence: float = Field(
        description="Lowest probability of a kept language.", default=0.65, ge=0, le=1
    )


def _perplexity_band(p: Any) -> str | None:
    if p.low_percentile >= p.high_percentile:
        return (
            f"spec.filters.perplexity: lowPercentile ({p.low_percentile}) must be below "
            f"highPercentile ({p.high_percentile})"
        )
    return None


class PerplexityFilter(Spec):
    """CCNet-style filter (Wenzek et al. 2020): keep documents whose n-gram LM perplexity is in a band."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="self.lowPercentile < self.highPercentile",
            message="lowPercentile must be below highPercentile",
            check=_perplexity_band,
        ),
    )

    enabled: bool = Field(default=False, description="Apply this filter.")
    order: int = Field(default=3, ge=1, le=6, description="n of the n-gram language model.")
    reference: str | None = Field(
        default=None, description="Text file(s) to train the LM on; default: the corpus itself."
    )
    low_percentile: float = Field(default=0.0, ge=0, le=100, description="Drop below this percentile.")
    high_percentile: float = Field(default=90.0, ge=0, le=100, description="Drop above this percentile.")


class OutlierFilter(Spec):
    """Drop documents whose length/statistics are z-score outliers."""

    enabled: bool = Field(default=False, description="Apply this filter.")
    max_z_score: float = Field(
        description="Drop documents further than this many standard deviations.", default=4.0, gt=0
    )


class UrlFilter(Spec):
    """Drop documents by their URL (the ``url`` column the web readers fill), before any other step,
    as FineWeb does: domain and URL block lists (files, or directories in the UT1 format datatrove
    uses: ``<category>/domains`` and ``<category>/urls``), regular expressions and substrings, and an
    allow-list that wins over all of them. Domains are matched with their subdomains, never above
    the registered domain (Mozilla's Public Suffix List, the snapshot shipped in ``tldextract``;
    nothing is downloaded). Documents without a URL pass and are counted as ``no_url``."""

    enabled: bool = Field(default=True, description="Apply this filter (it does nothing until a list is given).")
    blocklists: list[str] = Field(
        default_factory=list,
        description="Files (a domain, or a URL without its scheme, per line; '#' comments; "
        ".gz/.xz/.bz2/.zst too) or UT1 directories (a category per subdirectory, each with "
        "'domains' and/or 'urls'), relative to the spec file. A file's category is its name.",
    )
    categories: list[str] = Field(
        default_factory=list, description="UT1 categories to use from the directories (e.g. adult); default: all."
    )
    blocked_domains: list[str] = Field(
        default_factory=list, description="More domains to block (with their subdomains)."
    )
    patterns: list[str] = Field(
        default_factory=list, description="Python regular expressions searched in the URL (add (?i) to ignore case)."
    )
    substrings: list[str] = Field(
        default_factory=list, description="Substrings searched in the lower-cased URL (e.g. casino)."
    )
    allow_domains: list[str] = Field(
        default_factory=list, description="Domains (with their subdomains) kept whatever the lists say."
    )

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"patterns[{i}]: {pattern!r} is not a Python regular expression ({e}); "
                                 "fix it, or list plain text under substrings instead") from None
        return patterns


class PiiFilter(Spec):
    """Replace e-mail addresses and public IP addresses with placeholders (FineWeb's PII formatter:
    the same placeholders, taken in turn within a document). Private, loopback and reserved
    addresses stay: they identify no one. Runs after the quality filters, before dedup."""

    enabled: bool = Field(default=True, description="Replace PII (counted per kind in stats.json).")
    emails: bool = Field(default=True, description="Replace e-mail addresses.")
    ip_addresses: bool = Field(default=True, description="Replace public IPv4 and IPv6 addresses.")


class Filters(Spec):
    """Filters, applied in order: URL, language, Gopher repetition, Gopher quality, C4, FineWeb, PII
    replacement, then (after dedup) perplexity and outliers."""

    url: UrlFilter = Field(default_factory=UrlFilter)
    gopher_quality: GopherQuality = Field(default_factory=GopherQuality)
    gopher_repetition: GopherRepetition = Field(default_factory=GopherRepetition)
    c4: C4Filter = Field(default_factory=C4Filter)
    fineweb: FineWebFilter = Field(default_factory=FineWebFilter)
    language: LanguageFilter = Field(default_factory=LanguageFilter)
    perplexity: PerplexityFilter = Field(default_factory=PerplexityFilter)
    outliers: OutlierFilter = Field(default_factory=OutlierFilter)
    pii: PiiFilter = Field(default_factory=PiiFilter)


class Audit(Spec):
    """A sample of the documents each step removed, per reason, kept in the artifact's ``removed/``
    (JSON Lines) so a filter's decisions can be read, not only counted. The sample is chosen by a
    hash of each document's source and id: the same build gives the same sample."""

    samples_per_reason: int = Field(
        default=20, ge=0, le=10_000, description="Documents kept per step and reason (0: no removed/)."
    )
    max_characters: int = Field(
        default=2000, ge=1, le=1_000_000, description="Characters of each sampled document's text kept."
    )


class SpecialTokens(Spec):
    """Pieces reserved for unknown, beginning/end of sequence and padding."""

    unk: str = Field(default="<unk>", description="Unknown piece.")
    bos: str = Field(default="<s>", description="Beginning of sequence.")
    eos: str = Field(default="</s>", description="End of sequence (between documents).")
    pad: str = Field(default="<pad>", description="Padding.")


def _tokenizer_origin(t: Any) -> str | None:
    if t.from_dataset is not None and t.path is not None:
        return "spec.tokenizer: give fromDataset or path, not both"
    return None


class Tokenizer(Spec):
    """Train a SentencePiece model on the train split, or reuse another Dataset's or a file."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="!(has(self.fromDataset) && has(self.path))",
            message="give fromDataset or path, not both",
            check=_tokenizer_origin,
        ),
    )

    type: Literal["unigram", "bpe"] = Field(default="unigram", description="SentencePiece model type.")
    vocab_size: int = Field(default=8000, ge=64, le=262_144, description="Vocabulary size.")
    byte_fallback: bool = Field(default=True, description="Unknown characters become UTF-8 bytes.")
    character_coverage: float = Field(
        default=0.9995,
        gt=0,
        le=1,
        description="Share of characters the vocabulary must cover (SentencePiece).",
    )
    sample_documents: int = Field(default=200_000, ge=1, description="Train on at most this many documents.")
    max_sentence_length: int = Field(
        default=65_536,
        ge=1024,
        description="Longer lines are truncated (SentencePiece skips them silently at its default of 4192).",
    )
    special_tokens: SpecialTokens = Field(default_factory=SpecialTokens)
    user_defined_symbols: list[str] = Field(default_factory=list, description="Tokens never split.")
    from_dataset: ResourceRef | None = Field(default=None, description="Reuse this Dataset's tokenizer.")
    path: str | None = Field(default=None, description="Reuse a SentencePiece .model file.")


def _split_sums_to_one(s: Any) -> str | None:
    total = s.train + s.val + s.test
    if abs(total - 1.0) > 1e-6:
        return f"spec.split: train + val + test = {total:g}, must be 1; e.g. train: 0.8, val: 0.1, test: 0.1"
    return None


class Split(Spec):
    """Split by document, deterministic from the seed and the document hash."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            cel="self.train + self.val + self.test > 0.999999 && self.train + self.val + self.test < 1.000001",
            message="train + val + test must sum to 1",
            check=_split_sums_to_one,
        ),
    )

    train: float = Field(description="Share of documents for training.", default=0.8, gt=0, le=1)
    val: float = Field(description="Share for validation.", default=0.1, ge=0, lt=1)
    test: float = Field(description="Share for testing.", default=0.1, ge=0, lt=1)
    seed: int = Field(description="Seed of the document-hash split.", default=0)


class RaySettings(Spec):
    """Ray connection, or the size of a local Ray started for this Dataset."""

    address: str | None = Field(
        default=None,
        description="ray://host:10001 or host:6379 of a Ray cluster; default: start a local one.",
    )
    cluster: str | None = Field(
        default=None,
        pattern=DNS1123_LABEL,
        description="Cluster only: a KubeRay RayCluster in this namespace; the operator submits a "
        "RayJob to it (its pods need the llmfab trainer image and the artifacts volume).",
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs for a local Ray.")
    object_store_memory: str = Field(
        description="Object store size of a local Ray (keep well under /dev/shm).",
        default="256Mi",
        pattern=r"^[0-9]+(Ki|Mi|Gi)?$",
    )


class Engine(Spec):
    """Where the steps run: in-process workers or Ray Data (e.g. a KubeRay cluster)."""

    type: Literal["local", "ray"] = Field(default="local", description="local: processes; ray: Ray Data.")
    workers: int | None = Field(default=None, ge=1, description="Parallel workers; default: all cores.")
    ray: RaySettings = Field(default_factory=RaySettings)


class Output(Spec):
    """How token shards are written."""

    shard_tokens: int = Field(
        default=50_000_000, ge=1024, description="Tokens per shard file before a new one starts."
    )


class DatasetSpec(Spec):
    sources: list[Source] = Field(min_length=1, description="Where the text comes from.")
    normalize: Normalize = Field(default_factory=Normalize)
    dedup: Dedup = Field(default_factory=Dedup)
    filters: Filters = Field(default_factory=Filters)
    audit: Audit = Field(default_factory=Audit)
    tokenizer: Tokenizer = Field(default_factory=Tokenizer)
    split: Split = Field(default_factory=Split)
    output: Output = Field(default_factory=Output)
    engine: Engine = Field(default_factory=Engine)
    storage: Storage = Field(default_factory=Storage)
    pod: PodSettings = Field(default_factory=PodSettings)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    suspend: bool = Field(
        default=False, description="Cluster only: true deletes the Dataset's pods; false runs it again."
    )
    deletion_policy: DeletionPolicy = Field(default="Retain", description=DELETION_POLICY_DESCRIPTION)


class StepStats(Spec):
    """Documents in/out of one pipeline step and why the rest were removed."""

    name: str
    documents_in: int = 0
    documents_out: int = 0
    removed: dict[str, int] = Field(default_factory=dict, description="Reason → documents removed.")
    counted: dict[str, int] = Field(
        default_factory=dict,
        description="What the step counted on the documents it kept: PII replaced by kind (and "
        "documents with any), documents the URL filter let through without a URL or by the allow-list.",
    )


class DatasetStatus(StatusBase):
    documents_read: int | None = Field(default=None, description="Documents collected.")
    documents: int | None = Field(default=None, description="Documents kept.")
    tokens: int | None = Field(default=None, description="Tokens over all splits.")
    split_tokens: dict[str, int] = Field(default_factory=dict, description="train/val/test → tokens.")
    vocab_size: int | None = None
    steps: list[StepStats] = Field(default_factory=list, description="Per-step counts.")


class Dataset(Resource):
    """Dataset: text collected from files or Hugging Face datasets, cleaned, deduplicated, filtered, tokenized with SentencePiece and split into train/val/test token shards."""

    KIND: ClassVar[str] = "Dataset"
    PLURAL: ClassVar[str] = "datasets"
    SHORT_NAMES: ClassVar[tuple[str, ...]] = ("lds",)
    STAGE: ClassVar[str] = "data"
    ARTIFACT_DIR: ClassVar[str] = "datasets"
    PRINTER_COLUMNS: ClassVar[tuple[dict[str, str], ...]] = (
        {"name": "Documents", "type": "integer", "jsonPath": ".status.documents"},
        {"name": "Tokens", "type": "integer", "jsonPath": ".status.tokens"},
    )

    kind: Literal["Dataset"] = "Dataset"
    spec: DatasetSpec
    status: DatasetStatus | None = None

    def references(self) -> list[tuple[str, str]]:
        ref = self.spec.tokenizer.from_dataset
        return [("Dataset", ref.name)] if ref else []
