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
    error naming ``field`` and the line."""
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise WorkloadError(f"{field}: {where} is not a JSON object ({e}); fix the line") from e
            if not isinstance(row, dict):
                raise WorkloadError(f"{field}: {where} is not a JSON object; fix the line")
            yield where, row
