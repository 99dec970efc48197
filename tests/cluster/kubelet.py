"""A kubelet stand-in: runs the API server's Pods as local processes, the way a node would.

Each pod's first container runs in its own mount and UTS namespaces (``unshare``; the tests run as
root, as CI does), with the pod's hostname, where the pod's volumes appear at their ``mountPath``s: a PersistentVolumeClaim is a
host directory per claim, a ConfigMap its data written as files, an emptyDir a fresh directory.
``/etc/hosts`` gets the pod's ``<hostname>.<subdomain>.<namespace>.svc`` name (the kubelet writes
it so in real pods), environment variables are resolved (``value`` and the downward API's
``fieldRef``), and the pod's phase goes back through the API: ``Running``, then ``Succeeded`` or
``Failed`` with the container's exit code, which the Job controller reads, and the times the
operator's usage reads (``startTime``, ``startedAt``, ``finishedAt``).

Pods are bound to this node first (``pods/binding``, the scheduler's call), so the API server
deletes them gracefully ("Termination of Pods"): a pod being deleted keeps its
``deletionTimestamp`` while its process gets SIGTERM, then SIGKILL once the grace period has run
out (the ``deletionTimestamp``), and only when the process has exited does the kubelet report its
last phase and delete the pod for good (``gracePeriodSeconds: 0``, preconditioned on its uid).

What it does not do: images (the command runs with this checkout's interpreter, first on
``PATH``), users (``securityContext`` is not applied), resources, probes, and in-cluster
credentials (the workload reaches the API server through ``KUBECONFIG`` instead).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from llmfab.operator.kube import MERGE_PATCH, Kube

NODE = "local"  # the node this kubelet is
KUBELET_USER_AGENT = "kubelet/local"
FIELD_ANNOTATION = re.compile(r"metadata\.annotations\['([^']+)'\]")


def pod_hosts(pod: dict[str, Any]) -> tuple[str, list[tuple[str, list[str]]]]:
    """(hostname, /etc/hosts lines) of a pod. An Indexed Job's pods get ``<job>-<index>`` names;
    with a ``subdomain`` (a headless Service) cluster DNS resolves
    ``<job>-<index>.<subdomain>.<namespace>.svc`` to each pod's IP. Here pod ``i`` gets the
    loopback address ``127.0.0.<10+i>``, so each pod resolves its own name to its own address and
    the others' to theirs, as on separate nodes (indexes up to 31)."""
    meta, spec = pod["metadata"], pod["spec"]
    job = (meta.get("labels") or {}).get("batch.kubernetes.io/job-name")
    index = (meta.get("annotations") or {}).get("batch.kubernetes.io/job-completion-index")
    hostname = spec.get("hostname") or (f"{job}-{index}" if job and index is not None else meta["name"])
    lines: list[tuple[str, list[str]]] = [("127.0.0.1", ["localhost"]), ("::1", ["localhost"])]
    subdomain, ns = spec.get("subdomain"), meta.get("namespace", "default")
    if job and index is not None and subdomain:
        for i in range(32):
            name = f"{job}-{i}"
            lines.append((f"127.0.0.{10 + i}", [f"{name}.{subdomain}.{ns}.svc.cluster.local",
                                                f"{name}.{subdomain}.{ns}.svc", f"{name}.{subdomain}", name]))
    else:
        lines.append(("127.0.0.10", [hostname]))
    return hostname, lines


