"""``scripts/gpu_check.py`` without a GPU: its arguments, the table, the exit codes, the time limits,
the refusal to run without CUDA, the specs its checks train with (validated by llmfab's own API) and
how it judges the figures the GPU will give (on figures in the formats its workers and the
throughput benchmark print)."""

from __future__ import annotations

import functools
import importlib.util
import io
import itertools
import json
import os
import subprocess
import sys
import time
import tomllib
from contextlib import redirect_stdout
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


def _load(name: str) -> ModuleType:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


checks = _load("gpu_checks")
gpu_check = _load("gpu_check")
worker = _load("gpu_check_worker")
NAMES = [c.name for c in checks.CHECKS]


def test_list_prints_each_check_with_what_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--list"]) == gpu_check.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    assert "(needs train)" in next(line for line in lines if line.startswith("export-logits"))


def test_only_adds_what_the_named_checks_need_in_table_order() -> None:
    assert [c.name for c in gpu_check.parse_args(["--only", "export-logits"]).checks] == [
        "dataset", "train", "export-logits"]
    chosen = gpu_check.parse_args(["--only", "throughput,usage", "--only", "oom"]).checks
    assert [c.name for c in chosen] == ["dataset", "train", "usage", "oom", "throughput"]
    assert [c.name for c in gpu_check.parse_args([]).checks] == NAMES


def test_an_unknown_check_is_refused_naming_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        gpu_check.parse_args(["--only", "train,trian"])
    assert stop.value.code == gpu_check.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--only: unknown check 'trian'; valid checks: " + ", ".join(NAMES) in err


def test_timeout_is_positive_seconds_with_an_eight_minute_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.parse_args([]).timeout == 480
    assert gpu_check.parse_args(["--timeout", "90"]).timeout == 90
    for bad in ("0", "-5", "soon"):
        with pytest.raises(SystemExit) as stop:
            gpu_check.parse_args(["--timeout", bad])
        assert stop.value.code == gpu_check.EXIT_USAGE
    assert "--timeout" in capsys.readouterr().err


def test_the_table_is_markdown_with_one_row_per_check() -> None:
    Result = gpu_check.Result
    table = gpu_check.render_table([Result("train", "pass", "loss 6.9 -> 4.1 | 120k tok/s", 61.04),
                                    Result("oom", "FAIL", "line one\nline two", 3.0)])
    assert table.splitlines() == [
        "| check | result | figures | seconds |",
        "| --- | --- | --- | ---: |",
        "| train | pass | loss 6.9 -> 4.1 \\| 120k tok/s | 61.0 |",
        "| oom | FAIL | line one line two | 3.0 |",
    ]


def _check(name: str, run: object, needs: tuple[str, ...] = (), budget: int = 60) -> object:
    return checks.Check(name, f"the {name} check", run, budget, needs)  # type: ignore[arg-type]


def _context(tmp_path: Path, seconds: float = 600) -> object:
    return checks.Context(sys.executable, tmp_path, "cpu", 0, time.monotonic() + seconds)


def _raise(error: Exception) -> object:
    def run(ctx: object) -> str:
        raise error
    return run


def test_a_failed_check_fails_the_run_and_what_needs_it_does_not_run(tmp_path: Path) -> None:
    registry = [
        _check("a", lambda ctx: "fine"),
        _check("b", _raise(checks.CheckFailed("loss went up"))),
        _check("c", lambda ctx: "never", needs=("b",)),
        _check("d", _raise(KeyError("step"))),
        _check("e", _raise(checks.CheckSkipped("needs a GPU"))),
    ]
    shown: list[object] = []
    results = gpu_check.run_checks(registry, _context(tmp_path), shown.append)
    assert [(r.name, r.result, r.figures) for r in results] == [
        ("a", "pass", "fine"), ("b", "FAIL", "loss went up"), ("c", "FAIL", "not run: needs b, which failed"),
        ("d", "FAIL", "KeyError: 'step'"), ("e", "skip", "needs a GPU")]
    assert shown == results
    assert gpu_check.exit_code(results) == gpu_check.EXIT_FAILED
    assert gpu_check.exit_code([results[0], results[4]]) == gpu_check.EXIT_OK  # a skip is no failure


def test_a_check_past_its_budget_is_stopped_and_fails(tmp_path: Path) -> None:
    def sleeper(ctx: object) -> str:
        ctx.run([sys.executable, "-c", "import time; time.sleep(120)"], "sleeper")  # type: ignore[attr-defined]
        return "slept"

    started = time.monotonic()
    [result] = gpu_check.run_checks([_check("slow", sleeper, budget=2)], _context(tmp_path))
    assert time.monotonic() - started < 60
    assert result.result == "FAIL" and result.figures.startswith("timed out; log: ")
    assert (tmp_path / "logs" / "sleeper.log").is_file()


def test_checks_not_reached_before_the_timeout_fail_without_running(tmp_path: Path) -> None:
    ran: list[str] = []
    registry = [_check("late", lambda ctx: ran.append("late") or "ran")]
    [result] = gpu_check.run_checks(registry, _context(tmp_path, seconds=5))
    assert (result.result, ran) == ("FAIL", [])
    assert result.figures.endswith("s left of --timeout")


