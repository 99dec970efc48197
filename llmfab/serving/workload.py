"""``llmfab serve run --spec FILE`` (InferenceService): quantize if asked, start vLLM, keep serving.

The serving image's entrypoint, and what ``llmfab up`` runs for an InferenceService. Steps:
quantize (in this process, only when the spec asks and ``model-4bit/`` is stale), check the port,
start ``python -m vllm.entrypoints.openai.api_server`` with the serving interpreter, wait for
``/health``, report ``url``/``readyReplicas``/``modelSizeBytes``, then forward SIGINT/SIGTERM to the
server and return when it exits. If the server dies during start-up, the tail of its log is the
error message. vLLM's output is teed into ``services/<name>/server.log`` and our stdout (pod logs).
With ``spec.feedback.enabled`` the human-feedback app (``feedback.py``) runs on a thread beside it,
from ready until the server stops, and ``feedbackUrl`` is reported.

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
from pathlib import Path
from typing import IO, Any

from llmfab.api.common import Phase
from llmfab.api.inference_service import InferenceService
from llmfab.errors import WorkloadError
from llmfab.serving.feedback import FeedbackApp, feedback_app
from llmfab.serving.vllm_args import LaunchPlan, build_launch, unservable_reason
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
        """Signal the server's process group; SIGKILL after ``grace`` seconds."""
        self.send(sig)
        try:
            return self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            return self.proc.wait()


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


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


def start_feedback(ctx: WorkloadContext, openai_url: str) -> FeedbackApp:
    """The human-feedback app (``spec.feedback``) on a thread of this process, beside vLLM."""
    resource = ctx.resource
    assert isinstance(resource, InferenceService)
    spec, server_spec = resource.spec.feedback, resource.spec.server
    prompts = ctx.resolve(spec.prompts) if spec.prompts else None
    model = server_spec.served_model_name or resource.name
    app = feedback_app(spec, ctx.out_dir, openai_url, model, server_spec.host, prompts).start()
    print(f"{resource.key}: human feedback at {app.url} (votes in {app.store.path})", flush=True)
    return app


def run(ctx: WorkloadContext) -> None:
    """Entry point of ``llmfab serve run``: returns once the server has stopped after SIGINT/SIGTERM."""
    from llmfab.compress.quantize import weights_size

    resource = ctx.resource
    assert isinstance(resource, InferenceService)
    server_spec = resource.spec.server
    model_dir = model_to_serve(ctx)
    gpu = has_gpu()
    problem = unservable_reason(model_dir, gpu)
    if problem:
        raise WorkloadError(problem)
    check_port_free(server_spec.host, server_spec.port)
    feedback_spec = resource.spec.feedback
    if feedback_spec.enabled:
        check_port_free(server_spec.host, feedback_spec.port)
    plan = build_launch(
        server_spec, model_dir, resource.name, serving_python(), ctx.out_dir / "vllm-cache", gpu=gpu
    )
    base = plan.url.removesuffix("/v1")
    timeout = float(os.environ.get("LLMFAB_SERVE_START_TIMEOUT", "600"))
    ctx.reporter.phase(Phase.RUNNING, "Starting", f"starting vLLM on {base} ({'GPU' if gpu else 'CPU'})")
    print(f"{resource.key}: starting vLLM: {' '.join(plan.argv)}", flush=True)
    server = ServerProcess(plan, ctx.out_dir / LOG_NAME)

    stop_requested: list[int] = []

    def forward(sig: int, _frame: Any) -> None:
        stop_requested.append(sig)
        server.send(sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    feedback = None
    try:
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
        ctx.reporter.phase(
            Phase.RUNNING, "Serving", f"serving {plan.url}",
            url=plan.url, readyReplicas=1, modelSizeBytes=size, quantizedPath=str(model_dir)
            if plan.quantization else None, **({"feedbackUrl": feedback.url} if feedback else {}),
        )  # fmt: skip
        print(
            f"{resource.key}: ready at {plan.url} ({plan.quantization or 'unquantized'}, {size / 2**20:.1f} MiB)\n"
            f"  curl {plan.url}/chat/completions -H 'Content-Type: application/json' -d "
            f"'{{\"model\": \"{server_spec.served_model_name or resource.name}\", "
            f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
            flush=True,
        )
        code = server.proc.wait()
        while code is None:  # pragma: no cover - wait() returns the code
            code = server.proc.wait()
        ctx.reporter.progress(readyReplicas=0)
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
        for s, h in previous.items():
            signal.signal(s, h)
