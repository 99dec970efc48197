"""A stand-in for kube-controller-manager's Deployment controller, enough for a server Deployment
scaled by hand, by ``kubectl scale`` or by an autoscaler.

What it does follows kubernetes.io/docs/concepts/workloads/controllers/deployment/ ("Scaling a
Deployment", "Deployment status"): a Deployment keeps ``spec.replicas`` pods of its template (the
API server defaults it to 1); scaling down removes pods that are not ready first, then the newest;
a changed template replaces the pods of the old one. ``status`` carries ``observedGeneration``,
``replicas`` (pods not being deleted), ``updatedReplicas`` (of the current template),
``readyReplicas`` and ``availableReplicas`` (pods whose ``Ready`` condition is True; no
``minReadySeconds``), omitted when zero as the API's ``omitempty`` does.

Simplified: the pods are owned by the Deployment itself, not by a ReplicaSet between them, and
named ``<deployment>-<template hash>-<suffix>`` with the ``pod-template-hash`` label a ReplicaSet
would give them; a new template replaces every old pod at once (no surge or unavailability
budget), and there are no ``Progressing``/``Available`` conditions. A pod becomes ready when its
kubelet says so: ``KubeAPIServer.set_pod_phase(pod, "Running")`` here.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from .objectstore import ObjectStore, random_suffix
from .watches import WatchEvent

JSON = dict[str, Any]
DEPLOYMENTS = ("apps", "deployments")
PODS = ("", "pods")
HASH_LABEL = "pod-template-hash"


def template_hash(deployment: JSON) -> str:
    template = json.dumps(deployment["spec"].get("template") or {}, sort_keys=True)
    return hashlib.sha256(template.encode()).hexdigest()[:10]


def is_ready(pod: JSON) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


class DeploymentController:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def __call__(self, ev: WatchEvent) -> None:
        if ev.key == DEPLOYMENTS and ev.type in ("ADDED", "MODIFIED"):
            self._sync(ev.obj)
        elif ev.key == PODS and ev.type in ("MODIFIED", "DELETED"):
            ref = next((r for r in ev.obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
            if ref is not None and ref.get("kind") == "Deployment":
                deployment = self.store.find(self.store.types[DEPLOYMENTS], ev.obj["metadata"]["namespace"],
                                             ref["name"])
                if deployment is not None and deployment["metadata"]["uid"] == ref["uid"]:
                    self._sync(deployment)

    def _pods(self, deployment: JSON) -> list[JSON]:
        uid = deployment["metadata"]["uid"]
        return [pod for _, pod in self.store.live_objects(self.store.types[PODS])
                if any(r.get("uid") == uid for r in pod["metadata"].get("ownerReferences") or [])]

    def _sync(self, deployment: JSON) -> None:
        meta = deployment["metadata"]
        if meta.get("deletionTimestamp"):
            return
        pods_rt = self.store.types[PODS]
        current = template_hash(deployment)
        pods = [p for p in self._pods(deployment) if not p["metadata"].get("deletionTimestamp")]
        for pod in [p for p in pods if p["metadata"]["labels"].get(HASH_LABEL) != current]:
            self.store.delete(pods_rt, pod["metadata"]["namespace"], pod["metadata"]["name"])
        pods = [p for p in pods if p["metadata"]["labels"].get(HASH_LABEL) == current]
        wanted = int(deployment["spec"].get("replicas", 1))
        if len(pods) > wanted:
            # Not ready first, then the newest (ReplicaSet's ActivePods ordering, shortened).
            newest_first = sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"], reverse=True)
            doomed = sorted(newest_first, key=is_ready)  # stable: newest first among equally ready
            for pod in doomed[: len(pods) - wanted]:
                self.store.delete(pods_rt, pod["metadata"]["namespace"], pod["metadata"]["name"])
        for _ in range(wanted - len(pods)):
            self._create_pod(deployment, current)
        live = [p for p in self._pods(deployment) if not p["metadata"].get("deletionTimestamp")]
        ready = sum(1 for p in live if is_ready(p))
        counts = {"replicas": len(live), "updatedReplicas": sum(1 for p in live if p["metadata"]["labels"].get(
            HASH_LABEL) == current), "readyReplicas": ready, "availableReplicas": ready}
        status = {"observedGeneration": meta.get("generation", 1), **{k: v for k, v in counts.items() if v}}
        fresh = self.store.find(self.store.types[DEPLOYMENTS], meta["namespace"], meta["name"])
        if fresh is not None and fresh.get("status") != status:
            self.store.update(self.store.types[DEPLOYMENTS], meta["namespace"], meta["name"],
                              {**fresh, "status": status}, subresource="status")

    def _create_pod(self, deployment: JSON, hash_: str) -> None:
        template = copy.deepcopy(deployment["spec"].get("template") or {})
        meta = template.get("metadata") or {}
        name = deployment["metadata"]["name"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{hash_}-{random_suffix()}",
                "namespace": deployment["metadata"]["namespace"],
                "labels": {**(meta.get("labels") or {}), HASH_LABEL: hash_},
                **({"annotations": meta["annotations"]} if meta.get("annotations") else {}),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                     "uid": deployment["metadata"]["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "spec": template.get("spec") or {},
        }
        self.store.create(self.store.types[PODS], deployment["metadata"]["namespace"], pod)