def resolve_env(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet computes it (values and downward-API fields)."""
    meta = pod["metadata"]
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        path = item["valueFrom"]["fieldRef"]["fieldPath"]
        if path == "metadata.name":
            env[item["name"]] = meta["name"]
        elif path == "metadata.namespace":
            env[item["name"]] = meta.get("namespace", "default")
        elif m := FIELD_ANNOTATION.fullmatch(path):
            env[item["name"]] = (meta.get("annotations") or {})[m.group(1)]
        else:
            raise ValueError(f"{meta['name']}: fieldRef {path} is not emulated")
    return env


class LocalKubelet:
    def __init__(self, kube: Kube, namespace: str, claims: dict[str, Path], workdir: Path,
                 kubeconfig: Path, extra_env: dict[str, str] | None = None) -> None:
        # Its own client and User-Agent: the API server's request log tells the kubelet's calls
        # (binding, pod status, pod deletion) from the operator's.
        self.kube = Kube(client.ApiClient(kube.api.configuration))
        self.kube.api.user_agent = KUBELET_USER_AGENT
        self.namespace, self.claims, self.workdir = namespace, claims, workdir
        self.kubeconfig = kubeconfig
        workdir.mkdir(parents=True, exist_ok=True)
        self.extra_env = extra_env or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.exit_codes: dict[str, int] = {}
        self.signalled: dict[str, signal.Signals] = {}  # the last signal sent to a pod being deleted
        self.started: dict[str, str] = {}  # pod name -> when its process started (RFC 3339)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubelet", daemon=True)

    def __enter__(self) -> LocalKubelet:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def log(self, pod_name: str) -> str:
        path = self.logs.get(pod_name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    # -- the loop: start new pods, report finished ones ------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as e:  # keep the kubelet alive; the test sees the pod not progressing
                self.errors.append(f"{type(e).__name__}: {e}")
                print(f"kubelet: {type(e).__name__}: {e}", file=sys.stderr)
            self._stop.wait(0.2)

    def _sync(self) -> None:
        status, data = self.kube.request("GET", f"/api/v1/namespaces/{self.namespace}/pods")
        pods = (data or {}).get("items") or [] if status == 200 else []
        names = set()
        for pod in pods:
            name = pod["metadata"]["name"]
            names.add(name)
            phase = (pod.get("status") or {}).get("phase", "Pending")
            if name not in self.procs and phase == "Pending" and not pod["metadata"].get("deletionTimestamp"):
                if pod["spec"].get("nodeName") not in (None, NODE) or not self._bind(name):
                    continue
                self.procs[name] = self._start(pod)
                self._report(name, "Running", None)
        for name, proc in list(self.procs.items()):
            if name not in names and proc.poll() is None:  # force-deleted: stop it as a kubelet would
                self._signal(name, proc, signal.SIGTERM)
            if proc.poll() is not None and name not in self.exit_codes:
                self.exit_codes[name] = proc.returncode
                if name in names:
                    self._report(name, "Succeeded" if proc.returncode == 0 else "Failed", proc.returncode)
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp") and pod["spec"].get("nodeName") == NODE:
                self._terminate(pod)

    def _bind(self, name: str) -> bool:
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}}
        status, _ = self.kube.request("POST", f"/api/v1/namespaces/{self.namespace}/pods/{name}/binding", binding)
        return status == 201

    def _terminate(self, pod: dict[str, Any]) -> None:
        """A pod being deleted: SIGTERM, SIGKILL past its grace period, and once its process has
        exited, the pod's removal from the API server."""
        meta = pod["metadata"]
        name, proc = meta["name"], self.procs.get(meta["name"])
        if proc is not None and proc.poll() is None:
            deadline = datetime.datetime.strptime(meta["deletionTimestamp"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.UTC)
            past = datetime.datetime.now(datetime.UTC) >= deadline
            self._signal(name, proc, signal.SIGKILL if past else signal.SIGTERM)
            return
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}
        self.kube.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{name}", body)

    def _signal(self, name: str, proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        if self.signalled.get(name) == sig:
            return
        self.signalled[name] = sig
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    def _report(self, name: str, phase: str, exit_code: int | None) -> None:
        """The pod's phase and its container's state, with the times a kubelet writes: the pod's
        ``startTime`` and the container's ``startedAt`` when it starts, ``finishedAt`` when it ends."""
        at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        started = self.started.setdefault(name, at)
        state: dict[str, Any] = {"running": {"startedAt": started}} if exit_code is None else {
            "terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                           "startedAt": started, "finishedAt": at}}
        body = {"status": {"phase": phase, "startTime": started,
                           "containerStatuses": [{"name": "workload", "state": state, "ready": exit_code is None}]}}
        self.kube.request("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{name}/status", body,
                          content_type=MERGE_PATCH)

    # -- running one pod -------------------------------------------------------------------------

    def _start(self, pod: dict[str, Any]) -> subprocess.Popen[bytes]:
        meta, spec = pod["metadata"], pod["spec"]
        name = meta["name"]
        root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.workdir))
        container = spec["containers"][0]
        sources: dict[str, Path] = {}
        memory: dict[str, str] = {}  # emptyDir medium Memory: a tmpfs of its size limit
        for volume in spec.get("volumes") or []:
            sources[volume["name"]] = self._volume(volume, root)
            empty = volume.get("emptyDir") or {}
            if empty.get("medium") == "Memory":
                memory[volume["name"]] = empty.get("sizeLimit", "64Mi").replace("i", "")
        script = ["set -e"]
        for mount in container.get("volumeMounts") or []:
            target = shlex.quote(mount["mountPath"])
            if mount["name"] in memory:
                script.append(f"mount -t tmpfs -o size={memory[mount['name']]} tmpfs {target}")
                continue
            host = sources[mount["name"]] / mount.get("subPath", "")
            host.mkdir(parents=True, exist_ok=True)
            script.append(f"mkdir -p {target} && mount --bind {shlex.quote(str(host))} {target}")
        hosts = root / "hosts"
        hostname, lines = pod_hosts(pod)
        hosts.write_text("".join(f"{ip} {' '.join(names)}\n" for ip, names in lines))
        script.append(f"mount --bind {shlex.quote(str(hosts))} /etc/hosts")
        script.append(f"hostname {shlex.quote(hostname)}")  # its own UTS namespace, as a pod has
        command = [*container.get("command", []), *container.get("args", [])]
        script.append("exec " + shlex.join(command))
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(root / "home"),
            "KUBECONFIG": str(self.kubeconfig),
            "HOSTNAME": hostname,
            "OMP_NUM_THREADS": "1",
            **self.extra_env,
            **resolve_env(container, pod),
        }
        (root / "home").mkdir()
        log = root / "log"
        self.logs[name] = log
        with log.open("wb") as out:
            return subprocess.Popen(
                ["unshare", "--mount", "--uts", "--propagation", "private", "bash", "-c", "\n".join(script)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=str(root),
            )

    def _volume(self, volume: dict[str, Any], root: Path) -> Path:
        if "persistentVolumeClaim" in volume:
            return self.claims[volume["persistentVolumeClaim"]["claimName"]]
        path = root / "volumes" / volume["name"]
        path.mkdir(parents=True)
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            status, cm = self.kube.request("GET", f"/api/v1/namespaces/{self.namespace}/configmaps/{name}")
            if status != 200:
                raise RuntimeError(f"configMap {name} not found (HTTP {status})")
            for key, text in (cm.get("data") or {}).items():
                (path / key).write_text(text)
        return path


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
