"""The JSONL files post-training reads (instruction examples, preference pairs, RL prompts): a file or
a glob named by a spec field, one JSON object per line. Every error names that field, the file and
the line, so a user fixes the data without guessing."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmfab.errors import WorkloadError

MAX_LINE_BYTES = 16 * 1024 * 1024
"""One example, pair or prompt per line: a longer line is a broken file (or not JSONL at all), refused
before it is held in memory whole."""


def matching_files(field: str, pattern: str, resolved: Path, rows: str) -> list[Path]:
    """The files ``pattern`` (resolved against the spec's directory) names, sorted; none is an
    error naming ``field`` and the ``rows`` it should hold (e.g. ``{prompt} rows``)."""
    files = sorted(Path(p) for p in glob.glob(str(resolved)) if Path(p).is_file())
    if not files:
        raise WorkloadError(
            f"{field}: {pattern!r} ({resolved}) matches no file; give a JSONL file or glob of {rows} "
            "(relative paths are resolved against the spec's directory)"
        )
    return files


def read_rows(field: str, files: list[Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file:line``, object) for every non-empty line; a line that is not a JSON object is an
    error naming ``field`` and the line.

    Lines are JSONL's (``\\n``; a ``\\r`` before it is JSON whitespace), read one at a time: ``str.splitlines``
    would also split inside a text holding U+2028/U+0085, which JSON writers leave unescaped.
    Every way a line can be bad (not UTF-8, not JSON, a number too long for ``int``, nesting too
    deep for the parser, longer than ``MAX_LINE_BYTES``) is the same clear error, never a traceback.
    """
    for file in files:
        with file.open("rb") as lines:
            for number, raw in enumerate(iter(lambda: lines.readline(MAX_LINE_BYTES + 1), b""), start=1):
                where = f"{file}:{number}"
                if len(raw) > MAX_LINE_BYTES:
                    raise WorkloadError(f"{field}: {where} is longer than {MAX_LINE_BYTES} bytes; "
                                        "write one JSON object per line")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise WorkloadError(f"{field}: {where} is not UTF-8 ({e.reason} at byte {e.start}); "
                                        "fix the file's encoding") from e
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
                    raise WorkloadError(f"{field}: {where} is not a JSON object ({type(e).__name__}: "
                                        f"{str(e)[:200]}); fix the line") from e
                if not isinstance(row, dict):
                    raise WorkloadError(f"{field}: {where} is not a JSON object; fix the line")
                yield where, row
