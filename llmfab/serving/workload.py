"""``llmfab serve run --spec FILE`` (InferenceService): quantize if asked, start vLLM, keep serving.

The serving image's entrypoint, and what ``llmfab up`` runs for an InferenceService. Steps:
quantize (in this process, only when the spec asks and ``model-4bit/`` is stale), check the port,
start ``python -m vllm.entrypoints.openai.api_server`` with the serving interpreter, wait for
``/health``, report ``url``/``readyReplicas``/``modelSizeBytes``, then forward SIGINT/SIGTERM to the
server and return when it exits. If the server dies during start-up, the tail of its log is the
error message. vLLM's output is teed into ``services/<name>/server.log`` and our stdout (pod logs).
With ``spec.feedback.enabled`` the human-feedback app (``feedback.py``) runs on a thread beside it,
from ready until the server stops, and ``feedbackUrl`` is reported.

With ``spec.autoscaling.minReplicas: 0`` (outside a cluster's server pod) the service scales to
zero here instead: the wake proxy (``wake_proxy.py``) holds the port from the start, vLLM runs on
a free loopback port only between a request and ``idleSeconds`` without one (``on_demand.py``),
the feedback app calls vLLM through the proxy, and ``status.scale`` follows Idle/Waking/Ready.

The serving interpreter: ``LLMFAB_SERVE_PYTHON``, else ``<repo>/.venv-serve/bin/python`` (the local
serving venv, ``scripts/setup_serve_venv.sh``), else this interpreter (the serving image, where vLLM
is installed beside llmfab).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from llmfab.api.common import Phase, utc_now
from llmfab.api.inference_service import InferenceService, ScaleStatus
from llmfab.errors import WorkloadError
from llmfab.serving.feedback import FeedbackApp, feedback_app
from llmfab.serving.on_demand import OnDemandServer, WakeSettings
from llmfab.serving.scale_metrics import ScaleMetrics
from llmfab.serving.vllm_args import (
    LaunchPlan,
    build_launch,
    client_host,
    detect_quantization,
    unservable_reason,
)
from llmfab.serving.wake_proxy import WakeProxy
from llmfab.signals import STOP_SIGNALS, stop_process_group
from llmfab.workload import WorkloadContext

SKIP_IF_COMPLETE = False
REPO = Path(__file__).resolve().parents[2]
LOG_NAME = "server.log"
TAIL_LINES = 40


def serving_python() -> str:
    env = os.environ.get("LLMFAB_SERVE_PYTHON")
    if env:
        return env
    local = REPO / ".venv-serve" / "bin" / "python"
    return str(local) if local.exists() else sys.executable


def has_gpu() -> bool:
    """``LLMFAB_SERVE_DEVICE=cpu|gpu`` decides; else whether torch sees CUDA (False if torch is absent)."""
    forced = os.environ.get("LLMFAB_SERVE_DEVICE")
    if forced:
        return forced.lower() in ("gpu", "cuda")
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Fail before starting vLLM (30 s and 3 GiB later) if something already listens on the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise WorkloadError(
                f"spec.server.port: {host}:{port} is already in use ({e.strerror}); stop whatever listens "
                "there (another `llmfab serve`?) or choose another spec.server.port"
            ) from e


class ServerProcess:
    """A vLLM server child: output teed to a log file (and stdout), last lines kept for errors."""

    def __init__(self, plan: LaunchPlan, log_path: Path, echo: bool = True) -> None:
        self.plan = plan
        self.log_path = log_path
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **plan.env}
        self.proc = subprocess.Popen(
            plan.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, errors="replace", start_new_session=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._pump, args=(self.proc.stdout, echo), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str] | None, echo: bool) -> None:
        assert stream is not None
        with self.log_path.open("a") as log:
            for line in stream:
                log.write(line)
                log.flush()
                self.tail.append(line.rstrip("\n"))
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()

    def tail_text(self) -> str:
        self._thread.join(timeout=2)
        return "\n".join(self.tail)

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 30.0) -> int:
        """Signal the server's process group and wait until all of it (vLLM's engine process too)
        has exited; SIGKILL what is left after ``grace`` seconds."""
        stop_process_group(self.proc.pid, sig, grace, self.proc.poll)
        return self.proc.wait()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_timeout() -> float:
    """How long vLLM may take to answer ``/health`` (``LLMFAB_SERVE_START_TIMEOUT``, default 600 s)."""
    return float(os.environ.get("LLMFAB_SERVE_START_TIMEOUT", "600"))


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now (vLLM behind the wake proxy)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(server: ServerProcess, base: str, timeout: float) -> None:
    """Poll ``/health`` until 200; raise WorkloadError with the log tail if the server dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.proc.poll()
        if code is not None:
            raise WorkloadError(
                f"vLLM exited with code {code} during start-up (full log: {server.log_path}); last lines:\n"
                f"{server.tail_text()}"
            )
        if http_ok(f"{base}/health"):
            return
        time.sleep(0.5)
    server.stop()
    raise WorkloadError(
        f"vLLM did not answer {base}/health within {timeout:.0f} s (full log: {server.log_path}); set "
        f"LLMFAB_SERVE_START_TIMEOUT to wait longer. Last lines:\n{server.tail_text()}"
    )


