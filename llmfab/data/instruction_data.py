"""Instruction examples and preference pairs for post-training, built from openly licensed sources.

    python -m llmfab.data.instruction_data --out data/post-training [--wordnet-dir DIR] [--force]

No package on the registries reachable here carries instruction or preference data, so they are
made, deterministically, from two sources the set-up has:

- WordNet 3.0 (Debian ``wordnet-base``, installed by ``make tools``; Princeton's WordNet 3.0
  licence, whose notice goes with every copy: ``WORDNET-LICENSE.txt``). The lemmas that occur in the
  corpus, most frequent first, each with the gloss of its most frequent sense (the first synset the
  index lists): ``define X`` -> that gloss; as a pair, that gloss (chosen) against another lemma's
  gloss (rejected).
- The sample corpus (``examples/data/``, public domain, see its README): ``continue this passage``
  -> the sentence that follows (chosen) against a sentence from another book (rejected), and
  ``which book is this from`` -> its title (chosen) against another title (rejected).

Every item goes to exactly one of ``sft.jsonl`` (``{prompt, response}``), ``preferences.jsonl``
(``{prompt, chosen, rejected}``) and ``rl-prompts.jsonl`` (``{prompt}``), so a RewardModel is judged
and an RL run is sampled on prompts the SFT run never saw. Each row also says its ``task`` and
``source``. ``manifest.json`` is the provenance: for each source its package, version, licence and
the sha256 of every input file read; the generator and its version, seed and options; the rows and
sha256 of every output. Nothing in it depends on the clock or the machine, so a rerun on the same
inputs writes the same bytes. The directory is built in a temporary sibling and renamed into place
(``store.staged_directory``), manifest last; a rerun whose manifest records the same inputs and
options does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmfab.store import read_manifest, staged_directory, write_json_atomic, write_text_atomic

GENERATOR = "llmfab.data.instruction_data"
VERSION = "2"  # bump when the output for the same inputs changes
WORDNET_PACKAGE = "wordnet-base"
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_LICENCE = "WordNet 3.0 licence (Princeton University): use, copy, modify and distribute with its notice"
CORPUS_DIR = Path(__file__).resolve().parents[2] / "examples" / "data"
POS_FILES = (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r"))
# The books of the sample corpus (examples/data/README.md gives their sources and licences).
BOOKS = {
    "austen_pride_and_prejudice.txt": "Pride and Prejudice, by Jane Austen",
    "moby_dick.txt": "Moby-Dick, by Herman Melville",
    "web_genesis.txt": "Genesis, in a text derived from the World English Bible",
}
CORPUS_LICENCE = "public domain (examples/data/README.md: sources and licences of each text)"
DEFINE_PROMPTS = ("Define {word}.", "What does the word {word} mean?", "What is the meaning of {word}?")
CONTINUE_PROMPT = "Continue this passage: {text}"
BOOK_PROMPT = "Which book is this passage from? {text}"
BOOK_ANSWER = "It is from {title}."
# Where every item goes: (sft, preferences, rl prompts) shares after a seeded shuffle.
SHARES = (0.5, 0.4, 0.1)
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Dr|St|Sw|Dan|Ger|Dut|viz|ch|vol)\.$")
# A sentence ends at . ! or ?, with the closing quote or bracket that follows it kept.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'”’)]))\s+")
_WORD = re.compile(r"[a-z]+")


class SourceMissing(RuntimeError):
    """An input the set-up installs is not there; the message names the package and the make target."""


@dataclass(frozen=True)
class Options:
    seed: int = 0
    max_words: int = 24  # per prompt text and per response, so a 128-token context holds an example
    max_glosses: int = 1500
    max_passages: int = 300  # per book and task

    def to_json(self) -> dict[str, int]:
        return {"seed": self.seed, "maxWords": self.max_words, "maxGlosses": self.max_glosses,
                "maxPassages": self.max_passages}


@dataclass
class Outputs:
    sft: list[dict[str, str]] = field(default_factory=list)
    preferences: list[dict[str, str]] = field(default_factory=list)
    rl_prompts: list[dict[str, str]] = field(default_factory=list)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- WordNet ---------------------------------------------------------------------------------


def wordnet_files(wordnet_dir: Path) -> list[Path]:
    """The index and data files read; their absence is an error naming the package and the fix."""
    files = [wordnet_dir / f"{kind}.{pos}" for pos, _ in POS_FILES for kind in ("index", "data")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SourceMissing(
            f"--wordnet-dir: WordNet is not installed at {wordnet_dir} (missing {', '.join(missing)}); it comes "
            f"from the Debian package {WORDNET_PACKAGE}: run `make tools` (which runs `apt-get install "
            f"{WORDNET_PACKAGE}`), or pass --wordnet-dir to a directory holding WordNet 3.0's dict files"
        )
    return files


def senses(index_lines: Iterable[str]) -> Iterator[tuple[str, list[int], int]]:
    """(lemma, offsets of its senses, most frequent first, the first sense's tagged count) per line.

    An index line is ``lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt
    offset*synset_cnt`` (wndb(5WN)); the licence header lines start with spaces."""
    for line in index_lines:
        if line.startswith(" "):
            continue
        parts = line.split()
        synsets, pointers = int(parts[2]), int(parts[3])
        yield parts[0], [int(o) for o in parts[-synsets:]], int(parts[5 + pointers])


def synset_words(data_line: str) -> list[str]:
    """The word forms of a data line (``offset lex_filenum ss_type w_cnt word lex_id ...``; w_cnt
    is hexadecimal; an adjective may carry a marker such as ``(a)``)."""
    parts = data_line.split()
    count = int(parts[3], 16)
    return [re.sub(r"\([a-z]+\)$", "", parts[4 + 2 * i]) for i in range(count)]


def definition(data_line: str) -> str:
    """The definition of a data line's gloss (``| definition; "example"; ...``): examples and a
    leading usage label such as ``(often plural)`` dropped."""
    gloss = data_line.split(" | ", 1)[1].strip() if " | " in data_line else ""
    gloss = re.split(r';\s*"', gloss, maxsplit=1)[0].strip().rstrip(";").strip()
    return re.sub(r"^\([^)]*\)\s*", "", gloss)


def wordnet_glosses(wordnet_dir: Path, wanted: set[str]) -> dict[str, str]:
    """lemma -> the definition of its most frequent common-noun/verb/adjective/adverb sense: the
    part of speech whose first sense is tagged most often in SemCor wins (ties: noun, verb, adj,
    adv), and within it the first sense where the lemma is written in lower case (``thomas`` is not
    the clockmaker Thomas)."""
    best: dict[str, tuple[int, str, list[int]]] = {}  # lemma -> (tagged count, pos, offsets)
    for pos, _ in POS_FILES:
        with open(wordnet_dir / f"index.{pos}", encoding="utf-8") as index:
            for lemma, offsets, tagged in senses(index):
                if lemma in wanted and (lemma not in best or tagged > best[lemma][0]):
                    best[lemma] = (tagged, pos, offsets)
    glosses = {}
    with contextlib.ExitStack() as files:
        handles = {pos: files.enter_context(open(wordnet_dir / f"data.{pos}", "rb")) for pos, _ in POS_FILES}
        for lemma in sorted(best):
            _, pos, offsets = best[lemma]
            for offset in offsets:
                handles[pos].seek(offset)  # a synset's offset is its byte offset in data.<pos>
                line = handles[pos].readline().decode("utf-8")
                if lemma in synset_words(line) and (text := definition(line)):
                    glosses[lemma] = text
                    break
    return glosses


def debian_version(package: str) -> str | None:
    """The installed version of a Debian package, or None (not installed by dpkg, or no dpkg)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def wordnet_notice(wordnet_dir: Path) -> str:
    """The WordNet 3.0 licence notice, which must appear on every copy of (a part of) the database:
    the numbered header every WordNet data file starts with."""
    lines = []
    with open(wordnet_dir / "data.noun", encoding="utf-8") as data:
        for line in data:
            match = re.match(r"^  \d+ ?(.*)$", line.rstrip())
            if match is None:
                break
            lines.append(match.group(1).rstrip())
    if not any("WordNet" in line for line in lines):
        raise SourceMissing(f"{wordnet_dir / 'data.noun'}: no WordNet licence header; reinstall the Debian "
                            f"package {WORDNET_PACKAGE} (`make tools`)")
    return "\n".join(lines).strip() + "\n"


# --- The sample corpus -----------------------------------------------------------------------


def sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph; a split after an abbreviation (``Mr.``) is joined back."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(" ".join(paragraph.split())):
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] += " " + piece
        elif piece:
            out.append(piece)
    return out


