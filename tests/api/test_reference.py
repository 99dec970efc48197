"""docs/api.md is generated from the API models: committed = generated, and it lists every field."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from llmfab.api import KINDS
from llmfab.api.crds import openapi_schema
from llmfab.api.reference import render_reference
from llmfab.cli import app

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_committed_api_reference_equals_fresh_generation() -> None:
    assert API_MD.exists(), "run `llmfab docs --out docs/api.md`"
    assert API_MD.read_text() == render_reference(KINDS), "stale docs/api.md: run `llmfab docs --out docs/api.md`"


def _paths(node: dict, prefix: str) -> list[str]:
    while node.get("type") == "array" or isinstance(node.get("additionalProperties"), dict):
        if node.get("type") == "array":
            node, prefix = node.get("items", {}), prefix + "[]"
        else:
            node, prefix = node["additionalProperties"], prefix + "{}"
    out = []
    for name, child in (node.get("properties") or {}).items():
        path = f"{prefix}.{name}" if prefix else name
        out += [path, *_paths(child, path)]
    return out


def test_every_spec_and_status_field_of_every_kind_has_a_row() -> None:
    text = render_reference(KINDS)
    for kind, cls in KINDS.items():
        section = text.split(f"## {kind}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("spec", "status"):
            fields = _paths(openapi_schema(cls)["properties"][part], "")
            assert fields, (kind, part)
            missing = [f for f in fields if f"| `{f}` |" not in section]
            assert not missing, f"{kind}.{part}: no row for {missing}"


def test_docs_check_fails_on_a_stale_page_and_passes_after_regeneration(tmp_path: Path) -> None:
    out = tmp_path / "api.md"
    out.write_text(render_reference(KINDS).replace("Where the text comes from.", "Stale text."))
    stale = CliRunner().invoke(app, ["docs", "--out", str(out), "--check"])
    assert stale.exit_code == 1 and "llmfab docs --out" in stale.output
    assert CliRunner().invoke(app, ["docs", "--out", str(out)]).exit_code == 0
    fresh = CliRunner().invoke(app, ["docs", "--out", str(out), "--check"])
    assert fresh.exit_code == 0, fresh.output
