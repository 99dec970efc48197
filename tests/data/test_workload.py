"""`llmfab data run` end to end: artifact, stats, status, re-run no-op, bad input, crashes, engines."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from llmfab.data.shards import open_split
from llmfab.data.tokenizer import load_processor
from llmfab.store import read_manifest
from llmfab.workload import run_stage

from .corpus import GERMAN, document, write_corpus


def write_spec(directory: Path, name: str = "books", **spec: Any) -> Path:
    body = {"sources": [{"path": "src/corpus.jsonl"}], "tokenizer": {"type": "bpe", "vocabSize": 400},
            "output": {"shardTokens": 20000}, **spec}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "llmfab.dev/v1alpha1", "kind": "Dataset",
                                    "metadata": {"name": name}, "spec": body}))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMFAB_HOME", str(tmp_path / "home"))
    write_corpus(tmp_path / "src", documents=150)
    return tmp_path / "home"


def shard_hashes(dataset: Path) -> dict[str, list[str]]:
    manifest = read_manifest(dataset)
    assert manifest is not None
    return {s: [sh["sha256"] for sh in v["shards"]] for s, v in manifest["splits"].items()}


def test_data_run_builds_dataset_and_reruns_as_noop(home: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, filters={"url": {"blockedDomains": ["spam.example"]}})
    assert run_stage("data", spec) == 0
    out = home / "datasets" / "books"
    manifest = read_manifest(out)
    assert manifest is not None and manifest["kind"] == "Dataset" and manifest["name"] == "books"
    assert manifest["dtype"] == "uint16" and manifest["vocabSize"] == 400 and manifest["eosId"] == 2
    splits = manifest["splits"]
    assert splits["train"]["documents"] > 100 and splits["val"]["documents"] > 0
    assert sum(s["documents"] for s in splits.values()) == 150  # planted junk and duplicates removed
    for name, info in splits.items():
        reader = open_split(out, name)
        assert reader.num_tokens == info["tokens"]
        for shard in info["shards"]:
            assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
        spans = list(reader.document_spans())
        assert len(spans) == info["documents"]
        tokens = reader.read(0, reader.num_tokens)
        assert np.all(tokens[[e - 1 for _, e in spans]] == 2)
    stats = json.loads((out / "stats.json").read_text())
    removed = {s["name"]: s["removed"] for s in stats["steps"]}
    assert removed["exact_dedup"] == {"exact_duplicate": 3}
    assert removed["near_dedup"] == {"near_duplicate": 3}
    assert removed["language"] and removed["gopher_repetition"]
    c4 = next(s for s in stats["steps"] if s["name"] == "c4")
    assert c4["documentsEdited"] >= 1 and c4["charactersRemoved"] > 0  # the planted JavaScript line
    assert stats["hfTokenizerCheck"]["mismatches"] == 0
    assert all(s["examples"][r] for s in stats["steps"] for r in s["removed"] if r != "near_duplicate")
    steps = {s["name"]: s for s in stats["steps"]}
    assert steps["url"]["counted"] == {"no_url": 161}  # JSON Lines carry no URL: every document passes
    assert stats["urlFilter"]["domains"] == 1
    # the audit trail: a sample of every step's removals per reason, in the artifact
    files = stats["removedSamples"]["files"]
    assert set(files["exact_dedup"]) == {"exact_duplicate"} and set(files["near_dedup"]) == {"near_duplicate"}
    assert files["language"] == {r: {"removed": n, "sampled": n, "file": f"removed/language/{r}.jsonl"}
                                 for r, n in removed["language"].items()}
    near = [json.loads(x) for x in (out / "removed/near_dedup/near_duplicate.jsonl").read_text().splitlines()]
    assert len(near) == 3 and all(r["note"].startswith("duplicate of ") and r["text"] for r in near)
    from llmfab.local.inspect import describe_text

    described = describe_text("dataset", "books")
    assert f"Removed samples: {out / 'removed'} (" in described
    assert "near_dedup/near_duplicate: 3 of 3 removed  removed/near_dedup/near_duplicate.jsonl" in described
    assert "url: 161 → 161  [counted: no_url: 161]" in described
    status = json.loads((home / "datasets" / "books.status.json").read_text())
    assert status["phase"] == "Succeeded" and status["documents"] == 150 and status["documentsRead"] == 161
    assert status["vocabSize"] == 400 and set(status["splitTokens"]) == {"train", "val", "test"}
    assert [s["name"] for s in status["steps"]][:4] == ["read", "url", "normalize", "language"]
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    assert hf.eos_token_id == 2
    created = manifest["createdAt"]
    capsys.readouterr()
    assert run_stage("data", spec) == 0
    assert "up to date" in capsys.readouterr().out
    assert read_manifest(out)["createdAt"] == created  # type: ignore[index]


@pytest.mark.parametrize("case", ["missing_source", "wrong_field", "empty", "vocab", "reused_path", "split"])
def test_bad_input_fails_clearly_and_leaves_nothing_complete(case: str, home: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src" / "german.jsonl").write_text(json.dumps({"text": GERMAN}) + "\n")
    spec, code, message = {
        "missing_source": ({"sources": [{"path": "src/nope.jsonl"}]}, 1, r"spec.sources\[0\].path: 'src/nope.jsonl'"),
        "wrong_field": ({"sources": [{"path": "src/corpus.jsonl", "textField": "body"}]}, 1,
                        r"spec.sources\[0\].textField: corpus.jsonl has no string field 'body'"),
        "empty": ({"sources": [{"path": "src/german.jsonl"}]}, 1, r"spec.filters: no documents left.*language"),
        "vocab": ({"tokenizer": {"type": "bpe", "vocabSize": 60000}}, 1, r"spec.tokenizer.vocabSize: 60000"),
        "reused_path": ({"tokenizer": {"path": "nope.model"}}, 1, r"spec.tokenizer.path: 'nope.model' does not"),
        "split": ({"split": {"train": 0.5, "val": 0.1, "test": 0.1}}, 2, r"train \+ val \+ test = 0.7"),
    }[case]
    assert run_stage("data", write_spec(tmp_path, **spec)) == code
    err = capsys.readouterr().err
    import re

    assert re.search(message, err), err
    datasets = home / "datasets"
    assert read_manifest(datasets / "books") is None
    assert not [p for p in datasets.glob("books*") if p.is_dir()] if datasets.exists() else True


def test_reused_tokenizer_from_another_dataset(home: Path, tmp_path: Path) -> None:
    second = write_spec(tmp_path, name="reuse", tokenizer={"fromDataset": {"name": "base"}})
    assert run_stage("data", second) == 3  # base is not built yet: waiting for a dependency
    assert run_stage("data", write_spec(tmp_path, name="base")) == 0
    assert run_stage("data", second) == 0
    a, b = home / "datasets" / "base", home / "datasets" / "reuse"
    assert (a / "tokenizer.model").read_bytes() == (b / "tokenizer.model").read_bytes()
    assert shard_hashes(a) == shard_hashes(b)
    by_path = write_spec(tmp_path, name="bypath", tokenizer={"path": str(a / "tokenizer.model")})
    assert run_stage("data", by_path) == 0
    assert shard_hashes(home / "datasets" / "bypath") == shard_hashes(a)


def test_sigkilled_writer_leaves_nothing_that_looks_complete(home: Path, tmp_path: Path) -> None:
    write_corpus(tmp_path / "src", documents=3000, seed=1)
    spec = write_spec(tmp_path, engine={"workers": 1})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", f"from llmfab.workload import run_stage; run_stage('data', "
                             f"__import__('pathlib').Path({str(spec)!r}))"], env=env)
    datasets = home / "datasets"
    deadline = time.time() + 60
    while time.time() < deadline and not any((p / "_work" / "checkpoint.json").exists()
                                             for p in datasets.glob("books.tmp-*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(datasets.glob("books.tmp-*")), "the kill came too late to test anything"
    assert read_manifest(datasets / "books") is None and not (datasets / "books").exists()
    write_corpus(tmp_path / "src", documents=40, seed=2)
    assert run_stage("data", spec) == 0
    assert read_manifest(datasets / "books") is not None
    assert not list(datasets.glob("books.tmp-*"))  # the next writer cleaned up


@pytest.mark.slow
def test_output_is_independent_of_worker_count(home: Path, tmp_path: Path) -> None:
    write_corpus(tmp_path / "src", documents=1100, seed=3)  # two reader batches: the pool runs
    one = write_spec(tmp_path, name="one", engine={"workers": 1})
    two = write_spec(tmp_path, name="two", engine={"workers": 2})
    assert run_stage("data", one) == 0 and run_stage("data", two) == 0
    assert shard_hashes(home / "datasets" / "one") == shard_hashes(home / "datasets" / "two")


def test_optional_steps_boilerplate_perplexity_outliers_and_weights(home: Path, tmp_path: Path) -> None:
    rng = random.Random(9)
    footer = "This text is part of the Example Library collection of old stories."
    (tmp_path / "src" / "footer").mkdir()
    for i in range(30):
        (tmp_path / "src" / "footer" / f"{i}.txt").write_text(document(rng) + "\n" + footer + "\n")
    (tmp_path / "src" / "twice.jsonl").write_text("".join(json.dumps({"text": document(rng)}) + "\n"
                                                        for _ in range(10)))
    spec = write_spec(tmp_path, sources=[{"path": "src/footer"}, {"path": "src/twice.jsonl", "weight": 2}],
                      normalize={"removeBoilerplateLines": True},
                      filters={"perplexity": {"enabled": True, "highPercentile": 90},
                               "outliers": {"enabled": True, "maxZScore": 3}},
                      tokenizer={"type": "bpe", "vocabSize": 300})
    assert run_stage("data", spec) == 0
    out = home / "datasets" / "books"
    stats = json.loads((out / "stats.json").read_text())
    steps = {s["name"]: s for s in stats["steps"]}
    assert stats["boilerplateLines"] == 1
    assert steps["perplexity"]["documentsIn"] == 40
    assert 2 <= sum(steps["perplexity"]["removed"].values()) <= 6
    kept = steps["outliers"]["documentsOut"]
    manifest = read_manifest(out)
    assert manifest is not None
    total = sum(v["documents"] for v in manifest["splits"].values())
    assert kept < total <= kept + 10  # the weight-2 source's survivors are written twice
    sp = load_processor(out / "tokenizer.model")
    text = "".join(sp.decode(open_split(out, s).read(0, open_split(out, s).num_tokens).tolist())
                   for s in ("train", "val", "test"))
    assert "Example Library" not in text and "The " in text


@pytest.mark.slow
def test_ray_engine_gives_the_same_shards_as_local(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    write_corpus(tmp_path / "src", documents=1200, seed=4)
    local = write_spec(tmp_path, name="local", engine={"workers": 1})
    ray = write_spec(tmp_path, name="ray", engine={"type": "ray", "workers": 2,
                                                   "ray": {"numCpus": 2, "objectStoreMemory": "128Mi"}})
    assert run_stage("data", local) == 0
    assert run_stage("data", ray) == 0
    assert shard_hashes(home / "datasets" / "local") == shard_hashes(home / "datasets" / "ray")