def passages(text: str, max_words: int) -> Iterator[tuple[str, str]]:
    """(passage, the sentence after it) within paragraphs: the passage is the longest run of whole
    sentences of at most ``max_words`` words (at least 8) ending just before that sentence. Items do
    not overlap (the next passage starts after the last one's sentence), so no item's answer is in
    another item's prompt."""
    for paragraph in text.split("\n\n"):
        sents = sentences(paragraph)
        free = 0  # the first sentence no earlier item used
        for i in range(1, len(sents)):
            following = sents[i]
            if not 3 <= len(following.split()) <= max_words:
                continue
            start, words = i, 0
            while start > free and words + len(sents[start - 1].split()) <= max_words:
                start -= 1
                words += len(sents[start].split())
            if words >= 8:
                yield " ".join(sents[start:i]), following
                free = i + 1


def corpus_words(texts: Iterable[str]) -> list[str]:
    """Lower-case words of the corpus, most frequent first (ties alphabetical)."""
    counts = Counter(w for text in texts for w in _WORD.findall(text.lower()))
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


# --- Building ---------------------------------------------------------------------------------


def assign(items: list[Any], rng: random.Random) -> tuple[list[Any], list[Any], list[Any]]:
    """A seeded shuffle split into the (sft, preferences, rl prompts) shares."""
    order = list(items)
    rng.shuffle(order)
    a = round(len(order) * SHARES[0])
    b = a + round(len(order) * SHARES[1])
    return order[:a], order[a:b], order[b:]