def model_to_serve(ctx: WorkloadContext) -> Path:
    """The directory vLLM loads: the 4-bit checkpoint (made now if missing/stale) or the bf16 export."""
    from llmfab.compress.quantize_workload import ensure_quantized, source_model_dir

    resource = ctx.resource
    assert isinstance(resource, InferenceService)
    model_dir = source_model_dir(ctx)
    if resource.spec.quantization.method == "none":
        return model_dir
    ctx.reporter.phase(Phase.RUNNING, "Quantizing", "W4A16 quantization")
    return ensure_quantized(ctx, model_dir)


def start_feedback(ctx: WorkloadContext, openai_url: str, completion_timeout: float = 120.0) -> FeedbackApp:
    """The human-feedback app (``spec.feedback``) on a thread of this process, beside vLLM."""
    resource = ctx.resource
    assert isinstance(resource, InferenceService)
    spec, server_spec = resource.spec.feedback, resource.spec.server
    prompts = ctx.resolve(spec.prompts) if spec.prompts else None
    model = server_spec.served_model_name or resource.name
    app = feedback_app(spec, ctx.out_dir, openai_url, model, server_spec.host, prompts, completion_timeout).start()
    print(f"{resource.key}: human feedback at {app.url} (votes in {app.store.path})", flush=True)
    return app


def in_server_pod() -> bool:
    """Whether this is one of a cluster's server pods, which the operator starts with
    ``LLMFAB_STATUS=off`` (several replicas, none reporting). There KEDA scales the Deployment and
    holds requests, and the operator writes ``status.replicas`` and ``status.scale``."""
    return os.environ.get("LLMFAB_STATUS") == "off"


def scales_to_zero_here(resource: InferenceService) -> bool:
    """Whether this process scales the service to zero itself: ``spec.autoscaling.minReplicas: 0``
    anywhere but in a cluster's server pod, which serves at once like any other."""
    a = resource.spec.autoscaling
    return a is not None and a.min_replicas == 0 and not in_server_pod()


@contextlib.contextmanager
def stop_signals(on_stop: Callable[[int], None]) -> Iterator[list[int]]:
    """SIGINT/SIGTERM call ``on_stop`` and are recorded in the yielded list (instead of raising
    where the code happens to be); the previous handlers come back afterwards."""
    requested: list[int] = []

    def handler(sig: int, _frame: Any) -> None:
        requested.append(sig)
        on_stop(sig)

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def print_ready(resource: InferenceService, url: str, what: str) -> None:
    model = resource.spec.server.served_model_name or resource.name
    print(
        f"{resource.key}: ready at {url} ({what})\n"
        f"  curl {url}/chat/completions -H 'Content-Type: application/json' -d "
        f"'{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
        flush=True,
    )


