"""Every relative link in README.md and docs/*.md points at a file of this repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_relative_links_resolve() -> None:
    broken, checked = [], 0
    for doc in DOCS:
        prose = re.sub(r"`[^`\n]*`", "", doc.read_text())  # code spans (regex patterns) are no links
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            checked += 1
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(REPO) or not path.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
    assert checked > 20 and not broken, (checked, broken)
