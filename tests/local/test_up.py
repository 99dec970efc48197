"""`llmfab up` end to end on real stages: a Dataset and a TrainingRun, re-runs, failures, Ctrl-C.

Every process goes through the ``processes`` fixture (conftest.py): it ends with the test, with all
it started, whatever the outcome. More stop signals: test_signals.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Processes

REPO = Path(__file__).resolve().parents[2]

DATASET = """
apiVersion: llmfab.dev/v1alpha1
kind: Dataset
metadata: {name: books}
spec:
  sources: [{path: corpus/*.txt, documentPer: paragraph, paragraphsPerDocument: 6}]
  tokenizer: {type: bpe, vocabSize: 384}
"""

RUN = """
apiVersion: llmfab.dev/v1alpha1
kind: TrainingRun
metadata: {name: tiny}
spec:
  dataset: {name: books}
  release: {license: apache-2.0}
  model: {layers: 2, hidden: 64, heads: 4, contextLength: 32}
  maxSteps: STEPS
  precision: fp32
  batch: {globalTokens: 256}
  optimizer: {lr: 3.0e-3, warmupSteps: 2}
  checkpoint: {everySteps: 4, keepLast: 1}
  evalEverySteps: 4
  evalBatches: 2
  eval: {enabled: false}
  monitoring: {prometheusPort: null, tensorboard: false}
"""


def pipeline(tmp_path: Path, steps: int = 8, dataset: str = DATASET) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    shutil.copy(REPO / "examples" / "data" / "austen_pride_and_prejudice.txt", corpus)
    path = tmp_path / "pipeline.yaml"
    path.write_text(dataset + "---" + RUN.replace("STEPS", str(steps)))
    return path


def up(processes: Processes, *args: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMFAB_HOME": str(home), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return processes.run([sys.executable, "-m", "llmfab", "up", *args], env=env, timeout=timeout)


def status(home: Path, kind_dir: str, name: str) -> dict:
    return json.loads((home / kind_dir / f"{name}.status.json").read_text())


@pytest.mark.slow
def test_up_builds_a_dataset_then_trains_on_it_and_reruns_are_no_ops(tmp_path: Path, processes: Processes) -> None:
    home = tmp_path / "home"
    file = pipeline(tmp_path)
    first = up(processes, "-f", str(file), home=home)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "done: 2 succeeded, 0 failed, 0 skipped" in first.stdout
    assert status(home, "datasets", "books")["phase"] == "Succeeded"
    run = status(home, "runs", "tiny")
    assert run["phase"] == "Succeeded" and run["step"] == 8
    assert (home / "runs" / "tiny" / "manifest.json").exists()
    assert (home / "runs" / "tiny" / "model" / "config.json").exists()
    assert "===== " in (home / "runs" / "tiny.log").read_text()

    # `llmfab export` rebuilds model/ from the latest checkpoint: the same weights training exported.
    env = {**os.environ, "LLMFAB_HOME": str(home)}
    exported = processes.run(
        [sys.executable, "-m", "llmfab", "export", "tiny", "--out", str(tmp_path / "exported")], env=env, timeout=300
    )
    assert exported.returncode == 0, exported.stderr
    from safetensors.torch import load_file

    final = load_file(home / "runs" / "tiny" / "model" / "model.safetensors")
    again = load_file(tmp_path / "exported" / "model.safetensors")
    assert final.keys() == again.keys() and all((final[k] == again[k]).all() for k in final)
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "exported" / "README.md")  # the on-demand export has its card too
    assert "exported from a checkpoint" in card.text and card.data.license

    again = up(processes, "-f", str(file), home=home)
    assert again.returncode == 0
    log = (home / "runs" / "tiny.log").read_text() + (home / "datasets" / "books.log").read_text()
    assert log.count("up to date") == 2, log

    changed = pipeline(tmp_path, steps=12)
    third = up(processes, "-f", str(changed), home=home)
    assert third.returncode == 0, third.stdout
    assert status(home, "runs", "tiny")["step"] == 12
    assert (home / "datasets" / "books.log").read_text().count("up to date") == 2  # dataset untouched


@pytest.mark.slow
def test_a_failed_resource_fails_the_run_and_blocks_what_depends_on_it(tmp_path: Path, processes: Processes) -> None:
    home = tmp_path / "home"
    file = pipeline(tmp_path, dataset=DATASET.replace("corpus/*.txt", "missing/*.txt"))
    out = up(processes, "-f", str(file), home=home)
    assert out.returncode == 1
    text = " ".join(out.stdout.split())
    assert "Dataset/books [data] failed (exit 1)" in text
    assert "spec.sources[0].path" in text  # the log tail names the field
    assert "TrainingRun/tiny not run: a resource it references failed" in text
    assert status(home, "datasets", "books")["phase"] == "Failed"
    assert status(home, "runs", "tiny")["phase"] == "Waiting"
    assert not (home / "datasets" / "books").exists()


@pytest.mark.slow
def test_ctrl_c_stops_training_and_its_children_cleanly(tmp_path: Path, processes: Processes) -> None:
    home = tmp_path / "home"
    file = pipeline(tmp_path, steps=100_000)
    env = {**os.environ, "LLMFAB_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = processes.start(  # SIGINT at its default, whatever the shell that runs pytest left it at
        [sys.executable, "-m", "llmfab", "up", "-f", str(file)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if (status(home, "runs", "tiny").get("step") or 0) >= 1:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.5)
    else:
        pytest.fail("training never reported a step")
    assert len(processes.survivors(proc)) > 1  # `up` and its workload
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "interrupted" in output
    processes.assert_none_left(proc)
    final = status(home, "runs", "tiny")
    log = (home / "runs" / "tiny.log").read_text()[-3000:]
    assert final["phase"] == "Failed" and final["conditions"][0]["reason"] == "Interrupted", log
    assert not (home / "runs" / "tiny" / "manifest.json").exists()