def run(ctx: WorkloadContext) -> None:
    """Entry point of ``llmfab serve run``: returns once the server has stopped after SIGINT/SIGTERM."""
    resource = ctx.resource
    assert isinstance(resource, InferenceService)
    server_spec = resource.spec.server
    local = not in_server_pod()
    if local:  # a previous run's, until this one says otherwise
        ctx.reporter.progress(scale=None, replicas=None)
    model_dir = model_to_serve(ctx)
    gpu = has_gpu()
    problem = unservable_reason(model_dir, gpu)
    if problem:
        raise WorkloadError(problem)
    check_port_free(server_spec.host, server_spec.port)
    if resource.spec.feedback.enabled:
        check_port_free(server_spec.host, resource.spec.feedback.port)
    autoscaling = resource.spec.autoscaling
    if autoscaling is not None and autoscaling.max_replicas > 1 and local:
        note = (f"spec.autoscaling.maxReplicas: {autoscaling.max_replicas} has no effect here: one machine runs "
                "one vLLM server (a cluster runs up to maxReplicas)")  # fmt: skip
        print(f"{resource.key}: {note}", flush=True)
        ctx.reporter.event("OneReplicaLocally", note)
    if scales_to_zero_here(resource):
        serve_on_demand(ctx, model_dir, gpu)
    else:
        serve_always_on(ctx, model_dir, gpu)


def serve_always_on(ctx: WorkloadContext, model_dir: Path, gpu: bool) -> None:
    """vLLM on ``spec.server.port`` from start to stop; SIGINT/SIGTERM are forwarded to it."""
    from llmfab.compress.quantize import weights_size

    resource = ctx.resource
    assert isinstance(resource, InferenceService)
    server_spec, feedback_spec = resource.spec.server, resource.spec.feedback
    plan = build_launch(
        server_spec, model_dir, resource.name, serving_python(), ctx.out_dir / "vllm-cache", gpu=gpu
    )
    base = plan.url.removesuffix("/v1")
    timeout = start_timeout()
    ctx.reporter.phase(Phase.RUNNING, "Starting", f"starting vLLM on {base} ({'GPU' if gpu else 'CPU'})")
    print(f"{resource.key}: starting vLLM: {' '.join(plan.argv)}", flush=True)
    server = ServerProcess(plan, ctx.out_dir / LOG_NAME)
    feedback = None
    try:
        with stop_signals(server.send) as stop_requested:
            try:
                wait_ready(server, base, timeout)
            except WorkloadError:
                if stop_requested:
                    server.stop()
                    return
                raise
            size = weights_size(model_dir)
            if feedback_spec.enabled:
                feedback = start_feedback(ctx, plan.url)
            # Under spec.autoscaling with minReplicas >= 1 a local server never scales: always Ready.
            scale = ({"scale": ScaleStatus(state="Ready", since=utc_now()).model_dump(mode="json", by_alias=True,
                      exclude_none=True), "replicas": 1} if resource.spec.autoscaling and not in_server_pod() else {})  # fmt: skip
            ctx.reporter.phase(
                Phase.RUNNING, "Serving", f"serving {plan.url}",
                url=plan.url, readyReplicas=1, modelSizeBytes=size, quantizedPath=str(model_dir)
                if plan.quantization else None, **({"feedbackUrl": feedback.url} if feedback else {}), **scale,
            )  # fmt: skip
            print_ready(resource, plan.url, f"{plan.quantization or 'unquantized'}, {size / 2**20:.1f} MiB")
            code = server.proc.wait()
            ctx.reporter.progress(readyReplicas=0, **({"replicas": 0, "scale": None} if scale else {}))
            if not stop_requested:
                raise WorkloadError(
                    f"vLLM exited unexpectedly with code {code} (full log: {server.log_path}); last lines:\n"
                    f"{server.tail_text()}"
                )
            print(f"{resource.key}: server stopped ({signal.Signals(stop_requested[0]).name})", flush=True)
    finally:
        if feedback is not None:
            feedback.stop()
        if server.proc.poll() is None:
            server.stop()