def test_without_cuda_it_exits_3_saying_no_cuda_device(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--python", sys.executable,
                           "--work", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == gpu_check.EXIT_NO_CUDA
    assert "no CUDA device" in done.stderr and "torch.cuda.is_available() is False" in done.stderr
    assert "|" not in done.stdout  # no table that could pass for results
    assert not (tmp_path / "home").exists()


def test_no_cuda_message_says_why() -> None:
    assert gpu_check.no_cuda_message({"available": True, "count": 1}, "python3") is None
    assert "torch is not importable" in gpu_check.no_cuda_message(
        {"error": "torch is not importable by /usr/bin/python3: No module named 'torch'"}, "python3")
    assert "a CPU-only build" in gpu_check.no_cuda_message({"torch": "2.13.0+cpu", "cuda": None}, "python3")


def test_the_specs_the_checks_write_are_valid_training_runs() -> None:
    from llmfab.api import parse_resource
    from llmfab.training.components.batching import BatchSchedule

    resources = [checks.dataset_resource(str(REPO / "examples" / "data" / "*.txt")), checks.oom_resource("gpu-oom")]
    for device, sizes in checks.SIZES.items():
        assert sizes.sigterm_at < sizes.steps, device  # SIGTERM lands mid-run
        resources += [checks.train_resource("gpu-train", sizes, processes) for processes in (1, 2, 8)]
    for doc in resources:
        resource = parse_resource(doc, "gpu_checks.py")
        if resource.KIND == "TrainingRun":
            spec = resource.spec
            BatchSchedule(spec.batch, spec.model.context_length, spec.parallelism.processes_per_node)
    oom = parse_resource(checks.oom_resource("gpu-oom"), "gpu_checks.py").spec
    assert oom.batch.micro_batch_size is None and oom.batch.max_micro_batch_size == checks.OOM_MAX_MICRO
    assert oom.batch.global_tokens // oom.model.context_length >= checks.OOM_MAX_MICRO  # the probe starts at 64


def test_logits_pass_within_tolerance_and_fail_beyond_it() -> None:
    close = {"device": "cuda", "tokens": 256, "scale": 9.0, "fp32_max_diff": 3e-6, "argmax_agree_fp32": 1.0,
             "bf16_ours_vs_fp32": 0.09, "bf16_theirs_vs_fp32": 0.08}
    ok, figures = checks.judge_logits(close)
    assert ok and "fp32 max |diff| 3.0e-06" in figures
    assert not checks.judge_logits({**close, "fp32_max_diff": 0.05})[0]
    assert not checks.judge_logits({**close, "bf16_ours_vs_fp32": 0.5})[0]  # over 2x transformers' own error


def _oom_run() -> tuple[dict, list[dict], dict, dict]:
    report = {"budget_bytes": 3 << 30, "steps": 8, "ooms_before_first_step": 2, "step_peak_bytes": 1800 << 20,
              "lowered_bytes": 1400 << 20, "ooms_at_lowering": 2, "ooms_total": 3}
    events = [{"reason": "Started"},
              {"reason": "MicroBatchReduced", "message": "out of memory at step 4; micro-batch now 8"}]
    return report, events, {"microBatch": 8, "step": 3}, {"phase": "Succeeded", "step": checks.OOM_STEPS}


def test_oom_passes_when_the_probe_and_a_step_back_off_and_training_goes_on() -> None:
    problems, figures = checks.judge_oom(*_oom_run())
    assert problems == []
    assert "probe met 2 OOM(s) -> micro-batch 16/64" in figures and "back-off to [8]" in figures


def test_oom_fails_naming_what_did_not_happen() -> None:
    report, events, cap, status = _oom_run()
    assert "the probe met no out-of-memory" in checks.judge_oom({**report, "ooms_before_first_step": 0},
                                                                 events, cap, status)[0][0]
    assert "no out-of-memory" in checks.judge_oom({**report, "ooms_total": 2}, events, cap, status)[0][0]
    assert "micro-batch.json holds 16" in checks.judge_oom(report, events, {"microBatch": 16}, status)[0][0]
    assert "training did not go on" in checks.judge_oom(report, events, cap, {"phase": "Failed", "step": 3})[0][0]


def test_the_lowered_cap_sits_between_half_a_step_and_a_whole_one() -> None:
    held, peak = 200 << 20, 1800 << 20
    limit = worker.lowered_limit(held, peak)
    assert held + (peak - held) // 2 < limit < peak


def test_energy_is_the_counters_difference_over_all_gpus() -> None:
    before = {"driver": "580", "devices": [{"name": "H100", "energy_mj": 1_000_000}, {"name": "H100", "energy_mj": 5}]}
    after = {"driver": "580", "devices": [{"name": "H100", "energy_mj": 1_600_000}, {"name": "H100", "energy_mj": 400_005}]}
    used = checks.energy_used(before, after, 10.0)
    assert used["joules"] == pytest.approx(1000.0) and used["gpus"] == ["H100", "H100"]
    unsupported = {"devices": [{"name": "T4", "error": "nvmlDeviceGetTotalEnergyConsumption: Not Supported"}]}
    assert "Not Supported" in checks.energy_used(unsupported, unsupported, 1.0)["error"]
    assert "pynvml" in checks.energy_used({"error": "pynvml (package nvidia-ml-py) is not importable"}, after, 1)["error"]


def test_throughput_figures_are_read_from_the_benchmarks_own_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser reads what ``benchmarks/train_throughput.py``'s ``report`` prints, not a copy of it."""
    import torch

    bench = _load_benchmark()
    monkeypatch.setenv("LLMFAB_PEAK_FLOPS", "989e12")
    shape = bench.SHAPES["tiny"]
    a = bench.parse_args(["--device", "cpu", "--shape", "tiny", "--rounds", "1", "--steps", "2"])
    runs = {"llmfab": [(0.010, 0), (0.011, 0)], "transformers": [(0.014, 0), (0.015, 0)]}
    info = {"llmfab": {"applied": 100_000, "intermediate": 176}, "transformers": {"applied": 100_000}}
    out = io.StringIO()
    with redirect_stdout(out):
        bench.report(a, shape, "bf16", runs, info, 1, shape.batch * shape.ctx, torch.device("cpu"), print)
    found = checks.parse_throughput(out.getvalue())
    assert set(found) == {"llmfab", "transformers"}
    assert found["llmfab"]["tokens_per_second"] == pytest.approx(64 / 0.0105, abs=1)
    assert found["llmfab"]["mfu"] is not None and found["transformers"]["mfu"] is not None
    assert "llmfab 6095 tok/s" in checks.describe_throughput(found, "tiny")
    assert "(1.38x)" in checks.describe_throughput(found, "tiny")


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "benchmarks" / "train_throughput.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module
    spec.loader.exec_module(module)
    return module


def test_the_gpu_requirements_are_pyprojects_ranges() -> None:
    """What the GPU machine installs may not drift from what llmfab declares."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name: Requirement(r).specifier
                for r in [*project["dependencies"], *itertools.chain(*project["optional-dependencies"].values())]
                if not r.startswith("llmfab")}
    lines = [line.split("#")[0].strip() for line in (SCRIPTS / "gpu_requirements.txt").read_text().splitlines()]
    wanted = [Requirement(line) for line in lines if line]
    assert "torch" not in {r.name for r in wanted}  # the machine's CUDA build, never one from the wheels
    for r in wanted:
        if r.name != "nvidia-ml-py":
            assert r.name in declared and r.specifier == declared[r.name], r.name
    pinned = {Requirement(line).name for line in (SCRIPTS / "gpu_wheels.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert {"pydantic", "pydantic-core", "ftfy", "py3langid", "zstandard", "nvidia-ml-py"} <= pinned


@pytest.mark.slow
def test_a_cpu_rehearsal_prints_the_table_and_writes_the_report(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """main() end to end on this CPU with the dataset check (the real Dataset stage), the test's own python."""
    report = tmp_path / "out" / "gpu-check.json"
    code = gpu_check.main(["--cpu-rehearsal", "--python", sys.executable, "--only", "dataset",
                           "--work", str(tmp_path / "work"), "--report", str(report)])
    out = capsys.readouterr()
    assert code == gpu_check.EXIT_OK, out.err
    assert "CPU REHEARSAL: proves the script, not a GPU" in out.out
    assert "| dataset | pass | 123 documents" in out.out
    saved = json.loads(report.read_text())
    assert [r["name"] for r in saved["results"]] == ["dataset"] and saved["table"] in out.out
    assert saved["machine"]["torch"] and saved["machine"]["cpu"]


def test_unmet_pins_are_those_whose_version_this_python_lacks(tmp_path: Path) -> None:
    env_module = _load("gpu_check_env")
    from importlib.metadata import version

    pins = tmp_path / "pins.txt"
    pins.write_text(f"# comment\npyyaml=={version('pyyaml')}\npydantic==0.0.1  # older\nno-such-package==1.0\n")
    done = subprocess.run([sys.executable, "-c", env_module.UNMET_PINS, str(pins)], capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == ["pydantic==0.0.1", "no-such-package==1.0"]


def test_the_torch_names_the_worker_uses_exist_in_this_torch() -> None:
    """Its CUDA paths cannot run here; a misspelt or moved torch function would fail first on a lent GPU."""
    import ast

    import torch

    tree = ast.parse((SCRIPTS / "gpu_check_worker.py").read_text())
    chains = {ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    chains = {c for c in chains if c.startswith("torch.") and "(" not in c}
    assert {"torch.cuda.set_per_process_memory_fraction", "torch.cuda.memory_stats"} <= chains

    def resolves(chain: str) -> bool:
        try:
            functools.reduce(getattr, chain.split(".")[1:], torch)
        except AttributeError:
            return False
        return True

    assert [c for c in sorted(chains) if not resolves(c)] == []
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if node.module and node.module.startswith("torch")}
    for module, name in imported:
        assert hasattr(importlib.import_module(module), name), f"from {module} import {name}"
