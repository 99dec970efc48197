"""A real Prometheus server (Debian's ``prometheus`` 2.42) on loopback, for the dashboard tests.

``scripts/install_prometheus.sh`` installs it; the tests start it with their own configuration and
storage directory and stop it at the end. ``promtool check config`` checks the configuration first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import free_port


def requires_prometheus() -> tuple[str, str]:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prometheus and promtool):
        pytest.fail("prometheus/promtool not on PATH: run scripts/install_prometheus.sh")
    return prometheus, promtool


def write_config(path: Path, jobs: dict[str, str], scrape_seconds: float, rule_files: list[Path]) -> Path:
    """One static target per job (``job name → host:port``)."""
    config = {
        "global": {"scrape_interval": f"{scrape_seconds:g}s", "scrape_timeout": f"{scrape_seconds:g}s",
                   "evaluation_interval": f"{scrape_seconds:g}s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}
                           for job, target in jobs.items()],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def prometheus_server(config: Path, data_dir: Path) -> Iterator[str]:
    """``prometheus`` on a free loopback port; yields its base URL once ``/-/ready`` answers."""
    prometheus, promtool = requires_prometheus()
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, f"promtool check config {config}:\n{check.stdout}{check.stderr}"
    port = free_port()
    log = data_dir.parent / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def api(url: str, path: str, **params: Any) -> Any:
    query = urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=30) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]


def instant(url: str, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = api(url, "query", query=expr)["result"]
    return result


def wait_for(url: str, expr: str, what: str, timeout: float = 120) -> list[dict[str, Any]]:
    """Poll an instant query until it returns a sample."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := instant(url, expr):
            return result
        time.sleep(0.5)
    pytest.fail(f"{what}: `{expr}` returned nothing for {timeout:.0f} s")
