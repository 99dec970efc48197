"""The `llmfab` command as a user types it: validate, crds --check, up --dry-run, get, describe, explain."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llmfab.api import parse_resource
from llmfab.api.common import Phase
from llmfab.status import FileStatusReporter

REPO = Path(__file__).resolve().parents[2]

PIPELINE = """
apiVersion: llmfab.dev/v1alpha1
kind: TrainingRun
metadata: {name: tiny}
spec:
  dataset: {name: books}
  release: {license: apache-2.0}
  model: {layers: 2, hidden: 64, heads: 4, contextLength: 32}
---
apiVersion: llmfab.dev/v1alpha1
kind: Dataset
metadata: {name: books}
spec:
  sources: [{path: corpus.txt}]
"""


def llmfab(*args: str, home: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMFAB_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "llmfab", *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=120
    )


def test_validate_accepts_every_example(tmp_path: Path) -> None:
    out = llmfab("validate", "-f", "examples/", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "valid: Dataset/books" in out.stdout and "valid: InferenceService/tiny-chat" in out.stdout


def test_validate_refuses_a_bad_resource_naming_field_and_fix(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(PIPELINE.replace("hidden: 64", "hidden: 500").replace("heads: 4", "heads: 8"))
    out = llmfab("validate", "-f", str(bad), home=tmp_path)
    assert out.returncode == 2
    assert (
        "TrainingRun/tiny: spec.model.hidden: 500 is not divisible by spec.model.heads (8); choose"
        in out.stderr
    )


def test_committed_crds_are_current(tmp_path: Path) -> None:
    assert llmfab("crds", "--out", "charts/llmfab/crds", "--check", home=tmp_path).returncode == 0
    stale = tmp_path / "crds"
    stale.mkdir()
    out = llmfab("crds", "--out", str(stale), "--check", home=tmp_path)
    assert out.returncode == 1 and "out of date" in out.stderr


def test_up_dry_run_prints_the_plan_in_dependency_order(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    out = llmfab("up", "-f", str(pipeline), "--dry-run", home=tmp_path / "home")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.index("Dataset/books: data") < out.stdout.index("TrainingRun/tiny: train → eval")
    assert not (tmp_path / "home" / "datasets").exists()  # nothing ran


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PIPELINE.split("---")[0], "references Dataset/books, which is neither in these files"),
        (
            PIPELINE.replace("vocab", "x").replace(
                "sources: [{path: corpus.txt}]",
                "sources: [{path: corpus.txt}]\n  tokenizer: {fromDataset: {name: books}}",
            ),
            "Dataset/books: references itself",
        ),
        (
            PIPELINE.replace("contextLength: 32", "contextLength: 32, colour: red"),
            "spec.model.colour: unknown field",
        ),
    ],
)
def test_up_refuses_before_running_anything(tmp_path: Path, text: str, message: str) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(text)
    out = llmfab("up", "-f", str(pipeline), home=tmp_path / "home")
    assert out.returncode == 2
    assert message in " ".join(out.stdout.split())
    assert not (tmp_path / "home").exists()


def test_up_only_unknown_name_is_an_error(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    out = llmfab("up", "-f", str(pipeline), "--only", "nope", home=tmp_path)
    assert out.returncode == 2 and "--only nope: no such resource" in out.stdout


def test_get_and_describe_show_what_the_status_files_say(tmp_path: Path) -> None:
    run = parse_resource(
        {
            "apiVersion": "llmfab.dev/v1alpha1",
            "kind": "TrainingRun",
            "metadata": {"name": "tiny"},
            "spec": {"dataset": {"name": "books"}, "release": {"license": "apache-2.0"}},
        }
    )
    reporter = FileStatusReporter(run, tmp_path)
    reporter.phase(Phase.RUNNING, "Started", "training")
    reporter.progress(step=12, loss=3.25, tokensPerSecond=1500.0)
    out = llmfab("get", home=tmp_path)
    assert out.returncode == 0
    row = next(line for line in out.stdout.splitlines() if "tiny" in line)
    assert row.split()[:3] == ["TrainingRun", "tiny", "Running"] and "Step=12" in row and "Loss=3.25" in row
    assert "No resources found" in llmfab("get", "datasets", home=tmp_path).stdout
    described = llmfab("describe", "ltr", "tiny", home=tmp_path)
    assert described.returncode == 0
    for needle in ("Phase:        Running", "Progressing  True", "Started", "step: 12", "(incomplete)"):
        assert needle in described.stdout, described.stdout
    missing = llmfab("describe", "trainingrun", "nope", home=tmp_path)
    assert missing.returncode == 1 and "TrainingRun/nope not found" in missing.stderr


def test_explain_documents_fields_and_rejects_unknown_ones(tmp_path: Path) -> None:
    out = llmfab("explain", "dataset.spec.split", home=tmp_path)
    assert out.returncode == 0 and re.search(r"\n  train +<number> \(default 0\.8\)\n", out.stdout)
    bad = llmfab("explain", "dataset.spec.splt", home=tmp_path)
    assert bad.returncode == 2 and "no such field" in bad.stderr