def serve_on_demand(ctx: WorkloadContext, model_dir: Path, gpu: bool) -> None:
    """Scale to zero on this machine: the wake proxy holds ``spec.server.port`` and starts vLLM, on
    a free port of 127.0.0.1, for the first request; it stops vLLM after ``idleSeconds`` without
    one. SIGINT/SIGTERM stop the proxy and vLLM."""
    from llmfab.compress.quantize import weights_size

    resource = ctx.resource
    assert isinstance(resource, InferenceService) and resource.spec.autoscaling is not None
    server_spec, feedback_spec, autoscaling = resource.spec.server, resource.spec.feedback, resource.spec.autoscaling
    served_name = server_spec.served_model_name or resource.name
    inner = server_spec.model_copy(update={"host": "127.0.0.1"})
    log_file, cache = ctx.out_dir / LOG_NAME, ctx.out_dir / "vllm-cache"

    def launch() -> tuple[ServerProcess, str]:
        plan = build_launch(inner, model_dir, resource.name, serving_python(), cache, gpu=gpu, port=free_port())
        print(f"{resource.key}: waking: starting vLLM: {' '.join(plan.argv)}", flush=True)
        return ServerProcess(plan, log_file), plan.url.removesuffix("/v1")

    url = f"http://{client_host(server_spec.host)}:{server_spec.port}/v1"

    # The proxy's thread reports each transition while this one reports the start: one writer at a
    # time, or a read-modify-write of the status file could undo the other's.
    reporting = threading.Lock()

    def on_change(scale: ScaleStatus, reason: str, message: str, warning: bool) -> None:
        with reporting:
            ctx.reporter.progress(
                scale=scale.model_dump(mode="json", by_alias=True, exclude_none=True), message=message,
                replicas=0 if scale.state == "Idle" else 1, readyReplicas=1 if scale.state == "Ready" else 0,
            )  # fmt: skip
            ctx.reporter.event(reason, message, "Warning" if warning else "Normal")
        print(f"{resource.key}: {scale.state}: {message}", flush=True)

    metrics = ScaleMetrics(served_name)
    settings = WakeSettings(idle_seconds=autoscaling.idle_seconds, start_timeout=start_timeout())
    server = OnDemandServer(launch, settings, metrics, on_change)
    proxy = WakeProxy(server, metrics, server_spec.host, server_spec.port, autoscaling.cold_start_timeout_seconds)
    stopped = threading.Event()
    feedback = None
    try:
        with stop_signals(lambda _sig: stopped.set()) as stop_requested:
            ctx.reporter.phase(
                Phase.RUNNING, "Serving", f"serving {url}: scaled to zero, the first request starts vLLM",
                replicas=0, readyReplicas=0, modelSizeBytes=weights_size(model_dir),
                quantizedPath=str(model_dir) if detect_quantization(model_dir) else None,
                scale=server.status.model_dump(mode="json", by_alias=True, exclude_none=True),
            )  # fmt: skip
            try:
                proxy.start()
            except OSError as e:
                raise WorkloadError(f"spec.server.port: the wake proxy cannot listen on {server_spec.host}:"
                                    f"{server_spec.port} ({e.strerror or e}); choose another port") from e  # fmt: skip
            if feedback_spec.enabled:  # its completions go through the proxy, so they wake the server too
                feedback = start_feedback(ctx, url, completion_timeout=autoscaling.cold_start_timeout_seconds + 120)
            with reporting:  # the URL once the proxy holds the port: what `llmfab up` waits for
                ctx.reporter.progress(url=url, **({"feedbackUrl": feedback.url} if feedback else {}))
            print_ready(resource, url, f"scaled to zero: vLLM starts on the first request and stops after "
                                       f"{autoscaling.idle_seconds} s without one")  # fmt: skip
            while not stopped.wait(0.5):
                if not proxy.alive():
                    raise WorkloadError(f"the wake proxy on {url} stopped unexpectedly; see the log above")
            print(f"{resource.key}: stopping ({signal.Signals(stop_requested[0]).name})", flush=True)
            if feedback is not None:
                feedback.stop()
                feedback = None
            proxy.stop()
            ctx.reporter.progress(readyReplicas=0, replicas=0, scale=None)
            print(f"{resource.key}: server stopped ({signal.Signals(stop_requested[0]).name})", flush=True)
    finally:
        if feedback is not None:
            feedback.stop()
        proxy.stop()
