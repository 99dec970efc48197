"""Every shell command in the docs is run by a test or by `make test`, or is named here as not run.

The commands are the lines of the fenced ```bash blocks of README.md and docs/*.md. Each must have an
entry in COVERAGE saying who runs it:

- ``here``: a test in this file runs it (in-process, with the CLI's real code);
- ``test``/``make``: another test or the Makefile runs it, and the entry quotes the line that does,
  which must be found in that file (so deleting that test or check fails this one);
- ``cluster``: it needs a real Kubernetes cluster (GPU nodes, the internet) and is not run here;
  the reason says why and what is run in its place;
- ``not run``: too slow for the suite; the reason says what is run instead.

A command added to the docs without an entry fails ``test_every_documented_command_is_covered``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmfab.api.crds import crd_filename
from llmfab.api.loading import KINDS, load_resources
from llmfab.cli import app

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

HERE = "here"
# command as written in the docs -> (who runs it, where, the line found there / the reason)
COVERAGE: dict[str, tuple[str, str, str]] = {
    "make test": ("make", ".ci/run", "make test"),
    "make quickstart": (
        "not run",
        "",
        "the full quickstart took 13.5 minutes on a 2-core AVX2 CPU (README); the suite runs its parts: "
        "kubectl apply of examples/quickstart.yaml (tests/kube/test_kubectl.py), llmfab up of the RLHF "
        "example with tiny shapes (tests/local/test_rlhf_pipeline.py)",
    ),
    ".venv/bin/llmfab validate -f examples/": (HERE, "test_validate_examples", ""),
    ".venv/bin/llmfab crds --out charts/llmfab/crds": (HERE, "test_crds_write_the_committed_files", ""),
    ".venv/bin/llmfab get": (HERE, "test_get_with_nothing_stored", ""),
    ".venv/bin/llmfab describe trainingrun tiny": (
        "test",
        "tests/local/test_cli.py",
        'described = llmfab("describe", "ltr", "tiny", home=tmp_path)',
    ),
    ".venv/bin/llmfab explain trainingrun.spec.model": (HERE, "test_explain_trainingrun_model", ""),
    ".venv/bin/llmfab card trainingrun tiny --check": (
        "test", "tests/local/test_model_cards.py", '"card", "ltr", "tiny", "--check"'),
    # The cluster install: no Kubernetes API server, GPU node or internet here (FACTS.md).
    "kubectl apply -f https://raw.githubusercontent.com/NVIDIA/k8s-device-plugin/v0.17.0/deployments/static/"
    "nvidia-device-plugin.yml": ("cluster", "", "NVIDIA's device plugin: needs the internet and GPU nodes"),
    "kubectl apply -f - <<<'{\"apiVersion\":\"node.k8s.io/v1\",\"kind\":\"RuntimeClass\",\"metadata\":"
    "{\"name\":\"nvidia\"},\"handler\":\"nvidia\"}'": (
        "cluster",
        "",
        "the runtime class names the NVIDIA container runtime of a real k3s GPU node",
    ),
    "helm install kps prometheus-community/kube-prometheus-stack -n monitoring --create-namespace": (
        "cluster",
        "",
        "a chart from the internet; the suite runs a real Prometheus instead (tests/serving/test_dashboards_live.py)",
    ),
    "helm install llmfab charts/llmfab -n llmfab --create-namespace "
    "--set monitoring.serviceMonitor.enabled=true --set monitoring.serviceMonitor.additionalLabels.release=kps "
    "--set monitoring.podMonitor.enabled=true --set monitoring.podMonitor.additionalLabels.release=kps": (
        "cluster",
        "",
        "helm cannot install into the test API server; tests/chart/test_chart.py renders the chart with the "
        "real helm (`helm install llmfab ... --dry-run=client`) and applies the result with kubectl",
    ),
    # KEDA for spec.autoscaling (docs/cluster.md): charts from the internet into a real cluster.
    "helm repo add kedacore https://kedacore.github.io/charts": (
        "cluster",
        "",
        "a chart repository on the internet; tests/cluster/test_autoscaling.py installs the two CRDs those "
        "charts add (vendored unmodified in tests/kube/third_party/) into the test API server instead",
    ),
    "helm install keda kedacore/keda --namespace keda --create-namespace": (
        "cluster",
        "",
        "KEDA's operator runs on a real cluster; tests/cluster/test_autoscaling.py installs its ScaledObject CRD "
        "into the test API server and plays its part (scaling the Deployment)",
    ),
    "helm install http-add-on kedacore/keda-add-ons-http --namespace keda": (
        "cluster",
        "",
        "the add-on's interceptor and scaler run on a real cluster; tests/cluster/test_autoscaling.py installs its "
        "InterceptorRoute CRD into the test API server and checks what the operator builds for it",
    ),
    # Kueue for spec.scheduling (docs/cluster.md, "Queueing with Kueue").
    "helm install kueue oci://registry.k8s.io/kueue/charts/kueue --version=0.19.2 --namespace kueue-system "
    "--create-namespace --wait --timeout 300s": (
        "cluster",
        "",
        "Kueue's controllers run on a real cluster; the suite installs Kueue v0.19.2's CRDs (vendored in "
        "tests/kube/third_party/) into the test API server and plays its Job integration (tests/kube/kueue.py)",
    ),
    "kubectl apply -f kueue-homelab.yaml": (
        "test",
        "tests/kube/test_kueue.py",
        'kubectl("apply", "-f", str(manifest))',
    ),
    "kubectl -n llmfab apply -f examples/cluster/": (
        "cluster",
        "",
        "the examples run on GPU nodes; they validate in test_validate_examples (examples/ is read recursively)",
    ),
    # The GPU check (docs/development.md): this kind of machine has no GPU.
    "make gpu-wheels": (
        "not run",
        "",
        "downloads from PyPI; tests/gpucheck/test_gpu_check.py checks that scripts/gpu_requirements.txt keeps "
        "pyproject's ranges and that scripts/gpu_wheels.txt pins what the lent GPU machines lack",
    ),
    "make gpu-check PYTHON=python3": (
        "not run",
        "",
        "needs an NVIDIA GPU; tests/gpucheck/test_gpu_check.py runs the script without one (arguments, the table, "
        "exit codes, time limits, its refusal without CUDA), tests/gpucheck/test_environment.py its virtualenv "
        "and tests/gpucheck/test_world_of_one.py its FSDP2 world of one on CPU",
    ),
    "python3 scripts/gpu_check.py --list": ("test", "tests/gpucheck/test_gpu_check.py", 'gpu_check.main(["--list"])'),
    "kubectl -n llmfab get lds,ltr,lis": (
        "cluster",
        "",
        "lists a real cluster's resources; tests/kube/test_kubectl.py runs `kubectl get trainingruns`/`ltr` "
        "against the test API server",
    ),
}


def _commands(text: str) -> list[str]:
    """The commands of every ```bash block: comments dropped, continuation lines joined."""
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        pending = ""
        for raw in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", raw).strip()
            if line.startswith("#") or not line:
                continue
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            commands.append(" ".join((pending + line).split()))
            pending = ""
        assert not pending, f"a ```bash block ends in a continuation: {pending!r}"
    return commands


