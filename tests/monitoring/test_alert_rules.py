"""The alert rules shipped in charts/llmfab/files/prometheus-rules.yaml, checked and unit-tested by
the real promtool (Debian's prometheus 2.42; scripts/install_prometheus.sh installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[1] / "charts" / "llmfab" / "files" / "prometheus-rules.yaml"
UNIT_TESTS = HERE / "prometheus-rules.test.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not on PATH: run scripts/install_prometheus.sh")
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=HERE)


def test_promtool_accepts_the_rule_file() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 3 rules found" in out.stdout


def test_alerts_fire_exactly_when_their_unit_tests_say() -> None:
    """TTFT SLO: a slow model fires after 10 minutes, a fast or idle one never; training stalled:
    only a run that stopped stepping while still exporting; reconcile errors above 10%."""
    out = promtool("test", "rules", str(UNIT_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_unit_tested_and_has_a_severity_summary_and_description() -> None:
    alerts = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tested = {t["alertname"] for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
              for t in case.get("alert_rule_test", [])}
    for rule in alerts:
        assert rule["alert"] in tested
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
