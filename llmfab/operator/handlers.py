"""kopf handlers: thin. Each reads the resource and its children, asks ``reconcile.decide`` what
to do, and does it. The same reconcile runs on create, resume (operator restart), spec update and
a timer that re-reads the children (Job/Deployment status) every ``resync_seconds``."""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Any

import kopf

from llmfab.api import KINDS, ValidationFailed, parse_resource
from llmfab.api.common import API_GROUP, API_VERSION, Phase, Resource
from llmfab.api.inference_service import InferenceService
from llmfab.operator import metrics
from llmfab.operator.builders.autoscaling import (
    INTERCEPTOR_ROUTE,
    SCALED_OBJECT,
    KedaApis,
    proxy_service_name,
)
from llmfab.operator.builders.cleanup import build_cleanup_job, cleanup_job_name
from llmfab.operator.builders.common import (
    REVISION_LABEL,
    STAGE_LABEL,
    child_name,
    queue_name,
    revision,
    selector_labels,
)
from llmfab.operator.builders.inference import COMPONENT as SERVE
from llmfab.operator.builders.kueue import JOB_UID_LABEL, WORKLOAD_VERSIONS, kueue_managed
from llmfab.operator.builders.refusals import pod_policy_problems
from llmfab.operator.deletion import DeletionStep, decide_deletion, is_cleanup, selector
from llmfab.operator.kube import MERGE_PATCH, Kube, connection_info, path_for
from llmfab.operator.reconcile import WORKLOAD_KINDS, Decision, Observed, decide, job_state
from llmfab.operator.settings import OperatorSettings
from llmfab.operator.usage import account
from llmfab.status import conditions_for

CHILD_KINDS = (("batch/v1", "Job"), ("ray.io/v1", "RayJob"), ("v1", "ConfigMap"))
ENVELOPE = ("apiVersion", "kind", "metadata", "spec")
METADATA = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
            "creationTimestamp", "deletionTimestamp", "finalizers", "ownerReferences")


