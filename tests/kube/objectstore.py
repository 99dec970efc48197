"""The server's storage: what happens to an object on create, update, patch and delete.

Each rule follows the API concepts documented on kubernetes.io ("Kubernetes API Concepts",
"Object Names and IDs", "Finalizers", "Garbage Collection", "Custom Resources"):

- create fills ``uid``, ``creationTimestamp``, ``generation: 1``, a ``resourceVersion`` from one
  increasing counter; ``generateName`` gets 5 random characters; an existing name is 409
  AlreadyExists; a namespace that does not exist is 404, one being deleted 403; a kind with a
  status subresource drops ``.status`` on create;
- an update bumps ``generation`` when anything but ``metadata`` and (for kinds with the status
  subresource) ``status`` changes, or when ``deletionTimestamp`` is set (registry ``markAsDeleting``);
  a write to ``/status`` changes only ``.status``, a write to the main resource ignores ``.status``;
  a stale ``resourceVersion`` is 409 Conflict; a write that changes nothing bumps nothing and sends
  no watch event;
- delete of an object with finalizers sets ``deletionTimestamp`` (no new finalizers may be added
  after that); the object goes when its finalizers are empty. Dependents (``ownerReferences`` naming
  the owner's uid) are garbage-collected: ``Background`` (the default; batch/v1 Jobs default to
  ``Orphan`` with the server's warning, as ``jobStrategy.DefaultGarbageCollectionPolicy`` does)
  deletes them after the owner, ``Orphan`` removes their reference. ``Foreground`` ("Foreground
  cascading deletion") gives the owner the ``foregroundDeletion`` finalizer and a
  ``deletionTimestamp``, deletes its dependents (in the foreground too, as the collector does for
  the dependents of an owner waiting for them), and removes the owner once no dependent whose
  reference has ``blockOwnerDeletion: true`` is left, so a Job deleted this way stays until its
  pods are gone. The collector deletes a dependent whose every owner is gone; a namespace's
  deletion deletes its contents;
- a pod is deleted gracefully ("Pod Lifecycle", "Termination of Pods"): a pod bound to a node
  (``spec.nodeName``) and not yet ``Succeeded``/``Failed`` gets ``deletionTimestamp`` = now + the
  grace period (``gracePeriodSeconds`` of the request, else ``spec.terminationGracePeriodSeconds``,
  else 30) and ``deletionGracePeriodSeconds``, and stays until its kubelet has stopped it and deletes
  it with a grace period of 0; a later delete may only shorten the period. An unbound or finished
  pod goes at once. ``pods/binding`` assigns a pending pod to a node (409 once it has one);
- every change is one watch event, kept, so a watch from any ``resourceVersion`` replays what came
  after it; a watcher is registered under the same lock as its snapshot, so nothing is lost between.

Controllers (the Job controller stand-in, CRD registration) observe committed events; they run
synchronously after the request's own changes, so a test sees their effect when its call returns.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import datetime
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kmock

from . import admission, crd_schema, statuses
from .resources import ResourceType
from .watches import Watcher, WatchEvent

JSON = dict[str, Any]
Predicate = Callable[[JSON], bool]

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
JOB_DELETE_WARNING = (
    "child pods are preserved by default when jobs are deleted; set propagationPolicy=Background to remove "
    "them or set propagationPolicy=Orphan to suppress this warning"
)


FOREGROUND = "foregroundDeletion"
DEFAULT_GRACE_SECONDS = 30  # a pod spec's terminationGracePeriodSeconds default


def now(plus_seconds: int = 0) -> str:
    at = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=plus_seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(_SUFFIX_ALPHABET) for _ in range(n))


def _without_rv(obj: JSON) -> JSON:
    meta = {k: v for k, v in obj.get("metadata", {}).items() if k not in ("resourceVersion", "managedFields")}
    return {**obj, "metadata": meta}


def _pod_grace_period(pod: JSON, requested: int | None) -> int:
    """The seconds a pod's deletion waits for its kubelet: none for a pod no kubelet runs (unbound)
    or one that has finished (pkg/registry/core/pod/strategy.go, ``CheckGracefulDelete``)."""
    spec, phase = pod.get("spec") or {}, (pod.get("status") or {}).get("phase")
    if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
        return 0
    grace = requested if requested is not None else spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
    return max(0, int(grace))


def _dependents_of(uid: str, obj: JSON) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


class ObjectStore:
    def __init__(self, objects: kmock.ObjectsArray) -> None:
        self.objects = objects  # kmock's per-object history: every stored version, None when deleted
        self.lock = threading.RLock()
        self.types: dict[tuple[str, str], ResourceType] = {}
        self.events: list[WatchEvent] = []
        self.watchers: list[Watcher] = []
        self.controllers: list[Callable[[WatchEvent], None]] = []
        self.controller_errors: list[statuses.APIError] = []
        self._rv = 0
        self._pending: collections.deque[WatchEvent] = collections.deque()
        self._depth = 0

    # --- types ------------------------------------------------------------------------------

    def type_of(self, api_version: str, kind: str) -> ResourceType | None:
        group = api_version.rpartition("/")[0]
        return next((t for t in self.types.values() if t.group == group and t.kind == kind), None)

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    # --- reading ----------------------------------------------------------------------------

    def _key(
        self, rt: ResourceType, namespace: str | None, name: str
    ) -> tuple[kmock.resource, str | None, str]:
        return rt.kmock_resource, namespace if rt.namespaced else None, name

    def _live(self, rt: ResourceType, namespace: str | None, name: str) -> JSON | None:
        key = self._key(rt, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def live_objects(self, rt: ResourceType | None = None) -> Iterator[tuple[ResourceType, JSON]]:
        for (res, _, _), obj in list(self.objects.items()):
            found = self.types.get((res.group or "", res.plural or ""))
            if found is not None and not obj.deleted and (rt is None or found.key == rt.key):
                yield found, obj.raw

    def find(self, rt: ResourceType, namespace: str | None, name: str) -> JSON | None:
        with self.lock:
            obj = self._live(rt, namespace, name)
            return copy.deepcopy(obj) if obj is not None else None

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> JSON:
        obj = self.find(rt, namespace, name)
        if obj is None:
            raise statuses.not_found(rt.group, rt.plural, name)
        return obj

    def list(self, rt: ResourceType, namespace: str | None, matches: Predicate) -> tuple[list[JSON], str]:
        with self.lock:
            items = [
                copy.deepcopy(obj)
                for _, obj in self.live_objects(rt)
                if (namespace is None or obj["metadata"].get("namespace") == namespace) and matches(obj)
            ]
            items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
            return items, self.resource_version

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        matches: Predicate,
        since: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[list[JSON], Watcher, str]:
        """The events to send first (the state, or the log after ``since``), the live watcher, and the
        resource version they bring the watcher to."""
        with self.lock:
            watcher = Watcher(rt.key, namespace, matches, loop, asyncio.Queue())
            if since in (None, "", "0"):
                items, _ = self.list(rt, namespace, matches)
                first = [{"type": "ADDED", "object": obj} for obj in items]
            else:
                try:
                    after = int(since)
                except ValueError:
                    raise statuses.bad_request(f'invalid resource version "{since}"') from None
                first = [item for ev in self.events if ev.rv > after and (item := watcher.transition(ev))]
            self.watchers.append(watcher)
            return first, watcher, self.resource_version

    def unwatch(self, watcher: Watcher) -> None:
        with self.lock, contextlib.suppress(ValueError):
            self.watchers.remove(watcher)

    def close_watches(self) -> None:
        with self.lock:
            for watcher in self.watchers:
                watcher.offer(None)
            self.watchers.clear()

    # --- writing ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _operation(self) -> Iterator[None]:
        """A request's changes; at the outermost level, controllers then see the committed events."""
        with self.lock:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._depth += 1
                    try:
                        while self._pending:
                            ev = self._pending.popleft()
                            for controller in list(self.controllers):
                                try:
                                    controller(ev)
                                except (
                                    statuses.APIError
                                ) as exc:  # a controller's refused write, as it would log
                                    self.controller_errors.append(exc)
                    finally:
                        self._depth -= 1

    def _commit(self, rt: ResourceType, obj: JSON, old: JSON | None, kind: str) -> JSON:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = self.resource_version
        key = self._key(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if kind == "DELETED":
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].create(copy.deepcopy(obj))
        else:
            self.objects[key] = copy.deepcopy(obj)
        ev = WatchEvent(self._rv, rt.key, kind, copy.deepcopy(obj), old)
        self.events.append(ev)
        for watcher in self.watchers:
            if (item := watcher.transition(ev)) is not None:
                watcher.offer(item)
        self._pending.append(ev)
        return copy.deepcopy(obj)

    def _admit(self, rt: ResourceType, obj: JSON, old: JSON | None, field_validation: str) -> list[str]:
        """Defaults and validation; returns the warnings, raises 400/422 as the server does."""
        warnings: list[str] = []
        name = obj["metadata"]["name"]
        causes = admission.metadata_causes(obj["metadata"], label_name=rt.key == ("", "namespaces"))
        if rt.schema is not None:
            unknown = crd_schema.prune(rt.schema, obj)
            if unknown and field_validation == "Strict":
                fields = ", ".join(f'unknown field "{p}"' for p in unknown)
                message = f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: {fields}'
                raise statuses.bad_request(message)
            if field_validation != "Ignore":
                warnings += [f'unknown field "{p}"' for p in unknown]
            crd_schema.apply_defaults(rt.schema, obj)
            causes += _ratchet(crd_schema.admission_causes(rt.schema, obj, old), obj, old)
        elif (builtin := admission.BUILTIN.get(rt.key)) is not None:
            causes += builtin(obj, old)
        if old is not None and old["metadata"].get("deletionTimestamp"):
            added = [
                f
                for f in obj["metadata"].get("finalizers") or []
                if f not in (old["metadata"].get("finalizers") or [])
            ]
            if added:
                message = f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added}"
                causes.append(crd_schema.Cause("metadata.finalizers", "FieldValueForbidden", message))
        if causes:
            raise statuses.invalid(rt.group, rt.kind, name, causes)
        return warnings

    def _check_body(self, rt: ResourceType, obj: Any, namespace: str | None) -> JSON:
        if not isinstance(obj, dict):
            raise statuses.bad_request(f"the body of the request is not a {rt.kind} object")
        for field, expected in (("apiVersion", rt.api_version), ("kind", rt.kind)):
            given = obj.setdefault(field, expected)
            if given != expected:
                raise statuses.bad_request(
                    f"the {field} in the data ({given}) does not match the expected {field} ({expected})"
                )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise statuses.bad_request("metadata must be an object")
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise statuses.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    def _tracks_generation(self, rt: ResourceType, obj: JSON) -> bool:
        return rt.custom or "spec" in obj

    def _generation_fields(self, rt: ResourceType, obj: JSON) -> JSON:
        skipped = {"metadata", "status"} if rt.has_status else {"metadata"}
        return {k: v for k, v in obj.items() if k not in skipped}

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> tuple[JSON, list[str]]:
        with self._operation():
            obj = self._check_body(rt, copy.deepcopy(body), namespace)
            meta = obj["metadata"]
            if rt.namespaced:
                ns = self._live(self.types[("", "namespaces")], None, namespace or "")
                if ns is None:
                    raise statuses.not_found("", "namespaces", namespace or "")
                if ns["metadata"].get("deletionTimestamp"):
                    why = f"unable to create new content in namespace {namespace} because it is being terminated"
                    raise statuses.forbidden(rt.group, rt.plural, meta.get("name", ""), why)
            if not meta.get("name"):
                if not meta.get("generateName"):
                    cause = crd_schema.Cause(
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    )
                    raise statuses.invalid(rt.group, rt.kind, "", [cause])
                meta["name"] = meta["generateName"] + random_suffix()
            if meta.get("resourceVersion"):
                raise statuses.internal("resourceVersion should not be set on objects to be created")
            if self._live(rt, namespace, meta["name"]) is not None:
                raise statuses.already_exists(rt.group, rt.plural, meta["name"])
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            if self._tracks_generation(rt, obj):
                meta["generation"] = 1
            if rt.has_status:
                obj.pop("status", None)
            if rt.key == ("", "pods"):
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            warnings = self._admit(rt, obj, None, field_validation)
            if dry_run:
                return obj, warnings
            created = self._commit(rt, obj, None, "ADDED")
            self._collect_if_orphaned(rt, created)
            return created, warnings

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> tuple[JSON, list[str]]:
        """PUT, and the second half of PATCH: ``body`` is the whole intended object."""
        with self._operation():
            old = self.get(rt, namespace, name)
            obj = self._check_body(rt, copy.deepcopy(body), namespace)
            meta = obj["metadata"]
            if meta.get("name", name) != name:
                raise statuses.bad_request(
                    f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
                )
            meta["name"] = name
            given_rv = meta.get("resourceVersion")
            if given_rv and given_rv != old["metadata"]["resourceVersion"]:
                raise statuses.conflict(rt.group, rt.plural, name, statuses.MODIFIED)
            if meta.get("uid") not in (None, old["metadata"]["uid"]):
                why = f"Precondition failed: UID in precondition: {old['metadata']['uid']}, UID in object meta: {meta['uid']}"
                raise statuses.conflict(rt.group, rt.plural, name, why)
            if subresource == "status":
                status = obj.get("status")
                obj = copy.deepcopy(old)
                if status is None:
                    obj.pop("status", None)
                else:
                    obj["status"] = status
            else:
                for field in (
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ):
                    if field in old["metadata"]:
                        meta[field] = old["metadata"][field]
                    else:
                        meta.pop(field, None)
                if rt.has_status:
                    if "status" in old:
                        obj["status"] = old["status"]
                    else:
                        obj.pop("status", None)
            return self._store_update(rt, old, obj, dry_run=dry_run, field_validation=field_validation)

    def _store_update(
        self, rt: ResourceType, old: JSON, obj: JSON, *, dry_run: bool, field_validation: str
    ) -> tuple[JSON, list[str]]:
        warnings = self._admit(rt, obj, old, field_validation)
        meta = obj["metadata"]
        if "generation" in old["metadata"] and self._generation_fields(rt, obj) != self._generation_fields(
            rt, old
        ):
            meta["generation"] = old["metadata"]["generation"] + 1
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if _without_rv(obj) == _without_rv(old) or dry_run:
            return copy.deepcopy(obj), warnings
        updated = self._commit(rt, obj, old, "MODIFIED")
        done = updated["metadata"]
        # ShouldDeleteDuringUpdate: the last finalizer gone, and no grace period still running.
        if done.get("deletionTimestamp") and not done.get("finalizers") and not done.get("deletionGracePeriodSeconds"):
            self.remove(rt, updated)
        return updated, warnings

    def remove(self, rt: ResourceType, obj: JSON, policy: str = "Background") -> JSON:
        """The object leaves storage; its dependents are collected by ``policy``."""
        gone = self._commit(rt, copy.deepcopy(obj), obj, "DELETED")
        if policy == "Background":
            self._collect_dependents(gone)
        for ref in gone["metadata"].get("ownerReferences") or []:
            owner_rt = self.type_of(ref.get("apiVersion", ""), ref.get("kind", ""))
            if owner_rt is not None and ref.get("blockOwnerDeletion"):
                namespace = gone["metadata"].get("namespace") if owner_rt.namespaced else None
                self._release_foreground(owner_rt, {"metadata": {"namespace": namespace, "name": ref.get("name"),
                                                                 "uid": ref.get("uid")}})
        if rt.key == ("", "namespaces"):
            for other_rt, other in list(self.live_objects()):
                if other_rt.namespaced and other["metadata"].get("namespace") == obj["metadata"]["name"]:
                    self.delete(other_rt, other["metadata"]["namespace"], other["metadata"]["name"])
        return gone

    def delete(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: JSON | None = None,
        dry_run: bool = False,
        grace_period: int | None = None,
    ) -> tuple[JSON, list[str]]:
        with self._operation():
            obj = self.get(rt, namespace, name)
            meta = obj["metadata"]
            for field, key in (("uid", "uid"), ("resourceVersion", "resourceVersion")):
                wanted = (preconditions or {}).get(field)
                if wanted and wanted != meta.get(key):
                    why = f"Precondition failed: {field} in precondition: {wanted}, {field} in object meta: {meta.get(key)}"
                    raise statuses.conflict(rt.group, rt.plural, name, why)
            warnings: list[str] = []
            if propagation is None:
                propagation = "Orphan" if rt.key == ("batch", "jobs") else "Background"
                if rt.key == ("batch", "jobs"):
                    warnings.append(JOB_DELETE_WARNING)
            if dry_run:
                return obj, warnings
            if rt.key == ("", "pods"):
                grace = _pod_grace_period(obj, grace_period)
                if grace > 0:
                    return self._terminate_gracefully(rt, obj, grace), warnings
                if meta.get("deletionTimestamp") and meta.get("finalizers"):
                    return obj, warnings
            elif meta.get("deletionTimestamp"):
                return obj, warnings
            if propagation == "Orphan":
                self._orphan_dependents(meta["uid"])
            elif propagation == "Foreground" and self._dependents(meta["uid"]):
                return self._delete_in_foreground(rt, obj), warnings
            if meta.get("finalizers"):
                return self._mark_deleting(rt, obj), warnings
            return self.remove(rt, obj, propagation), warnings

    def _mark_deleting(self, rt: ResourceType, obj: JSON, grace: int = 0, finalizer: str | None = None) -> JSON:
        old = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta["deletionTimestamp"] = now(grace)
        meta["deletionGracePeriodSeconds"] = grace
        if finalizer is not None and finalizer not in (meta.get("finalizers") or []):
            meta["finalizers"] = [*(meta.get("finalizers") or []), finalizer]
        if "generation" in meta:
            meta["generation"] += 1
        return self._commit(rt, obj, old, "MODIFIED")

    def _terminate_gracefully(self, rt: ResourceType, pod: JSON, grace: int) -> JSON:
        """A running pod: marked for its kubelet, which stops it and then deletes it for good."""
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            if grace >= int(meta.get("deletionGracePeriodSeconds") or 0):
                return pod
            old = copy.deepcopy(pod)
            meta["deletionTimestamp"] = now(grace)
            meta["deletionGracePeriodSeconds"] = grace
            return self._commit(rt, pod, old, "MODIFIED")
        return self._mark_deleting(rt, pod, grace)

    def _delete_in_foreground(self, rt: ResourceType, obj: JSON) -> JSON:
        marked = self._mark_deleting(rt, obj, finalizer=FOREGROUND)
        for dep_rt, dep in self._dependents(obj["metadata"]["uid"]):
            current = self._live(dep_rt, dep["metadata"].get("namespace"), dep["metadata"]["name"])
            if current is not None:
                self.delete(dep_rt, dep["metadata"].get("namespace"), dep["metadata"]["name"], propagation="Foreground")
        self._release_foreground(rt, marked)
        return self.find(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"]) or marked

    def _dependents(self, uid: str, blocking: bool = False) -> list[tuple[ResourceType, JSON]]:
        return [
            (dep_rt, dep)
            for dep_rt, dep in list(self.live_objects())
            if any(
                ref.get("uid") == uid and (ref.get("blockOwnerDeletion") or not blocking)
                for ref in dep["metadata"].get("ownerReferences") or []
            )
        ]

    def _release_foreground(self, rt: ResourceType, owner: JSON) -> None:
        """The collector's last step of a foreground deletion: with no blocking dependent left, the
        owner loses ``foregroundDeletion`` (and goes, when that was its last finalizer)."""
        meta = owner["metadata"]
        current = self._live(rt, meta.get("namespace"), meta["name"])
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return
        if FOREGROUND not in (current["metadata"].get("finalizers") or []) or self._dependents(meta["uid"], blocking=True):
            return
        patched = copy.deepcopy(current)
        patched["metadata"]["finalizers"] = [f for f in current["metadata"]["finalizers"] if f != FOREGROUND]
        self._store_update(rt, copy.deepcopy(current), patched, dry_run=False, field_validation="Ignore")

    def bind(self, namespace: str, name: str, node: str) -> JSON:
        """``POST pods/<name>/binding``: what the scheduler does to assign a pod to a node."""
        with self._operation():
            rt = self.types[("", "pods")]
            pod = self.get(rt, namespace, name)
            if pod["metadata"].get("deletionTimestamp"):
                why = f"pod {name} is being deleted, cannot be assigned to a host"
                raise statuses.conflict("", "pods/binding", name, why)
            if (pod.get("spec") or {}).get("nodeName"):
                why = f"pod {name} is already assigned to node \"{pod['spec']['nodeName']}\""
                raise statuses.conflict("", "pods/binding", name, why)
            old = copy.deepcopy(pod)
            pod.setdefault("spec", {})["nodeName"] = node
            status = pod.setdefault("status", {})
            status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"] + [
                {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": now()}]
            return self._commit(rt, pod, old, "MODIFIED")

    # --- garbage collection (kubernetes.io/docs/concepts/architecture/garbage-collection/) --

    def _owner_exists(self, ref: JSON, namespace: str | None) -> bool:
        owner_rt = self.type_of(ref.get("apiVersion", ""), ref.get("kind", ""))
        if owner_rt is None:
            return False
        owner = self._live(owner_rt, namespace if owner_rt.namespaced else None, ref.get("name", ""))
        return owner is not None and owner["metadata"]["uid"] == ref.get("uid")

    def _collect_dependents(self, owner: JSON) -> None:
        uid = owner["metadata"]["uid"]
        for dep_rt, dep in list(self.live_objects()):
            if _dependents_of(uid, dep):
                self._collect_if_orphaned(dep_rt, dep)

    def _collect_if_orphaned(self, rt: ResourceType, obj: JSON) -> None:
        """A dependent whose every owner is gone is deleted; one with a live owner loses the dead references."""
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs:
            return
        alive = [ref for ref in refs if self._owner_exists(ref, obj["metadata"].get("namespace"))]
        if not alive:
            self.delete(
                rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], propagation="Background"
            )
        elif len(alive) < len(refs):
            patched = copy.deepcopy(obj)
            patched["metadata"]["ownerReferences"] = alive
            self._store_update(rt, copy.deepcopy(obj), patched, dry_run=False, field_validation="Ignore")

    def _orphan_dependents(self, uid: str) -> None:
        for dep_rt, dep in list(self.live_objects()):
            if _dependents_of(uid, dep):
                patched = copy.deepcopy(dep)
                refs = [ref for ref in dep["metadata"]["ownerReferences"] if ref.get("uid") != uid]
                if refs:
                    patched["metadata"]["ownerReferences"] = refs
                else:
                    del patched["metadata"]["ownerReferences"]
                self._store_update(
                    dep_rt, copy.deepcopy(dep), patched, dry_run=False, field_validation="Ignore"
                )


def _ratchet(causes: list[Any], obj: JSON, old: JSON | None) -> list[Any]:
    """CRD validation ratcheting (kubernetes.io "Validation ratcheting", GA in 1.33): an update
    is not refused for errors in values it did not change, so a status write to an object that a
    newer rule would reject still goes through."""
    if old is None:
        return causes
    kept = []
    for cause in causes:
        top = str(cause.field).split(".")[0].split("[")[0]
        if top and top in obj and obj.get(top) == old.get(top):
            continue
        kept.append(cause)
    return kept
