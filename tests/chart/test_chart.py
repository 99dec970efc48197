"""The Helm chart with the real helm 4.3: lint, render for every documented values file, validate
every manifest offline, refuse bad values, and install as a user would (rendered manifests applied
to the test API server with the real kubectl, then the operator configured from the rendered
Deployment reconciles a resource under the rendered ClusterRole)."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmfab.api.crds import crd_filename
from llmfab.api.loading import KINDS
from llmfab.operator import rbac
from llmfab.operator.kube import USER_AGENT
from llmfab.operator.settings import OperatorSettings
from llmfab.usage import Prices
from tests.cluster.kubelet import wait_for
from tests.cluster.operator_runner import run_operator
from tests.cluster.test_operator import DATASET, rbac_call
from tests.kube.apiserver import KubeAPIServer
from tests.kube.conftest import TOOLS

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "llmfab"
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
K8S_VERSION = "1.33"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not (TOOLS / "helm").exists():
        subprocess.run([str(REPO / "scripts" / "install_kube_tools.sh"), str(TOOLS)], check=True)
    out = subprocess.run([str(TOOLS / "helm"), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def render(*args: str) -> list[dict[str, Any]]:
    out = helm("template", "llmfab", str(CHART), "--namespace", "llmfab", *args)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    [deployment] = by_kind(docs, "Deployment")
    return {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_helm_lint_strict_passes() -> None:
    assert "0 chart(s) failed" in helm("lint", "--strict", str(CHART)).stdout


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_every_documented_values_file_renders_valid_manifests(values: Path) -> None:
    docs = render("-f", str(values))
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Role", "RoleBinding"} <= {d["kind"] for d in docs}
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            assert doc["spec"], doc  # no schema offline for the Prometheus operator's kinds
            continue
        kubernetes_validate.validate(copy.deepcopy(doc), K8S_VERSION, strict=True)
    # The operator's settings parse (an unknown or malformed variable would stop it at start-up).
    settings = OperatorSettings.from_env(operator_env(docs))
    assert settings.trainer_image.startswith("ghcr.io/llmfab/trainer:")


def test_the_crds_are_the_generated_ones_and_valid() -> None:
    for cls in KINDS.values():
        crd = yaml.safe_load((CHART / "crds" / crd_filename(cls)).read_text())
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


def test_a_typo_in_values_fails_the_install() -> None:
    out = helm("template", "x", str(CHART), "--set", "operator.replicass=2", check=False)
    assert out.returncode != 0 and "additional properties 'replicass' not allowed" in out.stderr
    out = helm("template", "x", str(CHART), "--set", "artifacts.accessMode=ReadWriteSometimes", check=False)
    assert out.returncode != 0 and "accessMode" in out.stderr


def test_cost_values_become_the_operators_prices_and_a_price_needs_a_currency() -> None:
    docs = render("-f", str(CHART / "ci" / "shared-cluster-values.yaml"))
    cost = OperatorSettings.from_env(operator_env(docs)).cost
    assert (cost.currency, cost.price_per_gpu_hour, cost.price_per_kwh, cost.watts_per_gpu) == ("EUR", 0.8, 0.3, 350)
    assert cost.watts_per_cpu is None
    assert OperatorSettings.from_env(operator_env(render())).cost == Prices()  # the default: no price, no cost
    out = helm("template", "x", str(CHART), "--set", "cost.pricePerKwh=0.3", check=False)
    assert out.returncode != 0 and "/cost/currency" in out.stderr
    set_on_the_command_line = render("--set", "cost.pricePerKwh=0.3", "--set", "cost.currency=EUR")  # "0.3": a string
    assert OperatorSettings.from_env(operator_env(set_on_the_command_line)).cost.price_per_kwh == 0.3


def test_multi_node_training_on_a_read_write_once_claim_is_refused() -> None:
    out = helm("template", "x", str(CHART), "--set", "training.maxNodes=2", check=False)
    assert out.returncode != 0 and "training.maxNodes=2 needs artifacts.accessMode=ReadWriteMany" in out.stderr
    docs = render("--set", "training.maxNodes=2", "--set", "artifacts.accessMode=ReadWriteMany")
    assert operator_env(docs)["LLMFAB_OPERATOR_MAX_NODES"] == "2"
    assert operator_env(render())["LLMFAB_OPERATOR_MAX_NODES"] == "1"


def test_rendered_rbac_is_exactly_the_operators_and_workloads_rules() -> None:
    docs = render()
    [cluster_role] = by_kind(docs, "ClusterRole")
    assert cluster_role["rules"] == rbac.operator_rules()
    [role] = by_kind(docs, "Role")
    assert role["rules"] == rbac.workload_rules()
    assert role["metadata"]["namespace"] == "llmfab"
    namespaced = render("-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert sorted(b["metadata"]["namespace"] for b in by_kind(namespaced, "RoleBinding")
                  if b["roleRef"]["kind"] == "ClusterRole") == ["ml", "research"]
    [_, cluster_only] = by_kind(namespaced, "ClusterRole")
    assert cluster_only["rules"] == rbac.cluster_scoped(rbac.operator_rules())
    assert {r["metadata"]["namespace"] for r in by_kind(namespaced, "Role")} == {"ml", "research"}
    assert not by_kind(namespaced, "PersistentVolumeClaim")  # existingClaim
    assert operator_env(namespaced)["LLMFAB_OPERATOR_NAMESPACES"] == "ml,research"
    assert operator_env(namespaced)["LLMFAB_OPERATOR_ARTIFACTS_CLAIM"] == "shared-models"


def test_the_rules_file_is_generated() -> None:
    assert (CHART / "files" / "rbac-rules.yaml").read_text() == rbac.render_rules()


def test_monitoring_values_label_monitors_for_kube_prometheus_stack() -> None:
    docs = render("-f", str(CHART / "ci" / "kube-prometheus-stack-values.yaml"))
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        [monitor] = by_kind(docs, kind)
        assert monitor["metadata"]["labels"]["release"] == "kps", kind
    assert json.loads(operator_env(docs)["LLMFAB_OPERATOR_SERVICE_MONITOR_LABELS"]) == {"release": "kps"}
    [rule] = by_kind(docs, "PrometheusRule")
    shipped = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())["groups"]
    assert rule["spec"]["groups"] == shipped
    dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(name for d in dashboards for name in d["data"]) == sorted(
        p.name for p in (CHART / "dashboards").glob("*.json"))
    for d in dashboards:
        for text in d["data"].values():
            assert json.loads(text)["uid"]


def test_notes_tell_the_next_commands_and_warn_about_the_release_label() -> None:
    out = helm("install", "llmfab", str(CHART), "-n", "llmfab", "--dry-run=client",
               "--set", "monitoring.serviceMonitor.enabled=true").stdout
    notes = out[out.index("NOTES:"):]
    assert "kubectl -n llmfab apply -f examples/cluster/" in notes
    assert "get inferenceservice NAME -o jsonpath='{.status.url}'" in notes
    assert "release: <its release name>" in notes


def test_installed_as_a_user_would_the_operator_reconciles_under_the_charts_rbac(
    kube_apiserver: KubeAPIServer, kube: Any, kubectl: Any, tmp_path: Path
) -> None:
    """helm cannot install into the emulator (it stores releases as protobuf Secrets), so: render,
    `kubectl apply` the result, then run the operator exactly as the rendered Deployment would."""
    manifests = tmp_path / "rendered.yaml"  # what `helm install -n llmfab --create-namespace` sends
    namespace = "apiVersion: v1\nkind: Namespace\nmetadata: {name: llmfab}\n---\n"
    manifests.write_text(namespace + helm("template", "llmfab", str(CHART), "--namespace", "llmfab").stdout)
    out = kubectl("apply", "-f", str(manifests))
    assert "deployment.apps/llmfab-operator created" in out.stdout, out.stdout
    docs = [d for d in yaml.safe_load_all(manifests.read_text()) if d]
    env = operator_env(docs)
    settings = OperatorSettings.from_env(env).model_copy(update={"resync_seconds": 0.3})
    dataset = copy.deepcopy(DATASET)
    dataset["metadata"]["namespace"] = "llmfab"
    with run_operator(kube, settings):
        kube_apiserver.create(dataset)
        [job] = wait_for(lambda: kube_apiserver.items("jobs", namespace="llmfab"), 20, "the Dataset's Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == kube_apiserver.read("serviceaccounts", "llmfab-workload", "llmfab")["metadata"]["name"]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert kube_apiserver.read("persistentvolumeclaims", claim, "llmfab")
    assert pod["containers"][0]["image"] == env["LLMFAB_OPERATOR_TRAINER_IMAGE"]
    rendered_rules = by_kind(docs, "ClusterRole")[0]["rules"]
    calls = {rbac_call(r) for r in kube_apiserver.request_log
             if r.resource and r.user_agent.startswith(("kopf/", USER_AGENT))}
    assert calls and {c for c in calls if not rbac.allows(rendered_rules, *c)} == set()


def test_the_chart_version_is_llmfabs_so_empty_image_tags_name_the_built_images() -> None:
    from llmfab import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    docs = render()
    [deployment] = by_kind(docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/llmfab/operator:{__version__}"
    assert operator_env(docs)["LLMFAB_OPERATOR_SERVING_IMAGE"] == OperatorSettings().serving_image
    assert operator_env(docs)["LLMFAB_OPERATOR_TRAINER_IMAGE"] == OperatorSettings().trainer_image


def test_the_pod_policy_and_the_volumes_access_mode_reach_the_operator() -> None:
    """Issue 19: podPolicy allow-lists and artifacts.accessMode become the operator's settings;
    by default they restrict nothing."""
    default = OperatorSettings.from_env(operator_env(render()))
    assert default.allowed_images == default.allowed_claims == default.allowed_toleration_keys == ["*"]
    assert default.artifacts_access_mode == "ReadWriteOnce"
    shared = OperatorSettings.from_env(operator_env(render("-f", str(CHART / "ci" / "shared-cluster-values.yaml"))))
    assert shared.allowed_images == ["ghcr.io/llmfab/*"] and shared.allowed_runtime_classes == ["nvidia"]
    assert shared.allowed_priority_classes == [] and shared.allowed_claims == ["llmfab-*"]
    assert shared.allowed_toleration_keys == ["nvidia.com/gpu"]
    nfs = OperatorSettings.from_env(operator_env(render("-f", str(CHART / "ci" / "nfs-multinode-values.yaml"))))
    assert nfs.artifacts_access_mode == "ReadWriteMany"
    out = helm("template", "x", str(CHART), "--set", "podPolicy.allowedClaims=null", check=False)
    assert out.returncode != 0 and "allowedClaims" in out.stderr  # removing a list is no "allow all"


def test_the_chart_creates_a_feedback_token_secret_in_each_workload_namespace() -> None:
    assert not by_kind(render(), "Secret")  # off by default
    docs = render("--set", "feedbackToken.create=true", "--set", "workloads.namespaces={team-a,team-b}")
    secrets = by_kind(docs, "Secret")
    assert [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in secrets] == [
        ("team-a", "llmfab-feedback-token"), ("team-b", "llmfab-feedback-token")]
    tokens = [base64.b64decode(s["data"]["token"]).decode() for s in secrets]
    assert all(len(t) == 32 and t.isalnum() for t in tokens) and tokens[0] != tokens[1]
    assert secrets[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for secret in secrets:
        kubernetes_validate.validate(copy.deepcopy(secret), K8S_VERSION, strict=True)
    given = by_kind(render("--set", "feedbackToken.create=true", "--set", "feedbackToken.token=s3cret"), "Secret")
    assert base64.b64decode(given[0]["data"]["token"]) == b"s3cret"


def test_the_keda_values_reach_the_operator() -> None:
    """Issue 21: autoscaling.keda.* become the operator's settings; the defaults are the names the
    kedacore/keda-add-ons-http chart gives its Services in namespace keda."""
    default = OperatorSettings.from_env(operator_env(render()))
    assert default.keda_enabled and default.keda_prometheus_address is None
    assert (default.keda_interceptor_service, default.keda_interceptor_namespace, default.keda_interceptor_port) == (
        "keda-add-ons-http-interceptor-proxy", "keda", 8080)
    assert default.keda_scaler_address == "keda-add-ons-http-external-scaler.keda:9090"
    set_ = render("--set", "autoscaling.keda.enabled=false", "--set", "autoscaling.keda.interceptor.namespace=http",
                  "--set", "autoscaling.keda.interceptor.port=9080",
                  "--set", "autoscaling.keda.prometheusAddress=http://prometheus-operated.monitoring.svc:9090",
                  "--set", "autoscaling.keda.clusterDomain=homelab.internal")
    settings = OperatorSettings.from_env(operator_env(set_))
    assert not settings.keda_enabled and settings.keda_interceptor_namespace == "http"
    assert settings.keda_interceptor_port == 9080 and settings.cluster_domain == "homelab.internal"
    assert settings.keda_prometheus_address == "http://prometheus-operated.monitoring.svc:9090"
    out = helm("template", "x", str(CHART), "--set", "autoscaling.keda.scalerAddress=scaler.keda", check=False)
    assert out.returncode != 0 and "scalerAddress" in out.stderr  # host:port


def test_kueue_default_requests_reach_the_operator() -> None:
    """Issue 22: what a queued container requests when its spec names no CPU or memory (Kueue
    admits by requests) is the chart's kueue.defaultRequests; a misspelt resource fails the install."""
    assert OperatorSettings.from_env(operator_env(render())).kueue_default_requests == {"cpu": "1", "memory": "2Gi"}
    set_ = render("--set", "kueue.defaultRequests.cpu=500m", "--set-string", "kueue.defaultRequests.memory=8Gi")
    assert OperatorSettings.from_env(operator_env(set_)).kueue_default_requests == {"cpu": "500m", "memory": "8Gi"}
    out = helm("template", "x", str(CHART), "--set", "kueue.defaultRequests.gpu=1", check=False)
    assert out.returncode != 0 and "defaultRequests" in out.stderr