def parse_body(body: Any) -> Resource:
    """The resource as llmfab's API models read it (server-set status and fields left aside)."""
    doc = {k: body.get(k) for k in ENVELOPE if body.get(k) is not None}
    doc["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items() if k in METADATA and v is not None}
    return parse_resource(doc, f"{body.get('kind')}/{doc['metadata'].get('name')}")


def observe(res: Resource, kube: Kube, status: dict[str, Any]) -> Observed:
    """Children of the current revision (older ones are stale), the Deployment, and each
    referenced resource."""
    ns, current = res.metadata.namespace, revision(res)
    observed = Observed(status=dict(status))
    # One list of the resource's pods serves usage (every pod) and the serving state (its servers).
    observed.pods = [p for p in kube.list("v1", "Pod", ns, selector(res.KIND, res.name)) if not is_cleanup(p)]
    for api_version, kind in CHILD_KINDS:
        for child in kube.list(api_version, kind, ns, selector(res.KIND, res.name)):
            labels = child["metadata"].get("labels") or {}
            if is_cleanup(child):
                continue
            if labels.get(REVISION_LABEL) != current:
                observed.stale.append(child)
            elif kind != "ConfigMap" and labels.get(STAGE_LABEL, labels.get("app.kubernetes.io/component")):
                observed.jobs[labels.get(STAGE_LABEL) or labels["app.kubernetes.io/component"]] = child
    if isinstance(res, InferenceService):
        observed.deployment = kube.get("apps/v1", "Deployment", ns, child_name(res))
        if res.spec.autoscaling is not None or status.get("scale"):
            _observe_autoscaler(res, kube, observed)
        if res.spec.autoscaling is not None or queue_name(res) is not None:  # its state; waiting for Kueue?
            server = selector_labels(res, SERVE).items()
            observed.server_pods = [p for p in observed.pods if server <= (p["metadata"].get("labels") or {}).items()]
    _observe_workloads(kube, ns, observed)
    for kind, name in res.references():
        observed.dependencies[f"{kind}/{name}"] = kube.get(f"{API_GROUP}/{API_VERSION}", kind, ns, name)
    return observed


def _observe_autoscaler(res: InferenceService, kube: Kube, observed: Observed) -> None:
    """Which KEDA kinds the cluster serves (discovery, on every look: KEDA may be installed after
    the operator started), and KEDA's objects that exist for ``res``."""
    ns = res.metadata.namespace
    served = {api_version: kube.resources_served(api_version) for api_version in (SCALED_OBJECT[0], INTERCEPTOR_ROUTE[0])}
    observed.keda = KedaApis(scaled_objects="scaledobjects" in served[SCALED_OBJECT[0]],
                             interceptor_routes="interceptorroutes" in served[INTERCEPTOR_ROUTE[0]])
    kinds = [("v1", "Service", proxy_service_name(res))]
    kinds += [(*SCALED_OBJECT, child_name(res))] if observed.keda.scaled_objects else []
    kinds += [(*INTERCEPTOR_ROUTE, child_name(res))] if observed.keda.interceptor_routes else []
    for api_version, kind, name in kinds:
        child = kube.get(api_version, kind, ns, name)
        if child is not None and _owned_by(child, res):
            observed.autoscaler.append({"apiVersion": api_version, "kind": kind, **child})


def _observe_workloads(kube: Kube, namespace: str, observed: Observed) -> None:
    """The Kueue Workload of each unfinished Kueue-managed Job, found by the label Kueue puts on
    it (``kueue.x-k8s.io/job-uid``), in the newest Workload version the cluster serves."""
    waiting = {stage: job for stage, job in observed.jobs.items()
               if kueue_managed(job) and job_state(job).state in ("pending", "active", "suspended")}
    if not waiting:
        return
    served = next((v for v in WORKLOAD_VERSIONS if "workloads" in kube.resources_served(v)), None)
    observed.workloads_readable = served is not None
    for stage, job in waiting.items():
        found = kube.list(served, "Workload", namespace, {JOB_UID_LABEL: job["metadata"]["uid"]}) if served else []
        if found:
            observed.workloads[stage] = found[0]


def _owned_by(child: dict[str, Any], res: Resource) -> bool:
    return any(ref.get("uid") == res.metadata.uid for ref in child["metadata"].get("ownerReferences") or [])


class LastTransitions:
    """The phase transition last posted as an event, per resource (uid). Two passes (the change
    handler and the timer, or a retry) can decide the same transition when the second reads the
    status from before the first one's patch: kopf's body follows the watch stream, which lags
    under load. Like client-go's event correlator, the operator remembers what it posted and
    posts a transition once; the memory is in-process, so a restart may post one again."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def first(self, uid: str, key: tuple[str, ...]) -> bool:
        """Whether ``key`` differs from the last transition posted for ``uid`` (and is now it)."""
        with self._lock:
            if self._last.get(uid) == key:
                return False
            self._last[uid] = key
            return True

    def forget(self, uid: str) -> None:
        with self._lock:
            self._last.pop(uid, None)


TRANSITIONS = LastTransitions()


def carry_out(decision: Decision, res: Resource, body: Any, kube: Kube) -> None:
    for manifest in decision.apply:
        kube.apply(manifest)
    for manifest in decision.patch:
        kube.patch(manifest)
    deleted = [kube.delete(child) for child in decision.delete]
    if decision.status:
        kube.patch_status(res, decision.status)
    repeated = None
    if decision.transition is not None and not TRANSITIONS.first(res.metadata.uid or res.key, decision.transition[0]):
        repeated = decision.transition[1]
    for event in decision.events + (decision.events_if_deleted if any(deleted) else []):
        if event is not repeated:
            type_, reason, message = event
            kopf.event(body, type=type_, reason=reason, message=message[:1024])


def reconcile(body: Any, status: Any, kube: Kube, settings: OperatorSettings, logger: logging.Logger) -> None:
    kind = str(body.get("kind"))
    started = time.monotonic()
    metrics.RECONCILES.labels(kind=kind).inc()
    try:
        try:
            res = parse_body(body)
        except ValidationFailed as e:
            _invalid(body, dict(status or {}), e, kube)
            raise kopf.PermanentError(str(e)) from None
        observed = observe(res, kube, dict(status or {}))
        decision = decide(res, observed, settings)
        usage = account(observed.status.get("usage"), observed.pods, datetime.datetime.now(datetime.UTC),
                        settings.cost, settings.usage_write_seconds)
        if usage is not None:
            decision.status["usage"] = usage
        carry_out(decision, res, body, kube)
        metrics.observe_usage(res.metadata.namespace, kind, res.name, usage or (status or {}).get("usage"))
        metrics.observe_phase(res.metadata.uid or res.name, kind, decision.status.get("phase", (status or {}).get("phase")))
        if isinstance(res, InferenceService):
            metrics.observe_serving(res.metadata.namespace, res.name, observed.deployment, decision.cold_start_seconds)
        if kind == "Dataset":
            metrics.observe_dataset(res.metadata.namespace, res.name, (status or {}).get("steps"))
    except (kopf.PermanentError, kopf.TemporaryError):
        raise
    except Exception:
        metrics.ERRORS.labels(kind=kind).inc()
        raise
    finally:
        metrics.SECONDS.labels(kind=kind).observe(time.monotonic() - started)
    if decision.waiting:
        raise kopf.TemporaryError(decision.waiting, delay=settings.resync_seconds)


def _invalid(body: Any, status: dict[str, Any], error: ValidationFailed, kube: Kube) -> None:
    """An invalid resource (the API server's schema let it through, llmfab's rules did not)."""
    message = "; ".join(error.errors)
    gen = (body.get("metadata") or {}).get("generation")
    if status.get("phase") == Phase.FAILED and status.get("message") == message:
        return
    fields = {"phase": str(Phase.FAILED), "message": message, "observedGeneration": gen,
              "conditions": conditions_for(Phase.FAILED, "InvalidSpec", message, gen)}
    meta = body["metadata"]
    path = path_for(f"{API_GROUP}/{API_VERSION}", body["kind"], meta["namespace"], meta["name"]) + "/status"
    kube.request("PATCH", path, {"status": fields}, content_type=MERGE_PATCH)
    kopf.event(body, type="Warning", reason="InvalidSpec", message=message[:1024])


def delete_artifacts(body: Any, kube: Kube, settings: OperatorSettings) -> None:
    """``spec.deletionPolicy: Delete``: stop the resource's workloads, wait until none of its pods
    runs, then a Job (not owned by the resource, which is going) removes the artifacts from the
    volume; the finalizer stays until that Job has succeeded. The steps and why: deletion.py."""
    if (body.get("spec") or {}).get("deletionPolicy") != "Delete":
        return
    res = parse_body(body)
    outside = pod_policy_problems(res, settings)
    if outside:  # the clean-up Job would run that image on that claim: keep the artifacts instead
        kopf.event(body, type="Warning", reason="PodPolicy", message=("artifacts kept: " + "; ".join(outside))[:1024])
        return
    ns, labels = res.metadata.namespace, selector(res.KIND, res.name)
    workloads = [w for api_version, kind in WORKLOAD_KINDS for w in kube.list(api_version, kind, ns, labels)
                 if not is_cleanup(w)]
    pods = [p for p in kube.list("v1", "Pod", ns, labels) if not is_cleanup(p)]
    cleanup = kube.get("batch/v1", "Job", ns, cleanup_job_name(res))
    step = decide_deletion(res.metadata.uid or "", workloads, pods, cleanup, datetime.datetime.now(datetime.UTC))
    for workload in step.delete:
        kube.delete(workload, propagation="Foreground")
    for job in step.remove_cleanup:
        kube.delete(job)
    if step.create_cleanup:
        kube.apply(build_cleanup_job(res, settings))
    _report_deletion(body, res, step, kube)
    if step.failed:
        raise kopf.PermanentError(step.failed)
    if step.waiting:
        raise kopf.TemporaryError(step.waiting, delay=settings.resync_seconds)


def _report_deletion(body: Any, res: Resource, step: DeletionStep, kube: Kube) -> None:
    """What the deletion waits for, in ``status.message`` and, when it changes, an event."""
    message = step.failed or step.waiting
    if not message or (body.get("status") or {}).get("message") == message:
        return
    kube.patch_status(res, {"message": message})
    if step.failed or step.stuck:
        kopf.event(body, type="Warning", reason="CleanupFailed" if step.failed else "PodsStuckTerminating",
                   message=message[:1024])
    else:
        kopf.event(body, type="Normal", reason="Deleting", message=message[:1024])


def build_registry(settings: OperatorSettings, kube: Kube) -> kopf.OperatorRegistry:
    """The operator: kopf's login and settings, and the handlers of the four kinds."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube.api.configuration)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = "llmfab.dev/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="llmfab.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="llmfab.dev")
        settings.posting.level = logging.WARNING  # events come from the reconciler, not from logs
        settings.watching.server_timeout = 300
        # A deletion waits for the resync timer to exit; a sync timer cannot be cancelled, so kopf
        # polls for its end, by default every 60 s: a resource deleted while its reconcile ran kept
        # its finalizer for a minute (seen as a flaky "waiting for deleted" in the operator tests).
        settings.background.cancellation_polling = 1.0

    register(registry, settings, kube)
    return registry


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings, kube: Kube) -> None:
    """Handlers for the four kinds on ``registry``."""
    for cls in KINDS.values():
        args = (API_GROUP, API_VERSION, cls.PLURAL)

        def on_change(body: Any, status: Any, logger: logging.Logger, **_: Any) -> None:
            reconcile(body, status, kube, settings, logger)

        def on_delete(body: Any, **_: Any) -> None:
            meta = body.get("metadata") or {}
            TRANSITIONS.forget(meta.get("uid", ""))
            metrics.observe_phase(meta.get("uid", ""), str(body.get("kind")), None)
            metrics.observe_usage(meta.get("namespace", ""), str(body.get("kind")), meta.get("name", ""), None)
            if body.get("kind") == "Dataset":
                metrics.observe_dataset(meta.get("namespace", ""), meta.get("name", ""), None)
            if body.get("kind") == "InferenceService":
                metrics.forget_serving(meta.get("namespace", ""), meta.get("name", ""))
            delete_artifacts(body, kube, settings)

        kopf.on.resume(*args, registry=registry)(on_change)
        kopf.on.create(*args, registry=registry)(on_change)
        kopf.on.update(*args, field="spec", registry=registry)(on_change)
        # The timer re-reads children; its first tick waits one period, so a new resource is not
        # reconciled twice at once (by on.create and the timer: benchmarks/operator_scale.py saw it).
        kopf.timer(*args, interval=settings.resync_seconds, initial_delay=settings.resync_seconds, registry=registry,
                   when=lambda body, **_: not (body.get("metadata") or {}).get("deletionTimestamp"))(on_change)
        kopf.on.delete(*args, registry=registry)(on_delete)
