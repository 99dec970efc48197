"""Stopping is reliable: SIGINT and SIGTERM to `llmfab up` and to `llmfab train run` itself (what the
kubelet signals in a pod), at the model build, in the first steps, during a checkpoint save and
during evaluation, with every core busy; and the pieces (``llmfab.signals``, `up`'s escalation).

After each: the exit code names the signal (130 SIGINT, 143 SIGTERM), no process of the tree is
left, the status says Interrupted or Terminated, and nothing looks complete; SIGTERM after steps
that no checkpoint holds leaves a checkpoint of the step it stopped at. Slow points come from
``hooks/sitecustomize.py``, so each signal lands where the test name says.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import HOOKS, Processes
from test_up import DATASET, REPO, RUN, status

from llmfab import signals
from llmfab.api import parse_resource
from llmfab.api.common import Phase
from llmfab.local import runner
from llmfab.status import FileStatusReporter, read_status

EVERY = 5  # checkpoint interval of these runs, in steps
REASON = {signal.SIGINT: "Interrupted", signal.SIGTERM: "Terminated"}


def _spec(eval_enabled: bool = False, steps: int = 100_000, **spec: Any) -> dict[str, Any]:
    body = yaml.safe_load(RUN.replace("STEPS", str(steps)))
    body["spec"].update(checkpoint={"everySteps": EVERY, "keepLast": 5}, **spec)
    body["spec"]["monitoring"]["logEverySteps"] = 1
    if eval_enabled:  # small enough to start quickly; generation runs for a while after perplexity
        body["spec"]["eval"] = {"perplexity": {"maxTokens": 2048}, "bias": {"enabled": False}, "report": False}
    return body


@pytest.fixture(scope="module")
def dataset_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact store with a complete Dataset/books, built once by the data stage."""
    root = tmp_path_factory.mktemp("books")
    (root / "corpus").mkdir()
    shutil.copy(REPO / "examples" / "data" / "austen_pride_and_prejudice.txt", root / "corpus")
    (root / "books.yaml").write_text(DATASET)
    procs = Processes(root)
    try:
        out = procs.run([sys.executable, "-m", "llmfab", "data", "run", "--spec", str(root / "books.yaml")],
                        env={**os.environ, "LLMFAB_HOME": str(root / "home")}, timeout=300)
    finally:
        procs.kill_all()
    assert out.returncode == 0, out.stdout + out.stderr
    return root / "home"


