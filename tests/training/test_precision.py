"""precision: auto/bf16 become the faster of bf16 and fp32, measured by a cached probe.

Which precision wins differs between CPUs (AVX2-only, AVX-512-BF16 with and without AMX all occur
in CI), so nothing here asserts the winner on this machine: the decision, the cache, the event and
the agreement between ranks are driven by injected figures, and one real probe is checked only for
its figures and its duration.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from llmfab.api.training_run import TrainingRun, TrainingRunSpec
from llmfab.model.transformer import ModelArgs
from llmfab.status import FileStatusReporter
from llmfab.training.components import distributed as D
from llmfab.training.components import precision as P
from llmfab.training.loop.trainer import micro_batch_key
from llmfab.workload import run_stage

from .conftest import tiny_spec

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

CPU = torch.device("cpu")
ARGS = ModelArgs(vocab_size=300, layers=2, hidden=64, heads=4, kv_heads=4, intermediate=192,
                 context_length=32, sharing_groups=2)


def _run(precision: str = "auto") -> TrainingRun:
    return TrainingRun.model_validate(tiny_spec(precision=precision))


def _events(root: Path) -> list[dict]:
    path = root / "runs" / "tiny-run.events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


class Probe:
    """Fixed figures in place of a measurement, counting how often it ran."""

    def __init__(self, fp32_ms: float, bf16_ms: float) -> None:
        self.result, self.calls = P.ProbeResult(fp32_ms, bf16_ms, 32, 0.05), 0

    def __call__(self, args: ModelArgs) -> P.ProbeResult:
        self.calls += 1
        return self.result


def _never() -> tuple[P.ProbeResult, bool]:
    raise AssertionError("probed where no probe may run")


@pytest.fixture
def native(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decide as on a CPU with native bf16, whatever this one is, and with no override set."""
    monkeypatch.setattr(P, "native_cpu_bf16", lambda: True)
    monkeypatch.delenv(P.OVERRIDE_ENV, raising=False)


def _resolve(tmp_path: Path, precision: str, probe: Probe, args: ModelArgs = ARGS) -> tuple[TrainingRunSpec, list]:
    run = _run(precision)
    reporter = FileStatusReporter(run, tmp_path)
    precision = P.resolve(run.spec.precision, CPU, 1, args, tmp_path / "runs" / "tiny-run", reporter, probe=probe)
    return run.spec.model_copy(update={"precision": precision}), _events(tmp_path)


def test_fp32_never_probes_and_says_nothing() -> None:
    d = P.decide("fp32", "cpu", probe=_never, native_bf16=lambda: True)
    assert d.precision == "fp32" and P.message(d) is None


@pytest.mark.parametrize(("fp32_ms", "bf16_ms", "expected"), [(40.0, 22.0, "bf16"), (40.0, 55.0, "fp32")])
@pytest.mark.parametrize("requested", ["auto", "bf16"])
def test_cpu_takes_the_faster_of_the_probe(requested: str, fp32_ms: float, bf16_ms: float, expected: str) -> None:
    result = P.ProbeResult(fp32_ms, bf16_ms, 32, 0.1)
    d = P.decide(requested, "cpu", probe=lambda: (result, False), native_bf16=lambda: True)
    assert (d.precision, d.why, d.probe) == (expected, "probe", result)


def test_cuda_is_bf16_where_supported_without_a_probe() -> None:
    for requested in ("auto", "bf16"):
        assert P.decide(requested, "cuda", probe=_never, cuda_bf16=lambda: True).precision == "bf16"
        d = P.decide(requested, "cuda", probe=_never, cuda_bf16=lambda: False)
        assert d.precision == "fp32" and P.message(d) is not None
    assert P.message(P.decide("bf16", "cuda", probe=_never, cuda_bf16=lambda: True)) is None


def test_overrides_and_a_cpu_without_native_bf16_do_not_probe() -> None:
    assert P.decide("auto", "cpu", probe=_never, override="force", native_bf16=lambda: False).precision == "bf16"
    assert P.decide("bf16", "cpu", probe=_never, override="off", native_bf16=lambda: True).precision == "fp32"
    d = P.decide("auto", "cpu", probe=_never, native_bf16=lambda: False)
    assert (d.precision, d.why) == ("fp32", "no-native-bf16")
    with pytest.raises(ValueError, match=r"LLMFAB_CPU_BF16: 'yes'.*force, off"):
        P.decide("auto", "cpu", probe=_never, override="yes")
    with pytest.raises(ValueError, match=r"spec.precision: 'fp16'.*auto, bf16 or fp32"):
        P.decide("fp16", "cpu", probe=_never)