def sentence_case(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def define_items(glosses: dict[str, str], words: list[str], options: Options, out: Outputs, rng: random.Random) -> None:
    chosen = [w for w in words if len(w) >= 3 and w in glosses
              and 3 <= len(glosses[w].split()) <= options.max_words][: options.max_glosses]
    sft, prefs, rl = assign(chosen, rng)
    for i, word in enumerate(sft):
        out.sft.append({"prompt": DEFINE_PROMPTS[i % 3].format(word=word), "response": sentence_case(glosses[word]),
                        "task": "define", "source": "wordnet"})
    for i, word in enumerate(prefs):
        other = prefs[(i + 1 + rng.randrange(len(prefs) - 1)) % len(prefs)] if len(prefs) > 1 else None
        if other is None or glosses[other] == glosses[word]:
            continue
        out.preferences.append({"prompt": DEFINE_PROMPTS[i % 3].format(word=word),
                                "chosen": sentence_case(glosses[word]), "rejected": sentence_case(glosses[other]),
                                "task": "define", "source": "wordnet"})
    for i, word in enumerate(rl):
        out.rl_prompts.append({"prompt": DEFINE_PROMPTS[i % 3].format(word=word), "task": "define",
                               "source": "wordnet"})


def book_items(books: dict[str, str], options: Options, out: Outputs, rng: random.Random) -> None:
    """Continue-the-passage and which-book items; a book's passages do not overlap between tasks."""
    found = {name: list(passages(text, options.max_words)) for name, text in books.items()}
    continuations: list[tuple[str, str, str]] = []  # (book, passage, next sentence)
    which: list[tuple[str, str]] = []  # (book, passage)
    for name in sorted(found):
        items = found[name]
        rng.shuffle(items)
        take = items[: 2 * options.max_passages]
        continuations += [(name, p, s) for p, s in take[0::2]]
        which += [(name, p) for p, _ in take[1::2]]
    names = sorted(books)
    others = {name: [s for n, _, s in continuations if n != name] for name in names}
    sft, prefs, rl = assign(continuations, rng)
    for name, passage, following in sft:
        out.sft.append({"prompt": CONTINUE_PROMPT.format(text=passage), "response": following,
                        "task": "continue", "source": name})
    for name, passage, following in prefs:
        if others[name]:
            out.preferences.append({"prompt": CONTINUE_PROMPT.format(text=passage), "chosen": following,
                                    "rejected": rng.choice(others[name]), "task": "continue", "source": name})
    for name, passage, _ in rl:
        out.rl_prompts.append({"prompt": CONTINUE_PROMPT.format(text=passage), "task": "continue", "source": name})
    sft_w, prefs_w, rl_w = assign(which, rng)
    for name, passage in sft_w:
        out.sft.append({"prompt": BOOK_PROMPT.format(text=passage), "response": BOOK_ANSWER.format(title=BOOKS[name]),
                        "task": "which-book", "source": name})
    for name, passage in prefs_w:
        wrong = [n for n in names if n != name]
        if wrong:
            out.preferences.append({"prompt": BOOK_PROMPT.format(text=passage),
                                    "chosen": BOOK_ANSWER.format(title=BOOKS[name]),
                                    "rejected": BOOK_ANSWER.format(title=BOOKS[rng.choice(wrong)]),
                                    "task": "which-book", "source": name})
    for name, passage in rl_w:
        out.rl_prompts.append({"prompt": BOOK_PROMPT.format(text=passage), "task": "which-book", "source": name})


def read_books(corpus_dir: Path) -> dict[str, Path]:
    missing = [name for name in BOOKS if not (corpus_dir / name).is_file()]
    if missing:
        raise SourceMissing(f"--corpus: {corpus_dir} lacks {', '.join(missing)}; point it at the sample corpus "
                            "(examples/data/ of the llmfab checkout)")
    return {name: corpus_dir / name for name in BOOKS}


def build(wordnet_dir: Path, corpus_dir: Path, options: Options) -> tuple[Outputs, dict[str, Any]]:
    """The rows and the sources' provenance (no files written)."""
    wn_files = wordnet_files(wordnet_dir)
    book_files = read_books(corpus_dir)
    texts = {name: path.read_text(encoding="utf-8") for name, path in book_files.items()}
    words = corpus_words(texts[name] for name in sorted(texts))
    rng = random.Random(options.seed)
    out = Outputs()
    define_items(wordnet_glosses(wordnet_dir, set(words)), words, options, out, rng)
    book_items(texts, options, out, rng)
    sources = [
        {"name": "wordnet", "registry": "debian", "package": WORDNET_PACKAGE,
         "version": debian_version(WORDNET_PACKAGE) if wordnet_dir == WORDNET_DIR else None,
         "licence": WORDNET_LICENCE, "licenceFile": "WORDNET-LICENSE.txt",
         "content": "WordNet 3.0 index and data files: the most frequent sense's gloss of corpus words",
         "files": {f.name: sha256_file(f) for f in wn_files}},
        {"name": "sample-corpus", "path": "examples/data", "licence": CORPUS_LICENCE,
         "content": "; ".join(f"{name}: {title}" for name, title in BOOKS.items()),
         "files": {name: sha256_file(path) for name, path in book_files.items()}},
    ]
    return out, {"sources": sources}


def jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def write(out_dir: Path, wordnet_dir: Path = WORDNET_DIR, corpus_dir: Path = CORPUS_DIR,
          options: Options | None = None, force: bool = False) -> bool:
    """Build ``out_dir``; returns False when it was already built from the same inputs and options."""
    options = options or Options()
    wn_files = wordnet_files(wordnet_dir)
    inputs = {f.name: sha256_file(f) for f in [*wn_files, *read_books(corpus_dir).values()]}
    wanted = {"generator": GENERATOR, "version": VERSION, "options": options.to_json(), "inputsSha256": inputs}
    manifest = read_manifest(out_dir)
    if not force and manifest is not None and {k: manifest.get(k) for k in wanted} == wanted:
        print(f"{out_dir}: up to date (same inputs and options); nothing to do (use --force to rebuild)")
        return False
    notice = wordnet_notice(wordnet_dir)
    rows, provenance = build(wordnet_dir, corpus_dir, options)
    files = {"sft.jsonl": jsonl(rows.sft), "preferences.jsonl": jsonl(rows.preferences),
             "rl-prompts.jsonl": jsonl(rows.rl_prompts)}
    with staged_directory(out_dir) as tmp:
        (tmp / "WORDNET-LICENSE.txt").write_text(notice, encoding="utf-8")
        outputs: dict[str, Any] = {}
        for name, text in files.items():
            write_text_atomic(tmp / name, text)
            data_rows = [json.loads(line) for line in text.splitlines()]
            outputs[name] = {"rows": len(data_rows), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                             "tasks": dict(sorted(Counter(r["task"] for r in data_rows).items()))}
        write_json_atomic(tmp / "manifest.json", {"kind": "PostTrainingData", **wanted, **provenance,
                                                  "outputs": outputs})
    counts = ", ".join(f"{name} {o['rows']}" for name, o in outputs.items())
    print(f"{out_dir}: {counts} rows")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to create")
    parser.add_argument("--wordnet-dir", type=Path, default=WORDNET_DIR,
                        help=f"WordNet 3.0 dict files (default {WORDNET_DIR}, Debian {WORDNET_PACKAGE})")
    parser.add_argument("--corpus", type=Path, default=CORPUS_DIR, help="the sample corpus (examples/data)")
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument("--max-words", type=int, default=Options.max_words)
    parser.add_argument("--max-glosses", type=int, default=Options.max_glosses)
    parser.add_argument("--max-passages", type=int, default=Options.max_passages)
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    options = Options(args.seed, args.max_words, args.max_glosses, args.max_passages)
    try:
        write(args.out.resolve(), args.wordnet_dir, args.corpus, options, args.force)
    except SourceMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
