"""A Kubernetes API server for tests: kmock's emulator extended where kopf and kubectl depend on it.

No kube-apiserver binary can be had here (FACTS.md, "Kubernetes without a cluster"), so this
subclass of ``kmock.KubernetesEmulator`` serves the API itself: the storage rules are in
objectstore.py, CRD schemas in crd_schema.py, built-in defaulting in admission.py, the Job
controller in job_controller.py, a Deployment controller in deployment_controller.py, the ``/scale``
subresource of CRDs in scale.py, server-side printing in tables.py, OpenAPI v3 in openapi.py.

kmock's DSL still works on top: a reaction declared on the server (``server['patch', ...] << 500``)
answers before the emulated API does. ``server.objects`` is kmock's per-object history, and
``server.request_log`` records every request with its RBAC verb and resource.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from . import openapi, scale, statuses, tables
from .deployment_controller import DeploymentController
from .job_controller import JobController, pod_status
from .objectstore import ObjectStore
from .patches import APPLY_PATCH, apply_patch
from .resources import ResourceType, bundled, from_crd, preferred_first
from .routes import LoggedRequest, Route, kmock_action, parse_route, verb_of
from .selectors import SelectorError, field_selector, label_selector
from .watches import WatchEvent

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
CHART_CRDS = sorted((REPO / "charts" / "llmfab" / "crds").glob("*.yaml"))
# KEDA's published CRDs, vendored unmodified (third_party/README.md): what `helm install kedacore/keda`
# and `kedacore/keda-add-ons-http` install, for admitting the objects the operator builds for them.
THIRD_PARTY = Path(__file__).resolve().parent / "third_party"
KEDA_CRD = THIRD_PARTY / "keda-v2.20.2" / "keda.sh_scaledobjects.yaml"
HTTP_ADD_ON_CRD = THIRD_PARTY / "http-add-on-v0.15.0" / "http.keda.sh_interceptorroutes.yaml"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")


def _json_response(body: Any, status: int = 200, warnings: Sequence[str] = ()) -> aiohttp.web.Response:
    """JSON, with warnings as ``Warning: 299 - "text"`` (RFC 7234, as the server's warning recorder writes them)."""
    headers = {"Warning": ", ".join(f"299 - {json.dumps(w)}" for w in warnings)} if warnings else None
    return aiohttp.web.json_response(body, status=status, headers=headers)


@attrs.define(kw_only=True)
class KubeAPIServer(kmock.KubernetesEmulator):
    """The emulator; ``crds``: CRD manifests (paths or dicts) installed at start, as by ``helm install``."""

    crds: Sequence[Path | JSON] = ()
    store: ObjectStore = attrs.field(init=False)
    request_log: list[LoggedRequest] = attrs.field(factory=list, init=False)
    failures: list[BaseException] = attrs.field(factory=list, init=False)
    _builtin_reactions: set[int] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        # kmock's discovery handlers and its 404, but not the emulator's own object handling.
        kmock.KubernetesScaffold.__attrs_post_init__(self)
        self._builtin_reactions = {id(r) for r in self._payloads}
        self.store = ObjectStore(self._objects)
        for rt in bundled():
            self._register(rt)
        self.store.controllers += [self._crd_controller, JobController(self.store), DeploymentController(self.store)]
        for namespace in SYSTEM_NAMESPACES:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        for crd in self.crds:
            self.create(_manifest(str(crd)) if isinstance(crd, str | Path) else crd)

    # --- test helpers (thread-safe: they act on the store under its lock) --------------------

    @property
    def server_url(self) -> str:
        """``http://127.0.0.1:PORT`` while served (kmock's ``url`` is the same with a trailing slash)."""
        return str(self.url).rstrip("/")

    def resource_type(self, resource: str) -> ResourceType:
        """``pods``, ``jobs.batch``, ``trainingruns.llmfab.dev``, ``ltr``, ``TrainingRun``: as kubectl resolves them."""
        name, _, group = resource.partition(".")
        with self.store.lock:
            found = [
                rt
                for rt in self.store.types.values()
                if (not group or rt.group == group)
                and name in (rt.plural, rt.singular, rt.kind, *rt.short_names)
            ]
        if not found:
            raise KeyError(f"the server doesn't have a resource type {resource!r}")
        # The core group first, as kubectl resolves "pods" to v1 pods, not metrics.k8s.io's.
        return min(found, key=lambda rt: rt.group != "")

    def create(self, manifest: JSON, namespace: str | None = None) -> JSON:
        """Create an object as a client would (admission included); returns what was stored."""
        rt = self.store.type_of(manifest["apiVersion"], manifest["kind"])
        if rt is None:
            raise KeyError(f"no kind {manifest['kind']!r} in {manifest['apiVersion']!r}")
        ns = (
            namespace
            or manifest.get("metadata", {}).get("namespace")
            or ("default" if rt.namespaced else None)
        )
        return self.store.create(rt, ns, manifest)[0]

    def install_crd(self, path: Path) -> JSON:
        """Install a CRD from a manifest file, as ``kubectl apply -f`` of it would."""
        return self.create(copy.deepcopy(_manifest(str(path))))

    def read(self, resource: str, name: str, namespace: str | None = "default") -> JSON:
        return self.store.get(self.resource_type(resource), namespace, name)

    def items(self, resource: str, namespace: str | None = None, labels: str | None = None) -> list[JSON]:
        return self.store.list(self.resource_type(resource), namespace, label_selector(labels))[0]

    def set_pod_phase(
        self, pod: str | JSON, phase: str, namespace: str = "default", exit_code: int | None = None,
        started: str | None = None, finished: str | None = None,
    ) -> JSON:
        """Report ``phase`` for a pod as its kubelet would; the Job controller then updates its Job.
        ``started``/``finished``: the pod's start and its container's end (RFC 3339), default now."""
        if isinstance(pod, dict):
            namespace, pod = pod["metadata"]["namespace"], pod["metadata"]["name"]
        pods = self.resource_type("pods")
        with self.store.lock:
            current = self.store.get(pods, namespace, pod)
            body = {**current, "status": pod_status(current, phase, exit_code, started, finished)}
            return self.store.update(pods, namespace, pod, body, subresource="status")[0]

    # --- resource types and CRDs ----------------------------------------------------------

    def _register(self, rt: ResourceType) -> None:
        self.store.types[rt.key] = rt
        self.resources[rt.kmock_resource] = kmock.ResourceInfo(
            namespaced=rt.namespaced,
            kind=rt.kind,
            singular=rt.singular,
            verbs=set(rt.verbs),
            shortnames=set(rt.short_names),
            categories=set(rt.categories),
            subresources=set(rt.subresources),
        )

    def _crd_controller(self, ev: WatchEvent) -> None:
        """apiextensions-apiserver: a CRD's kinds are served once it is stored, and go with it."""
        if ev.key != CRD_KEY:
            return
        name = ev.obj["metadata"]["name"]
        for key, rt in list(self.store.types.items()):
            if rt.crd_name == name:
                del self.store.types[key]
                if ev.type == "DELETED":
                    for _, obj in list(self.store.live_objects(rt)):
                        self.store.remove(rt, obj)
                with contextlib.suppress(KeyError):
                    del self.resources[rt.kmock_resource]
        if ev.type == "DELETED":
            return
        for rt in from_crd(ev.obj):
            self._register(rt)
        spec = ev.obj["spec"]
        status = {
            "acceptedNames": spec["names"],
            "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")],
            "conditions": [
                {
                    "type": t,
                    "status": "True",
                    "reason": r,
                    "message": m,
                    "lastTransitionTime": ev.obj["metadata"]["creationTimestamp"],
                }
                for t, r, m in (
                    ("NamesAccepted", "NoConflicts", "no conflicts found"),
                    ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                )
            ],
        }
        if ev.obj.get("status") != status:
            crds = self.store.types[CRD_KEY]
            self.store.update(crds, None, name, {**ev.obj, "status": status}, subresource="status")

    # --- HTTP -------------------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw.read()
        params = dict(raw.query)
        route = parse_route(raw.path)
        verb = verb_of(raw.method, route, params)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=params,
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=body,
            text=body.decode(errors="replace"),
            data=data,
            action=kmock_action(verb) if route else None,
            resource=kmock.resource(route.group, route.version, route.plural) if route else None,
            namespace=route.namespace if route else None,
            name=route.name if route else None,
            subresource=route.subresource if route else None,
        )
        self._requests.append(request)
        entry = LoggedRequest(
            raw.method,
            raw.path,
            params,
            verb,
            route.group if route else None,
            route.plural if route else None,
            route.subresource if route else None,
            route.namespace if route else None,
            route.name if route else None,
            user_agent=raw.headers.get("User-Agent", ""),
        )
        self.request_log.append(entry)
        try:
            response = await self._handle(request)
        except statuses.APIError as exc:
            response = _json_response(exc.status(), exc.code)
        except kmock.KubernetesError as exc:  # kmock's own answer for a path it does not know
            response = _json_response(
                statuses.APIError(
                    exc.status, "NotFound", "the server could not find the requested resource"
                ).status(),
                exc.status,
            )
        except Exception as exc:  # a bug in the emulator: a 500 for the client, a failure for the test
            self.failures.append(exc)
            response = _json_response(statuses.internal(repr(exc)).status(), 500)
        entry.code = response.status
        return response

    def _user_reaction(self, request: kmock.Request) -> bool:
        return any(
            id(r) not in self._builtin_reactions and request in r._source and not r._disabled.is_set()
            for r in self._payloads
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if not self._user_reaction(request):
            route = parse_route(request.url.path)
            if route is not None:
                return await self._serve_resource(request, route)
            if request.method == "GET" and request.url.path.startswith("/openapi/v3"):
                return self._serve_openapi(request.url.path)
        return await kmock.RawHandler._handle(self, request)

    def _type(self, route: Route) -> ResourceType:
        with self.store.lock:
            rt = self.store.types.get((route.group, route.plural))
        if rt is None or rt.version != route.version:
            raise statuses.APIError(404, "NotFound", "the server could not find the requested resource")
        if route.subresource and route.subresource not in rt.subresources:
            raise statuses.APIError(404, "NotFound", "the server could not find the requested resource")
        return rt

    async def _serve_resource(self, request: kmock.Request, route: Route) -> aiohttp.web.StreamResponse:
        rt = self._type(route)
        params = dict(request.params)
        verb = verb_of(str(request.method.value), route, params)
        if verb not in rt.verbs and not route.subresource:
            raise statuses.method_not_allowed(verb)
        namespace = route.namespace if rt.namespaced else None
        dry_run = params.get("dryRun") == "All"
        if route.subresource == "scale" and rt.scale is not None:
            return self._serve_scale(request, rt, route, namespace, verb, dry_run)
        if verb in ("list", "watch", "deletecollection"):
            try:
                matches = _selection(rt, params, route.name)
            except SelectorError as exc:
                raise statuses.bad_request(str(exc)) from None
        if verb == "watch":
            return await self._serve_watch(request, rt, namespace, matches)
        if verb == "list":
            return self._serve_list(request, rt, namespace, matches)
        if verb == "get":
            obj = self.store.get(rt, namespace, route.name or "")
            if tables.wants_table(request.headers.get("Accept")):
                obj = tables.table(
                    [obj],
                    rt.printer_columns,
                    resource_version=obj["metadata"]["resourceVersion"],
                    include_object=params.get("includeObject", "Metadata"),
                )
            return _json_response(obj)
        if rt.namespaced and namespace is None:
            raise statuses.method_not_allowed(verb)
        validation = params.get("fieldValidation", "")
        if verb == "create" and rt.key == ("", "pods") and route.subresource == "binding":
            target = (_body(request) or {}).get("target") or {}
            if not target.get("name"):
                raise statuses.bad_request("a Binding needs target.name (the node)")
            self.store.bind(namespace or "", route.name or "", target["name"])
            return _json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                   "code": 201}, 201)
        if verb == "create":
            obj, warnings = self.store.create(
                rt, namespace, _body(request), dry_run=dry_run, field_validation=validation
            )
            return _json_response(obj, 201, warnings)
        if verb == "update":
            obj, warnings = self.store.update(
                rt,
                namespace,
                route.name or "",
                _body(request),
                subresource=route.subresource,
                dry_run=dry_run,
                field_validation=validation,
            )
            return _json_response(obj, 200, warnings)
        if verb == "patch":
            return self._serve_patch(request, rt, route, namespace, dry_run, validation)
        options = _delete_options(request)
        if verb == "delete":
            obj, warnings = self.store.delete(
                rt,
                namespace,
                route.name or "",
                propagation=options["propagation"],
                preconditions=options["preconditions"],
                dry_run=dry_run or options["dry_run"],
                grace_period=options["grace_period"],
            )
            pending = self.store.find(rt, namespace, route.name or "") is not None  # finalizers or grace
            return _json_response(obj, 202 if pending and not dry_run and not options["dry_run"] else 200, warnings)
        items, _ = self.store.list(rt, namespace, matches)
        for obj in items:
            self.store.delete(
                rt,
                obj["metadata"].get("namespace"),
                obj["metadata"]["name"],
                propagation=options["propagation"],
                dry_run=dry_run,
            )
        return _json_response(
            {"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": {}, "items": items}
        )

    def _serve_scale(
        self, request: kmock.Request, rt: ResourceType, route: Route, namespace: str | None, verb: str,
        dry_run: bool,
    ) -> aiohttp.web.StreamResponse:
        """``/scale`` of a custom resource (scale.py): GET, PUT and PATCH of an autoscaling/v1 Scale."""
        assert rt.scale is not None
        name = route.name or ""
        if verb == "get":
            return _json_response(scale.read(self.store.get(rt, namespace, name), rt.scale))
        if verb not in ("update", "patch"):
            raise statuses.method_not_allowed(verb)
        with self.store.lock:
            current = self.store.get(rt, namespace, name)
            if verb == "update":
                wanted = _body(request)
            else:
                wanted = scale.patched(current, rt.scale, request.headers.get("Content-Type", ""), request.body)
            obj, warnings = self.store.update(rt, namespace, name, scale.updated_object(current, rt.scale, wanted),
                                              dry_run=dry_run)
        return _json_response(scale.read(obj, rt.scale), 200, warnings)

    def _serve_patch(
        self,
        request: kmock.Request,
        rt: ResourceType,
        route: Route,
        namespace: str | None,
        dry_run: bool,
        validation: str,
    ) -> aiohttp.web.StreamResponse:
        content_type = request.headers.get("Content-Type", "")
        with self.store.lock:
            try:
                current = self.store.get(rt, namespace, route.name or "")
            except statuses.APIError:
                if not content_type.startswith(APPLY_PATCH):
                    raise
                applied = yaml.safe_load(request.body)
                obj, warnings = self.store.create(
                    rt, namespace, applied, dry_run=dry_run, field_validation=validation
                )
                return _json_response(obj, 201, warnings)
            patched = apply_patch(content_type, current, request.body, custom=rt.custom)
            if patched.get("metadata", {}).get("resourceVersion") in (None, ""):
                patched.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
            obj, warnings = self.store.update(
                rt,
                namespace,
                route.name or "",
                patched,
                subresource=route.subresource,
                dry_run=dry_run,
                field_validation=validation,
            )
        return _json_response(obj, 200, warnings)

    def _serve_list(
        self, request: kmock.Request, rt: ResourceType, namespace: str | None, matches: Any
    ) -> aiohttp.web.StreamResponse:
        params = request.params
        items, rv = self.store.list(rt, namespace, matches)
        start = _decode_continue(params.get("continue"))
        if start is not None:
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start]
        token = None
        limit = int(params.get("limit") or 0)
        if limit and len(items) > limit:
            items = items[:limit]
            last = items[-1]["metadata"]
            token = base64.urlsafe_b64encode(
                json.dumps([last.get("namespace", ""), last["name"]]).encode()
            ).decode()
        if tables.wants_table(request.headers.get("Accept")):
            body = tables.table(
                items,
                rt.printer_columns,
                resource_version=rv,
                continue_token=token,
                include_object=params.get("includeObject", "Metadata"),
            )
            return _json_response(body)
        metadata: JSON = {"resourceVersion": rv}
        if token:
            metadata["continue"] = token
        return _json_response(
            {"apiVersion": rt.api_version, "kind": f"{rt.kind}List", "metadata": metadata, "items": items}
        )

    async def _serve_watch(
        self, request: kmock.Request, rt: ResourceType, namespace: str | None, matches: Any
    ) -> aiohttp.web.StreamResponse:
        params = request.params
        initial = params.get("sendInitialEvents") == "true"
        since = None if initial else params.get("resourceVersion")
        first, watcher, rv = self.store.watch(rt, namespace, matches, since, asyncio.get_running_loop())
        as_table = tables.wants_table(request.headers.get("Accept"))
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)

        columns_sent = False

        async def send(event: JSON) -> None:
            nonlocal columns_sent
            if as_table and event["type"] != "BOOKMARK":  # column definitions come with the first event only
                shown = tables.table(
                    [event["object"]], rt.printer_columns, resource_version=rv, with_columns=not columns_sent
                )
                event, columns_sent = {**event, "object": shown}, True
            await response.write(json.dumps(event).encode() + b"\n")

        try:
            for event in first:
                await send(event)
            if initial:
                marker = {"k8s.io/initial-events-end": "true"}
                bookmark = {
                    "kind": rt.kind,
                    "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": rv, "annotations": marker},
                }
                await send({"type": "BOOKMARK", "object": bookmark})
            async for event in _events(watcher.queue, timeout):
                await send(event)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            self.store.unwatch(watcher)
        return response

    # --- discovery and OpenAPI (kmock's, with the core group as "v1" and versions ordered) ---

    def _group_versions(self) -> dict[str, list[str]]:
        with self.store.lock:
            groups: dict[str, set[str]] = {}
            for rt in self.store.types.values():
                groups.setdefault(rt.group, set()).add(rt.version)
        return {g: preferred_first(vs) for g, vs in sorted(groups.items())}

    async def _serve_root(self, request: kmock.Request) -> JSON:
        paths = {"/api", "/api/v1", "/apis", "/version", "/openapi/v3"}
        for group, versions in self._group_versions().items():
            if group:
                paths |= {f"/apis/{group}"} | {f"/apis/{group}/{v}" for v in versions}
        return {"paths": sorted(paths)}

    async def _serve_server_version(self, request: kmock.Request) -> JSON:
        return {
            "major": "1",
            "minor": "37",
            "gitVersion": "v1.37.0+llmfab-test",
            "gitTreeState": "clean",
            "goVersion": "go1.27",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def _api_group(self, group: str, versions: list[str]) -> JSON:
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": listed, "preferredVersion": listed[0]}

    async def _serve_apis(self, request: kmock.Request) -> JSON:
        groups = [self._api_group(g, vs) for g, vs in self._group_versions().items() if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    async def _serve_group(self, request: kmock.Request) -> JSON:
        group = request.url.path.strip("/").split("/")[1]
        versions = self._group_versions().get(group)
        if not versions:
            raise statuses.APIError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIGroup", "apiVersion": "v1", **self._api_group(group, versions)}

    async def _serve_version(self, request: kmock.Request) -> JSON:
        parts = request.url.path.strip("/").split("/")
        group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
        with self.store.lock:
            found = [rt for rt in self.store.types.values() if rt.group == group and rt.version == version]
        if not found:
            raise statuses.APIError(404, "NotFound", "the server could not find the requested resource")
        entries = [entry for rt in sorted(found, key=lambda t: t.plural) for entry in rt.discovery()]
        group_version = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": entries,
        }

    def _serve_openapi(self, path: str) -> aiohttp.web.StreamResponse:
        with self.store.lock:
            by_gv: dict[str, list[ResourceType]] = {}
            for rt in self.store.types.values():
                by_gv.setdefault(openapi.gv_path(rt.group, rt.version), []).append(rt)
        docs = {gv: openapi.group_version_doc(types) for gv, types in sorted(by_gv.items())}
        wanted = path.removeprefix("/openapi/v3").strip("/")
        if not wanted:
            return _json_response(openapi.root_doc(docs))
        if wanted not in docs:
            raise statuses.APIError(404, "NotFound", "the server could not find the requested resource")
        return _json_response(docs[wanted])


@functools.cache
def _manifest(path: str) -> JSON:
    return yaml.safe_load(Path(path).read_text())


def _body(request: kmock.Request) -> Any:
    content_type = request.headers.get("Content-Type", "application/json")
    if "protobuf" in content_type:
        raise statuses.unsupported_media_type(content_type, ("application/json", "application/yaml"))
    try:
        return yaml.safe_load(request.body) if "yaml" in content_type else json.loads(request.body)
    except (ValueError, yaml.YAMLError) as exc:
        raise statuses.bad_request(f"the body of the request could not be decoded: {exc}") from None


def _delete_options(request: kmock.Request) -> JSON:
    opts = request.data if isinstance(request.data, dict) else {}
    policy = request.params.get("propagationPolicy") or opts.get("propagationPolicy")
    if policy is None and opts.get("orphanDependents") is not None:
        policy = "Orphan" if opts["orphanDependents"] else "Background"
    if policy not in (None, "Orphan", "Background", "Foreground"):
        raise statuses.bad_request(f'unsupported propagationPolicy "{policy}"')
    grace = request.params.get("gracePeriodSeconds", opts.get("gracePeriodSeconds"))
    try:
        grace_period = None if grace is None else int(grace)
    except (TypeError, ValueError):
        raise statuses.bad_request(f'invalid gracePeriodSeconds "{grace}"') from None
    return {
        "propagation": policy,
        "preconditions": opts.get("preconditions"),
        "dry_run": "All" in (opts.get("dryRun") or []),
        "grace_period": grace_period,
    }


def _selection(rt: ResourceType, params: dict[str, str], name: str | None) -> Any:
    labels = label_selector(params.get("labelSelector"))
    fields = field_selector(params.get("fieldSelector"), rt.group, rt.plural)
    return lambda obj: labels(obj) and fields(obj) and (name is None or obj["metadata"]["name"] == name)


def _decode_continue(token: str | None) -> tuple[str, str] | None:
    if not token:
        return None
    try:
        namespace, name = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise statuses.bad_request("continue key is not valid") from None
    return namespace, name


async def _events(queue: asyncio.Queue[JSON | None], timeout: float | None) -> AsyncIterator[JSON]:
    """Watch events until the server closes the watch or ``timeoutSeconds`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout is not None else None
    while True:
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            return
        try:
            item = await asyncio.wait_for(queue.get(), remaining)
        except TimeoutError:
            return
        if item is None:
            return
        yield item