class Run:
    """One TrainingRun `tiny` in its own store, started through `llmfab up` or `llmfab train run`."""

    def __init__(self, tmp_path: Path, dataset_home: Path, processes: Processes) -> None:
        self.home, self.marks, self.processes = tmp_path / "home", tmp_path / "marks", processes
        shutil.copytree(dataset_home, self.home)
        self.marks.mkdir()
        self.spec_file = tmp_path / "tiny.yaml"
        self.output = tmp_path / "output.log"
        self.proc: subprocess.Popen[Any] | None = None

    def start(self, via: str, slow: str = "", sigint: Any = signal.SIG_DFL, **spec: Any) -> None:
        self.spec_file.write_text(yaml.safe_dump(_spec(**spec)))
        command = ["up", "-f"] if via == "up" else ["train", "run", "--spec"]
        env = {**os.environ, "LLMFAB_HOME": str(self.home), "OMP_NUM_THREADS": "1", "COLUMNS": "200",
               "LLMFAB_TEST_SLOW": slow, "LLMFAB_TEST_MARKS": str(self.marks),
               "PYTHONPATH": os.pathsep.join([str(HOOKS), os.environ.get("PYTHONPATH", "")])}
        with self.output.open("w") as out:
            self.proc = self.processes.start([sys.executable, "-m", "llmfab", *command, str(self.spec_file)],
                                             env=env, sigint=sigint, stdout=out, stderr=subprocess.STDOUT)

    def status(self) -> dict[str, Any]:
        try:
            return status(self.home, "runs", "tiny")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def events(self) -> str:
        path = self.home / "runs" / "tiny.events.jsonl"
        return path.read_text() if path.exists() else ""

    def wait_for(self, what: str, condition: Callable[[], bool], timeout: float = 240) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"exited {self.proc.returncode} before {what}:\n{self.logs()}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{self.logs()}"
            time.sleep(0.05)

    def stop(self, sig: int) -> dict[str, Any]:
        """Send ``sig``; require the exit code it implies and no process left; return the status."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 90 s after {signal.Signals(sig).name}:\n{self.logs()}")
        assert code == 128 + sig, f"exit {code}:\n{self.logs()}"
        self.processes.assert_none_left(self.proc)
        return self.status()

    def checkpoints(self) -> list[int]:
        """Steps of the complete checkpoints."""
        found = (self.home / "runs" / "tiny" / "checkpoints").glob("step-*/trainer.json")
        return sorted(int(p.parent.name.removeprefix("step-")) for p in found)

    def logs(self) -> str:
        log = self.home / "runs" / "tiny.log"
        return self.output.read_text()[-3000:] + (log.read_text()[-3000:] if log.exists() else "")

    def assert_failed_for(self, sig: int, status: dict[str, Any]) -> None:
        assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == REASON[sig], self.logs()
        assert not (self.home / "runs" / "tiny" / "manifest.json").exists()
        assert not (self.home / "runs" / "tiny" / "model").exists()


@pytest.fixture
def run(tmp_path: Path, dataset_home: Path, processes: Processes, cpu_load: None) -> Run:
    return Run(tmp_path, dataset_home, processes)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("via", "sig", "inherited"),
    [("train", signal.SIGTERM, signal.SIG_DFL), ("train", signal.SIGINT, signal.SIG_IGN), ("up", signal.SIGTERM, signal.SIG_DFL)],
    ids=["train-SIGTERM", "train-SIGINT-inherited-ignored", "up-SIGTERM"],
)
def test_a_stop_during_the_model_build_fails_the_run_before_any_step(run: Run, via: str, sig: int, inherited: Any) -> None:
    """The second case is the background job of a non-interactive shell: SIGINT inherited ignored."""
    run.start(via, slow="build=5", sigint=inherited)
    run.wait_for("model build", (run.marks / "build").exists)
    status = run.stop(sig)
    run.assert_failed_for(sig, status)
    assert not status.get("step") and run.checkpoints() == []


@pytest.mark.slow
@pytest.mark.parametrize("via", ["train", "up"])
def test_sigterm_in_the_first_steps_saves_the_step_it_stopped_at(run: Run, via: str) -> None:
    run.start(via, slow="step=0.15")
    run.wait_for(f"step {EVERY + 1}", lambda: (run.status().get("step") or 0) > EVERY)
    status = run.stop(signal.SIGTERM)
    run.assert_failed_for(signal.SIGTERM, status)
    stopped_at = status["step"]
    assert stopped_at % EVERY, "stopped on a periodic checkpoint's step: nothing for SIGTERM to save"
    assert run.checkpoints() == [EVERY, stopped_at]
    assert status["lastCheckpoint"].endswith(f"step-{stopped_at:08d}")
    assert f"SIGTERM at step {stopped_at}: saved step-{stopped_at:08d}" in run.events()


@pytest.mark.slow
def test_sigint_in_the_first_steps_stops_at_once_without_a_checkpoint(run: Run) -> None:
    run.start("train", slow="step=0.15")
    run.wait_for(f"step {EVERY + 1}", lambda: (run.status().get("step") or 0) > EVERY)
    status = run.stop(signal.SIGINT)
    run.assert_failed_for(signal.SIGINT, status)
    assert run.checkpoints() == [EVERY]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "complete"), [(signal.SIGTERM, [EVERY]), (signal.SIGINT, [])], ids=["SIGTERM", "SIGINT"])
def test_a_stop_during_a_checkpoint_save(run: Run, sig: int, complete: list[int]) -> None:
    """SIGTERM waits for the save (it fits the budget) and stops after it; SIGINT abandons it, and
    the half-written ``step-….tmp-save`` is never taken as complete."""
    run.start("train", slow="save=3")
    run.wait_for("the first save", (run.marks / "save").exists)
    status = run.stop(sig)
    run.assert_failed_for(sig, status)
    assert run.checkpoints() == complete
    finished = f"SIGTERM at step {EVERY}: step {EVERY} was already checkpointed" in run.events()
    assert finished == (sig == signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_during_evaluation_leaves_no_evaluation_behind(run: Run, sig: int) -> None:
    """A TrainingRun's evaluation runs after its training is complete: the run stays Succeeded and
    usable, the evaluation is reported as stopped and writes no results."""
    run.start("up", steps=6, eval_enabled=True)
    run.wait_for("evaluation", lambda: "EvalPerplexity" in run.events())
    status = run.stop(sig)
    assert status["phase"] == "Succeeded", run.logs()
    failed = [json.loads(line) for line in run.events().splitlines() if '"EvalFailed"' in line]
    assert failed and signal.Signals(sig).name in failed[-1]["message"], run.events()
    assert not (run.home / "runs" / "tiny" / "eval.json").exists()


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_worker_at_one_step_with_a_checkpoint(run: Run) -> None:
    run.start("train", slow="step=0.15", parallelism={"processesPerNode": 2})
    run.wait_for(f"step {EVERY + 1}", lambda: (run.status().get("step") or 0) > EVERY, timeout=300)
    status = run.stop(signal.SIGTERM)
    run.assert_failed_for(signal.SIGTERM, status)
    stopped_at = status["step"]
    assert run.checkpoints()[-1] == stopped_at > EVERY
    shards = (run.home / "runs" / "tiny" / "checkpoints" / f"step-{stopped_at:08d}").glob("*.distcp")
    assert sorted(p.name for p in shards) == ["__0_0.distcp", "__1_0.distcp"]


@pytest.fixture
def handlers() -> Iterator[None]:
    """This process's SIGINT/SIGTERM handlers, restored after the test."""
    saved = {sig: signal.getsignal(sig) for sig in signals.STOP_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    signals._state.signum = signals._state.hold = None  # not stopping: in-process tests that follow fail as errors


def _signal_self(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(1)  # the handler runs (and raises) here


def test_sigterm_raises_terminated_once_and_a_repeat_is_ignored(handlers: None) -> None:
    signals.install()
    with pytest.raises(signals.Terminated) as stop:
        _signal_self(signal.SIGTERM)
    assert signals.exit_code(signals.signal_of(stop.value)) == 143 and isinstance(stop.value, KeyboardInterrupt)
    _signal_self(signal.SIGTERM)  # already stopping: the cleanup that follows is not cut short


def test_sigint_stops_the_process_even_when_it_was_inherited_ignored(handlers: None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a non-interactive shell
    signals.install()
    with pytest.raises(KeyboardInterrupt) as stop:
        _signal_self(signal.SIGINT)
    assert signals.exit_code(signals.signal_of(stop.value)) == 130


def test_a_held_sigterm_waits_for_the_safe_point(handlers: None) -> None:
    signals.install()
    hold = signals.hold_sigterm(30)
    _signal_self(signal.SIGTERM)
    assert hold.since() is not None
    with pytest.raises(signals.Terminated):
        hold.stop()


def test_a_held_sigterm_raises_wherever_the_code_is_once_its_limit_has_passed(handlers: None) -> None:
    signals.install()
    hold = signals.hold_sigterm(0.5)
    started = time.monotonic()
    with pytest.raises(signals.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # a blocking call: the expiry interrupts it
    hold.close()
    assert 0.5 <= time.monotonic() - started < 5


DEAF = """
import signal, subprocess, sys, time
from pathlib import Path
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1] == "parent":
    subprocess.Popen([sys.executable, __file__, "child", sys.argv[2]])
(Path(sys.argv[2]) / sys.argv[1]).touch()
time.sleep(60)
"""


def test_up_sigkills_a_process_group_that_outlives_the_grace_period(
    tmp_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "STOP_GRACE_SECONDS", 0.5)
    (tmp_path / "deaf.py").write_text(DEAF)  # ignores SIGTERM, and so does its child (same group)
    proc = processes.start([sys.executable, str(tmp_path / "deaf.py"), "parent", str(tmp_path)])
    deadline = time.monotonic() + 60
    while not ((tmp_path / "parent").exists() and (tmp_path / "child").exists()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    started = time.monotonic()
    runner._stop(proc, signal.SIGTERM)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - started < 10
    processes.assert_none_left(proc, timeout=1)


def test_up_records_the_stop_of_a_child_that_could_not_report_it(tmp_path: Path) -> None:
    res = parse_resource(yaml.safe_load(RUN.replace("STEPS", "10")), "run.yaml")
    FileStatusReporter(res, tmp_path).phase(Phase.RUNNING, "Started")
    runner._record_stop(res, "eval", tmp_path, signal.SIGTERM)  # not its own stage: the phase stays
    assert read_status(res.ARTIFACT_DIR, res.name, tmp_path)["phase"] == "Running"
    runner._record_stop(res, "train", tmp_path, signal.SIGTERM)
    status = read_status(res.ARTIFACT_DIR, res.name, tmp_path)
    assert status["phase"] == "Failed" and status["conditions"][0]["reason"] == "Terminated"
    assert "recorded by llmfab up" in status["message"]
