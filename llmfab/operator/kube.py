"""The few API calls the operator makes, over the ``kubernetes`` client's authenticated REST layer.

A table of the kinds the builders emit gives each its URL, so no discovery round-trip precedes a
call. ``apply`` is create-or-patch and therefore idempotent: an operator restarted mid-reconcile
finds what it created (409 on create) and creates nothing twice. Jobs are named per generation and
their pod template is immutable, so an existing Job is left as it is; only explicit patches (e.g.
``spec.suspend``) change one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import kopf
from kubernetes import client, config

from llmfab import __version__
from llmfab.api import KINDS
from llmfab.api.common import Resource

Manifest = dict[str, Any]

PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitors",
    ("ray.io/v1", "RayJob"): "rayjobs",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("http.keda.sh/v1beta1", "InterceptorRoute"): "interceptorroutes",
    ("kueue.x-k8s.io/v1beta2", "Workload"): "workloads",
    ("kueue.x-k8s.io/v1beta1", "Workload"): "workloads",
    **{("llmfab.dev/v1alpha1", cls.KIND): cls.PLURAL for cls in KINDS.values()},
}
# Named per generation and never changed once created (a Job's pod template is immutable).
IMMUTABLE_ONCE_CREATED = {("batch/v1", "Job"), ("ray.io/v1", "RayJob"), ("v1", "ConfigMap")}
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status


def load_config() -> None:
    """In a pod: its ServiceAccount; elsewhere: ``$KUBECONFIG`` / ``~/.kube/config``."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, not at import


def contains(actual: Any, wanted: Any) -> bool:
    """Whether ``actual`` already has every field of ``wanted`` (servers add defaults and status)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(contains(actual.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (isinstance(actual, list) and len(actual) == len(wanted)
                and all(contains(a, w) for a, w in zip(actual, wanted, strict=True)))
    return bool(actual == wanted)


def without_nulls(manifest: Any) -> Any:
    """A manifest is also the merge patch of what exists, where ``null`` removes a field (a label
    a resource no longer asks for); a new object simply lacks it."""
    if isinstance(manifest, dict):
        return {k: without_nulls(v) for k, v in manifest.items() if v is not None}
    if isinstance(manifest, list):
        return [without_nulls(v) for v in manifest]
    return manifest


def path_for(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = f"/namespaces/{namespace}" if namespace else ""
    return f"{base}{ns}/{plural}" + (f"/{name}" if name else "")


USER_AGENT = f"llmfab-operator/{__version__}"


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the same client configuration the operator's own calls use, so
    kopf's watches and the reconciler's writes go to one server as one identity."""
    token = (configuration.api_key or {}).get("authorization", "") or (configuration.api_key or {}).get("BearerToken", "")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        token=token.removeprefix("Bearer ").strip() or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class Kube:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.api = api or client.ApiClient()
        self.api.user_agent = USER_AGENT

    def request(self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
                content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, h, b, _ = self.api.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(m, url, header_params=h, body=b)
        raw = resp.read()
        data = json.loads(raw) if raw else None
        return resp.status, data

    def _ok(self, status: int, data: Any, what: str) -> Any:
        if status >= 400:
            raise ApiError(status, json.dumps(data) if data is not None else "", what)
        return data

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        status, data = self.request("GET", path_for(api_version, kind, namespace, name))
        if status == 404:
            return None
        result: dict[str, Any] = self._ok(status, data, f"get {kind}/{name}")
        return result

    def list(self, api_version: str, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        status, data = self.request("GET", path_for(api_version, kind, namespace), query={"labelSelector": selector})
        if status == 404:  # the kind is not installed (e.g. no KubeRay)
            return []
        items = self._ok(status, data, f"list {kind}")["items"]
        for item in items:  # list items carry no kind/apiVersion
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return list(items)

    def apply(self, manifest: Manifest) -> dict[str, Any]:
        """Make ``manifest`` exist: create it, or merge-patch what differs (nothing when nothing
        does); a kind in :data:`IMMUTABLE_ONCE_CREATED` is left as it is."""
        api_version, kind, meta = manifest["apiVersion"], manifest["kind"], manifest["metadata"]
        namespace, what = meta.get("namespace"), f"{kind}/{meta['name']}"
        existing = None
        if (api_version, kind) not in IMMUTABLE_ONCE_CREATED:
            existing = self.get(api_version, kind, namespace, meta["name"])
            if existing is not None:
                return existing if contains(existing, manifest) else self.patch(manifest)
        status, data = self.request("POST", path_for(api_version, kind, namespace), without_nulls(manifest))
        if status == 409 and (api_version, kind) in IMMUTABLE_ONCE_CREATED:
            return {}
        if status == 409:  # created meanwhile by another pass
            return self.patch(manifest)
        result: dict[str, Any] = self._ok(status, data, f"create {what}")
        return result

    def patch(self, manifest: Manifest) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = path_for(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        status, data = self.request("PATCH", path, manifest, content_type=MERGE_PATCH)
        result: dict[str, Any] = self._ok(status, data, f"patch {manifest['kind']}/{meta['name']}")
        return result

    def delete(self, obj: dict[str, Any], propagation: str = "Background") -> bool:
        """Delete ``obj``; False where it was already gone (404)."""
        meta = obj["metadata"]
        path = path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        status, data = self.request("DELETE", path, body)
        if status == 404:
            return False
        self._ok(status, data, f"delete {obj['kind']}/{meta['name']}")
        return True

    def patch_status(self, res: Resource, fields: dict[str, Any]) -> None:
        path = path_for(res.api_version, res.KIND, res.metadata.namespace, res.name) + "/status"
        status, data = self.request("PATCH", path, {"status": fields}, content_type=MERGE_PATCH)
        self._ok(status, data, f"patch {res.key}/status")

    def resources_served(self, api_version: str) -> set[str]:
        """Discovery: the resources (plurals, subresources as ``plural/sub``) of e.g.
        ``keda.sh/v1alpha1``; empty where the cluster does not serve that group version."""
        status, data = self.request("GET", f"/apis/{api_version}")
        if status != 200 or not isinstance(data, dict):
            return set()
        return {str(r.get("name")) for r in data.get("resources") or []}

    def group_version_served(self, api_version: str) -> bool:
        """Discovery: whether the cluster serves e.g. ``monitoring.coreos.com/v1``."""
        status, _ = self.request("GET", f"/apis/{api_version}")
        return status == 200