def test_the_event_states_both_figures_and_the_choice(tmp_path: Path, native: None) -> None:
    spec, events = _resolve(tmp_path, "auto", Probe(41.0, 22.0))
    assert spec.precision == "bf16"
    (event,) = events
    assert event["reason"] == "PrecisionChosen" and event["type"] == "Normal"
    message = event["message"]
    assert message.startswith("precision auto: bf16 (probe: fp32 41.0 ms, bf16 22.0 ms")
    assert "1.86x" in message and str(tmp_path / "runs" / "tiny-run" / P.PROBE_FILE) in message


def test_bf16_requested_but_slower_falls_back_with_a_warning_saying_how_to_insist(
    tmp_path: Path, native: None
) -> None:
    spec, events = _resolve(tmp_path, "bf16", Probe(40.0, 50.0))
    assert spec.precision == "fp32"
    (event,) = events
    assert event["reason"] == "PrecisionFallback" and event["type"] == "Warning"
    assert "fp32 40.0 ms, bf16 50.0 ms" in event["message"] and "0.80x" in event["message"]
    assert "precision: fp32" in event["message"] and "LLMFAB_CPU_BF16=force" in event["message"]


def test_the_probe_is_cached_per_cpu_model_and_shape(
    tmp_path: Path, native: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = Probe(40.0, 20.0)
    _resolve(tmp_path, "auto", probe)
    _, events = _resolve(tmp_path, "auto", probe)
    assert probe.calls == 1 and "cached in" in events[-1]["message"] and "measured in" not in events[-1]["message"]
    wider = ModelArgs(**{**ARGS.__dict__, "hidden": 128})
    _resolve(tmp_path, "auto", probe, wider)
    assert probe.calls == 2
    real_cpu_model = P.cpu_model
    monkeypatch.setattr(P, "cpu_model", lambda: "Another CPU")
    _resolve(tmp_path, "auto", probe)
    assert probe.calls == 3
    entries = json.loads((tmp_path / "runs" / "tiny-run" / P.PROBE_FILE).read_text())["entries"]
    assert sorted((e["key"]["cpu"] == "Another CPU", e["key"]["hidden"]) for e in entries) == [
        (False, 64), (False, 128), (True, 64)]
    monkeypatch.setattr(P, "cpu_model", real_cpu_model)
    _resolve(tmp_path, "auto", probe)  # the first machine's entry survived the others
    assert probe.calls == 3


def test_a_damaged_or_stale_cache_is_measured_again(tmp_path: Path, native: None) -> None:
    probe = Probe(40.0, 20.0)
    cache = tmp_path / "runs" / "tiny-run" / P.PROBE_FILE
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    _resolve(tmp_path, "auto", probe)
    assert probe.calls == 1
    data = json.loads(cache.read_text())
    data["entries"][0]["key"]["torch"] = "0.0.1"  # measured with another torch
    cache.write_text(json.dumps(data))
    _resolve(tmp_path, "auto", probe)
    assert probe.calls == 2


def test_ranks_agree_bf16_only_if_every_rank_chose_it() -> None:
    fast, slow = (P.Decision("bf16", "auto", "probe", P.ProbeResult(40.0, 20.0, 32, 0.1)),
                  P.Decision("fp32", "auto", "probe", P.ProbeResult(45.0, 60.0, 32, 0.2)))

    def over_two_ranks(values: list[float]) -> list[float]:
        other = [45.0, 60.0, 1.0, 32.0, 0.2]
        return [max(a, b) for a, b in zip(values, other, strict=True)]

    agreed = P.agree(fast, 2, over_two_ranks)
    assert agreed.precision == "fp32" and agreed.why == "ranks"
    assert agreed.probe == P.ProbeResult(45.0, 60.0, 32, 0.2)
    assert "another rank" in P.message(agreed, Path("x"))[1]  # type: ignore[index]
    assert P.agree(slow, 1, over_two_ranks) is slow


def _rank(rank: int, port: int, root: str, bf16_ms: list[float], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.pop(P.OVERRIDE_ENV, None)
    P.native_cpu_bf16 = lambda: True  # type: ignore[assignment]  # decide as on a native-bf16 CPU
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        run = _run("auto")
        probe = Probe(40.0, bf16_ms[rank])
        precision = P.resolve(run.spec.precision, CPU, 2, ARGS, Path(root) / f"rank{rank}",
                              FileStatusReporter(run, Path(root)), probe=probe)
        Path(out, f"{rank}").write_text(precision)
    finally:
        dist.destroy_process_group()


def test_under_torch_distributed_every_rank_takes_the_same_decision(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # rank 0 finds bf16 faster, rank 1 slower: both compute in fp32.
    mp.spawn(_rank, args=(port, str(tmp_path), [20.0, 60.0], str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / str(r)).read_text() for r in (0, 1)] == ["fp32", "fp32"]


def test_a_real_probe_gives_positive_figures_for_the_model_shape() -> None:
    start = time.perf_counter()
    result = P.run_probe(ARGS)
    # Not a timing assertion (the cores are shared): the probe accounts for its own wall time.
    assert 0 < result.seconds <= time.perf_counter() - start
    assert result.fp32_ms > 0 and result.bf16_ms > 0 and result.tokens == ARGS.context_length
    assert P.REPEATS[0] <= result.repeats <= P.REPEATS[1] and result.faster in ("bf16", "fp32")


class Clock:
    """A timer that advances ``tick`` seconds per reading: the probe's budget logic without waiting."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_probe_repeats_within_its_budget_and_scales_the_slice_to_the_model() -> None:
    slow = P.run_probe(ARGS, timer=Clock(1.0))  # every reading a second later: far over budget
    assert slow.repeats == P.REPEATS[0]
    # one block and the head each took one tick: layers × block + vocab/slice × head
    assert slow.fp32_ms == slow.bf16_ms == pytest.approx(1000 * (ARGS.layers + 1))
    fast = P.run_probe(ARGS, timer=Clock(1e-6))
    assert fast.repeats == P.REPEATS[1]
    big_vocab = ModelArgs(**{**ARGS.__dict__, "vocab_size": 4 * P.HEAD_SLICE})
    assert P.run_probe(big_vocab, timer=Clock(1.0)).fp32_ms == pytest.approx(1000 * (ARGS.layers + 4))


def test_probe_tokens_shrink_for_large_shapes_but_not_below_the_minimum() -> None:
    big = ModelArgs(vocab_size=32000, layers=12, hidden=1024, heads=16, kv_heads=16, intermediate=2752,
                    context_length=512, sharing_groups=12)
    assert P.probe_tokens(big) == P.MIN_TOKENS
    assert P.probe_tokens(ARGS) == ARGS.context_length


def test_unresolved_auto_is_refused_where_compute_precision_is_read() -> None:
    env = D.DistEnv(0, 0, 1, CPU)
    with pytest.raises(ValueError, match=r"spec.precision: 'auto' is not resolved"):
        D.uses_bf16(_run("auto").spec, env)
    assert TrainingRunSpec.model_fields["precision"].default == "auto"


def test_training_with_the_default_precision_reports_its_choice_and_keys_the_cap_by_it(
    home: Path, write_spec: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(P.OVERRIDE_ENV, raising=False)
    spec_file = write_spec(maxSteps=2)
    body = yaml.safe_load(spec_file.read_text())
    del body["spec"]["precision"]  # the default: auto
    spec_file.write_text(yaml.safe_dump(body))
    assert run_stage("train", spec_file) == 0
    run = home / "runs" / "tiny-run"
    (chosen,) = [e for e in _events(home) if e["reason"] == "PrecisionChosen"]
    assert chosen["message"].startswith(("precision auto: bf16 (", "precision auto: fp32 ("))
    if P.native_cpu_bf16():  # measured: both figures, and the cache
        assert "probe: fp32 " in chosen["message"] and (run / P.PROBE_FILE).is_file()
    concrete = chosen["message"].split()[2]
    resolved = TrainingRunSpec.model_validate({**_run().spec.model_dump(), "precision": concrete})
    assert json.loads(micro_batch_key(resolved, D.DistEnv(0, 0, 1, CPU)))["precision"] == concrete


@pytest.mark.parametrize("native_here", [True, False])
def test_decide_asks_the_capability_when_called_not_when_imported(monkeypatch: pytest.MonkeyPatch,
                                                                   native_here: bool) -> None:
    """A test (or a caller) that replaces ``native_cpu_bf16`` is obeyed on every CPU: a default bound
    at import asked the real CPU, so tests passed only where they were written (issue 19)."""
    monkeypatch.delenv(P.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(P, "native_cpu_bf16", lambda: native_here)
    probe = Probe(40.0, 20.0)
    d = P.decide("auto", "cpu", probe=lambda: (probe(ARGS), False))
    assert (d.why, d.precision, probe.calls) == (("probe", "bf16", 1) if native_here else ("no-native-bf16", "fp32", 0))


def test_the_capability_answer_can_be_forced_both_ways_and_a_bad_value_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(P.NATIVE_ENV, "1")
    assert P.native_cpu_bf16() is True
    monkeypatch.setenv(P.NATIVE_ENV, "0")
    assert P.native_cpu_bf16() is False
    monkeypatch.setenv(P.NATIVE_ENV, "yes")
    with pytest.raises(ValueError, match=r"LLMFAB_CPU_NATIVE_BF16: 'yes'.*use 1"):
        P.native_cpu_bf16()