def documented_commands() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for command in _commands(doc.read_text()):
            found.setdefault(command, []).append(str(doc.relative_to(REPO)))
    return found


def test_the_extractor_joins_continuations_and_drops_comments() -> None:
    text = "x\n```bash\n# a comment\nhelm install a \\\n  --set b=1   # why\nmake test\n```\n```\nnot bash\n```\n"
    assert _commands(text) == ["helm install a --set b=1", "make test"]


def test_the_docs_have_commands() -> None:
    found = documented_commands()
    assert "make test" in found and "make quickstart" in found, found


def test_every_documented_command_is_covered() -> None:
    missing = {c: docs for c, docs in documented_commands().items() if c not in COVERAGE}
    assert not missing, (
        "commands in the docs that no test runs; run each in a test (or a `make test` check) and add it "
        f"to COVERAGE in {Path(__file__).name}, or mark it cluster-only there with the reason: {missing}"
    )


def test_no_stale_coverage_entries() -> None:
    stale = sorted(set(COVERAGE) - set(documented_commands()))
    assert not stale, f"COVERAGE names commands no doc shows any more: {stale}"


@pytest.mark.parametrize("command", sorted(COVERAGE))
def test_each_entry_names_a_runner_that_exists(command: str) -> None:
    who, where, what = COVERAGE[command]
    if who == HERE:
        assert callable(globals().get(where)) and where.startswith("test_"), (command, where)
    elif who in ("test", "make"):
        path = REPO / where
        assert path.is_file(), (command, where)
        assert what in path.read_text(), f"{where} no longer runs {command!r} (looked for {what!r})"
    else:
        assert who in ("cluster", "not run") and what, (command, "give the reason it is not run here")


def _llmfab(command: str, *replace: tuple[str, str]) -> list[str]:
    args = shlex.split(command)
    assert args[0] == ".venv/bin/llmfab", command
    args = args[1:]
    for old, new in replace:
        args = [new if a == old else a for a in args]
    return args


def test_validate_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, _llmfab(".venv/bin/llmfab validate -f examples/"))
    assert result.exit_code == 0, result.output
    cluster = load_resources([REPO / "examples" / "cluster"])  # what `kubectl apply -f examples/cluster/` sends
    assert cluster and all(f"valid: {res.key}" in result.output for res in cluster), result.output


def test_crds_write_the_committed_files(tmp_path: Path) -> None:
    """The documented regeneration, written to a temporary folder instead of the chart's."""
    out = tmp_path / "crds"
    args = _llmfab(".venv/bin/llmfab crds --out charts/llmfab/crds", ("charts/llmfab/crds", str(out)))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for cls in KINDS.values():
        name = crd_filename(cls)
        assert (out / name).read_text() == (REPO / "charts/llmfab/crds" / name).read_text(), name


def test_get_with_nothing_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMFAB_HOME", str(tmp_path))
    result = CliRunner().invoke(app, _llmfab(".venv/bin/llmfab get"))
    assert result.exit_code == 0, result.output
    assert "No resources found" in result.output


def test_explain_trainingrun_model() -> None:
    result = CliRunner().invoke(app, _llmfab(".venv/bin/llmfab explain trainingrun.spec.model"))
    assert result.exit_code == 0, result.output
    assert "FIELD:    spec.model <object>" in result.output and "hidden" in result.output
