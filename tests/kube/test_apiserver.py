"""The test API server against what kubernetes.io documents a real one does ("Kubernetes API Concepts",
"Custom Resources", "Labels and Selectors", "Field Selectors"), over plain HTTP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .apiserver import KubeAPIServer
from .conftest import KubeHTTP

TR = "/apis/llmfab.dev/v1alpha1/namespaces/default/trainingruns"
CM = "/api/v1/namespaces/default/configmaps"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


def trainingrun(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "llmfab.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"dataset": {"name": "books"}, "release": {"license": "apache-2.0"}, **spec},
    }


def configmap(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels or {}},
        "data": {"k": "v"},
    }


def watch(api: KubeHTTP, path: str, count: int | None = None, **params: str) -> list[dict[str, Any]]:
    """The events of a watch: the first ``count`` of them, or all until the server ends it after
    ``timeoutSeconds`` (1 unless given)."""
    params = {"watch": "true", "timeoutSeconds": "1", **params}
    events: list[dict[str, Any]] = []
    with api.session.get(api.url + path, params=params, stream=True, timeout=30) as resp:
        assert resp.status_code == 200, resp.text
        for line in resp.iter_lines():
            if line:
                events.append(json.loads(line))
            if len(events) == count:
                break
    return events


# --- create / get / list ------------------------------------------------------------------------


def test_create_fills_uid_timestamp_generation_and_an_increasing_resource_version(api: KubeHTTP) -> None:
    first = api.post(TR, trainingrun("a"))
    second = api.post(TR, trainingrun("b"))
    assert first.status_code == second.status_code == 201
    a, b = first.json()["metadata"], second.json()["metadata"]
    assert a["uid"] != b["uid"] and len(a["uid"]) == 36
    assert a["creationTimestamp"].endswith("Z") and a["generation"] == 1
    assert isinstance(a["resourceVersion"], str) and int(b["resourceVersion"]) > int(a["resourceVersion"])
    assert api.get(f"{TR}/a").json() == first.json()


def test_generate_name_gets_a_random_suffix(api: KubeHTTP) -> None:
    created = api.post(CM, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "cfg-"}})
    name = created.json()["metadata"]["name"]
    assert created.status_code == 201 and name.startswith("cfg-") and len(name) == len("cfg-") + 5


def test_list_carries_kind_api_version_and_resource_version(api: KubeHTTP) -> None:
    api.post(TR, trainingrun("a"))
    listed = api.get(TR).json()
    assert listed["kind"] == "TrainingRunList" and listed["apiVersion"] == "llmfab.dev/v1alpha1"
    assert int(listed["metadata"]["resourceVersion"]) >= int(
        listed["items"][0]["metadata"]["resourceVersion"]
    )
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]


def test_list_pages_with_limit_and_continue(api: KubeHTTP) -> None:
    for name in "abcde":
        api.post(CM, configmap(name))
    page = api.get(CM, params={"limit": "2"}).json()
    names = [i["metadata"]["name"] for i in page["items"]]
    while page["metadata"].get("continue"):
        page = api.get(CM, params={"limit": "2", "continue": page["metadata"]["continue"]}).json()
        names += [i["metadata"]["name"] for i in page["items"]]
    assert names == list("abcde")


def test_duplicate_create_is_409_already_exists(api: KubeHTTP) -> None:
    api.post(TR, trainingrun("a"))
    again = api.post(TR, trainingrun("a"))
    assert again.status_code == 409
    assert again.json() | {"details": None} == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "code": 409,
        "reason": "AlreadyExists",
        "message": 'trainingruns.llmfab.dev "a" already exists',
        "details": None,
    }


def test_missing_object_is_404_not_found(api: KubeHTTP) -> None:
    missing = api.get(f"{TR}/nope")
    assert missing.status_code == 404
    assert (
        missing.json()["reason"] == "NotFound"
        and missing.json()["message"] == 'trainingruns.llmfab.dev "nope" not found'
    )
    assert api.patch(f"{TR}/nope", {"spec": {}}).status_code == 404
    assert api.delete(f"{TR}/nope").status_code == 404
    assert api.get("/apis/llmfab.dev/v1alpha1/namespaces/default/nothings").status_code == 404


def test_namespace_must_exist(api: KubeHTTP) -> None:
    created = api.post("/api/v1/namespaces/elsewhere/configmaps", configmap("a"))
    assert created.status_code == 404 and created.json()["message"] == 'namespaces "elsewhere" not found'
    assert (
        api.post(
            "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "elsewhere"}}
        ).status_code
        == 201
    )
    assert api.post("/api/v1/namespaces/elsewhere/configmaps", configmap("a")).status_code == 201


def test_invalid_names_and_labels_are_422(api: KubeHTTP) -> None:
    bad_name = api.post(CM, configmap("Not_Valid"))
    assert bad_name.status_code == 422 and bad_name.json()["details"]["causes"][0]["field"] == "metadata.name"
    bad_label = api.post(CM, configmap("ok", labels={"app": "x" * 64}))
    assert (
        bad_label.status_code == 422 and "must be no more than 63 characters" in bad_label.json()["message"]
    )


def test_pod_settings_a_real_api_server_refuses_are_422_with_the_field(api: KubeHTTP) -> None:
    """pkg/apis/core/validation's rules for what llmfab lets a resource's author set (issue 19)."""
    def pod(**spec: Any) -> dict[str, Any]:
        container = {"name": "c", "image": spec.pop("image", "x"), "resources": spec.pop("resources", {})}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container], **spec}}

    cases = [
        (pod(resources={"limits": {"cpu": "1.2.3"}}), "spec.containers[0].resources.limits[cpu]"),
        (pod(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}), "spec.containers[0].resources.requests[cpu]"),
        (pod(resources={"limits": {"nvidia.com/gpu": "0.5"}}), "spec.containers[0].resources.limits[nvidia.com/gpu]"),
        (pod(resources={"limits": {"gpu": "1"}}), "spec.containers[0].resources.limits[gpu]"),
        (pod(tolerations=[{"operator": "Equal", "value": "x"}]), "spec.tolerations[0].operator"),
        (pod(tolerations=[{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]), "spec.tolerations[0].effect"),
        (pod(nodeSelector={"Bad Key": "x"}), "spec.nodeSelector"),
        (pod(runtimeClassName="Not Valid"), "spec.runtimeClassName"),
        (pod(image=" x"), "spec.containers[0].image"),
    ]
    for body, field in cases:
        answer = api.post("/api/v1/namespaces/default/pods", body)
        assert answer.status_code == 422, (body, answer.text)
        assert field in [c["field"] for c in answer.json()["details"]["causes"]], answer.text
    assert api.post("/api/v1/namespaces/default/pods", pod(resources={"limits": {"nvidia.com/gpu": "1"}},
                                                           tolerations=[{"operator": "Exists"}])).status_code == 201
    recreate = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
        "selector": {"matchLabels": {"a": "b"}}, "strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}},
        "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    answer = api.post("/apis/apps/v1/namespaces/default/deployments", recreate)
    assert answer.status_code == 422 and "spec.strategy.rollingUpdate" in answer.text


# --- updates ------------------------------------------------------------------------------------


def test_generation_bumps_on_spec_changes_only(api: KubeHTTP) -> None:
    rv0 = api.post(TR, trainingrun("a", maxSteps=10)).json()["metadata"]["resourceVersion"]
    spec = api.patch(f"{TR}/a", {"spec": {"maxSteps": 20}}).json()["metadata"]
    labels = api.patch(f"{TR}/a", {"metadata": {"labels": {"x": "y"}}}).json()["metadata"]
    status = api.patch(f"{TR}/a/status", {"status": {"phase": "Running"}}).json()["metadata"]
    same = api.patch(f"{TR}/a", {"spec": {"maxSteps": 20}}).json()["metadata"]
    assert [spec["generation"], labels["generation"], status["generation"], same["generation"]] == [
        2,
        2,
        2,
        2,
    ]
    assert (
        int(rv0)
        < int(spec["resourceVersion"])
        < int(labels["resourceVersion"])
        < int(status["resourceVersion"])
    )
    assert same["resourceVersion"] == status["resourceVersion"]  # a no-op write is no new version


def test_status_subresource_is_apart_from_the_main_resource(api: KubeHTTP) -> None:
    created = api.post(TR, {**trainingrun("a"), "status": {"phase": "Running"}}).json()
    assert "status" not in created  # create cannot set status
    main = api.patch(f"{TR}/a", {"spec": {"maxSteps": 7}, "status": {"phase": "Failed"}}).json()
    assert main["spec"]["maxSteps"] == 7 and "status" not in main
    status = api.patch(
        f"{TR}/a/status", {"spec": {"maxSteps": 8}, "status": {"phase": "Running", "step": 3}}
    ).json()
    assert (
        status["spec"]["maxSteps"] == 7
        and status["status"]["phase"] == "Running"
        and status["status"]["step"] == 3
    )
    put = api.put(f"{TR}/a", {**status, "status": {"phase": "Failed"}}).json()
    assert put["status"]["phase"] == "Running"


def test_put_replaces_and_a_stale_resource_version_is_409_conflict(api: KubeHTTP) -> None:
    created = api.post(TR, trainingrun("a", maxSteps=5)).json()
    replaced = api.put(f"{TR}/a", {**created, "spec": {"dataset": {"name": "other"},
                                                       "release": {"license": "apache-2.0"}}})
    assert replaced.status_code == 200 and replaced.json()["spec"]["dataset"]["name"] == "other"
    assert replaced.json()["spec"]["maxSteps"] != 5  # replaced, then defaulted
    stale = api.put(f"{TR}/a", created)
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    assert "the object has been modified" in stale.json()["message"]


def test_json_patch_with_a_failed_test_is_422(api: KubeHTTP) -> None:
    rv = api.post(TR, trainingrun("a")).json()["metadata"]["resourceVersion"]
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x.dev/f"]},
    ]
    failed = api.patch(f"{TR}/a", ops, "application/json-patch+json")
    assert failed.status_code == 422 and failed.json()["reason"] == "Invalid"
    ops[0]["value"] = rv
    assert api.patch(f"{TR}/a", ops, "application/json-patch+json").json()["metadata"]["finalizers"] == [
        "x.dev/f"
    ]


def test_strategic_merge_patch_is_415_for_custom_resources(api: KubeHTTP) -> None:
    api.post(TR, trainingrun("a"))
    assert api.patch(f"{TR}/a", {"spec": {}}, "application/strategic-merge-patch+json").status_code == 415


def test_dry_run_validates_and_stores_nothing(api: KubeHTTP) -> None:
    dry = api.post(TR, trainingrun("a"), params={"dryRun": "All"})
    assert dry.status_code == 201 and dry.json()["spec"]["objective"] == "pretrain"
    assert api.get(f"{TR}/a").status_code == 404
    assert (
        api.post(
            TR, trainingrun("a", model={"hidden": 500, "heads": 8}), params={"dryRun": "All"}
        ).status_code
        == 422
    )
    api.post(TR, trainingrun("a"))
    assert (
        api.patch(f"{TR}/a", {"spec": {"maxSteps": 9}}, params={"dryRun": "All"}).json()["spec"]["maxSteps"]
        == 9
    )
    assert api.get(f"{TR}/a").json()["spec"]["maxSteps"] != 9
    assert api.delete(f"{TR}/a", params={"dryRun": "All"}).status_code == 200
    assert api.get(f"{TR}/a").status_code == 200


# --- admission of custom resources (structural schema, defaults, CEL) ---------------------------


def test_defaults_from_the_crd_schema_are_applied_on_create(api: KubeHTTP) -> None:
    spec = api.post(TR, trainingrun("a")).json()["spec"]
    assert spec["objective"] == "pretrain"
    assert {"layers", "hidden", "heads"} <= set(spec["model"])


def test_cel_rule_hidden_divisible_by_heads_is_422_with_the_field(api: KubeHTTP) -> None:
    bad = api.post(TR, trainingrun("bad", model={"hidden": 500, "heads": 8}))
    assert bad.status_code == 422
    status = bad.json()
    assert status["reason"] == "Invalid" and status["details"]["kind"] == "TrainingRun"
    assert (
        status["message"]
        == 'TrainingRun.llmfab.dev "bad" is invalid: spec.model: Invalid value: "object": hidden must be divisible by heads'
    )
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "field": "spec.model",
            "message": 'Invalid value: "object": hidden must be divisible by heads',
        },
    ]


def test_schema_type_error_is_422_with_the_field(api: KubeHTTP) -> None:
    bad = api.post(TR, trainingrun("bad", model={"hidden": "big"}))
    assert bad.status_code == 422
    assert bad.json()["details"]["causes"][0]["field"] == "spec.model.hidden"
    assert "must be of type integer" in bad.json()["message"]
    enum = api.post(TR, trainingrun("bad", objective="guess"))
    assert enum.status_code == 422 and 'spec.objective: Unsupported value: "guess"' in enum.json()["message"]


def test_updates_are_validated_too(api: KubeHTTP) -> None:
    api.post(TR, trainingrun("a"))
    assert api.patch(f"{TR}/a", {"spec": {"model": {"hidden": 500, "heads": 8}}}).status_code == 422
    assert api.patch(f"{TR}/a/status", {"status": {"phase": "Exploded"}}).status_code == 422


def test_unknown_fields_are_pruned_or_refused_under_strict_validation(api: KubeHTTP) -> None:
    body = trainingrun("a", modle={"hidden": 8})
    strict = api.post(TR, body, params={"fieldValidation": "Strict"})
    assert strict.status_code == 400 and 'unknown field "spec.modle"' in strict.json()["message"]
    lenient = api.post(TR, body)
    assert lenient.status_code == 201 and "modle" not in lenient.json()["spec"]
    assert lenient.headers["Warning"] == '299 - "unknown field \\"spec.modle\\""'


def test_a_crd_created_through_the_api_is_served(kube_apiserver: KubeAPIServer, api: KubeHTTP) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1, "default": 3}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    assert api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd).status_code == 201
    stored = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com").json()
    assert {c["type"] for c in stored["status"]["conditions"]} == {"NamesAccepted", "Established"}
    path = "/apis/example.com/v1/namespaces/default/widgets"
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    assert api.post(path, widget).json()["spec"] == {"size": 3}
    too_small = api.post(path, {**widget, "metadata": {"name": "x"}, "spec": {"size": 0}})
    assert too_small.status_code == 422 and "spec.size" in too_small.json()["message"]
    api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com")
    assert api.get(path).status_code == 404


# --- watch --------------------------------------------------------------------------------------


def test_watch_from_a_resource_version_replays_what_came_after(api: KubeHTTP) -> None:
    rv = api.post(CM, configmap("a")).json()["metadata"]["resourceVersion"]
    api.post(CM, configmap("b"))
    api.patch(f"{CM}/a", {"data": {"k": "w"}})
    api.delete(f"{CM}/b")
    events = watch(api, CM, resourceVersion=rv)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"),
        ("MODIFIED", "a"),
        ("DELETED", "b"),
    ]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_watch_without_a_resource_version_starts_with_the_current_state(api: KubeHTTP) -> None:
    api.post(CM, configmap("a"))
    events = watch(api, CM, count=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a")]
    initial = watch(
        api,
        CM,
        count=2,
        sendInitialEvents="true",
        resourceVersionMatch="NotOlderThan",
        allowWatchBookmarks="true",
    )
    assert [e["type"] for e in initial] == ["ADDED", "BOOKMARK"]
    assert initial[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_loses_no_event_created_while_it_starts(api: KubeHTTP) -> None:
    names = [f"cm-{i}" for i in range(60)]
    other_client = KubeHTTP(api.url)  # requests sessions are not for sharing between threads
    writer = threading.Thread(target=lambda: [other_client.post(CM, configmap(n)) for n in names])
    writer.start()
    time.sleep(0.02)
    events = watch(api, CM, count=len(names), timeoutSeconds="10")
    writer.join()
    added = [e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"]
    assert sorted(added) == sorted(names)  # each exactly once, from the snapshot or from the stream


def test_watch_follows_label_selection_in_and_out(api: KubeHTTP) -> None:
    rv = api.get(CM).json()["metadata"]["resourceVersion"]
    api.post(CM, configmap("a", {"team": "ml"}))
    api.post(CM, configmap("b", {"team": "web"}))
    api.patch(f"{CM}/b", {"metadata": {"labels": {"team": "ml"}}})
    api.patch(f"{CM}/a", {"metadata": {"labels": {"team": "web"}}})
    events = watch(api, CM, resourceVersion=rv, labelSelector="team=ml")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
    ]


# --- selectors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("team=ml", ["a", "c"]),
        ("team==ml,tier=gpu", ["c"]),
        ("team!=ml", ["b", "d"]),
        ("team in (web, ml)", ["a", "b", "c"]),
        ("team notin (ml)", ["b", "d"]),
        ("tier", ["c"]),
        ("!team", ["d"]),
    ],
)
def test_label_selectors(api: KubeHTTP, selector: str, names: list[str]) -> None:
    for name, labels in (
        ("a", {"team": "ml"}),
        ("b", {"team": "web"}),
        ("c", {"team": "ml", "tier": "gpu"}),
        ("d", {}),
    ):
        api.post(CM, configmap(name, labels))
    listed = api.get(CM, params={"labelSelector": selector}).json()["items"]
    assert [i["metadata"]["name"] for i in listed] == names


def test_field_selectors_by_name_and_namespace(api: KubeHTTP) -> None:
    api.post(CM, configmap("a"))
    api.post(CM, configmap("b"))
    by_name = api.get("/api/v1/configmaps", params={"fieldSelector": "metadata.name=b"}).json()["items"]
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in by_name] == [("default", "b")]
    not_default = api.get(
        "/api/v1/configmaps", params={"fieldSelector": "metadata.namespace!=default"}
    ).json()["items"]
    assert not_default == []
    unsupported = api.get(CM, params={"fieldSelector": "data.k=v"})
    assert (
        unsupported.status_code == 400
        and "field label not supported: data.k" in unsupported.json()["message"]
    )


# --- discovery, printing, request log -----------------------------------------------------------


def test_discovery_serves_core_v1_and_the_llmfab_kinds(api: KubeHTTP) -> None:
    assert api.get("/api/v1").json()["groupVersion"] == "v1"
    resources = {r["name"]: r for r in api.get("/apis/llmfab.dev/v1alpha1").json()["resources"]}
    assert {"datasets", "trainingruns", "rewardmodels", "inferenceservices", "trainingruns/status"} <= set(
        resources
    )
    crd = yaml.safe_load(open("charts/llmfab/crds/llmfab.dev_trainingruns.yaml"))["spec"]["names"]
    assert resources["trainingruns"]["shortNames"] == crd["shortNames"]
    assert resources["trainingruns"]["categories"] == crd["categories"]
    assert (
        resources["trainingruns"]["kind"] == "TrainingRun" and resources["trainingruns"]["namespaced"] is True
    )
    groups = {g["name"]: g for g in api.get("/apis").json()["groups"]}
    assert groups["llmfab.dev"]["preferredVersion"]["groupVersion"] == "llmfab.dev/v1alpha1"


def test_table_has_the_crd_printer_columns(kube_apiserver: KubeAPIServer, api: KubeHTTP) -> None:
    api.post(TR, trainingrun("a"))
    api.patch(f"{TR}/a/status", {"status": {"phase": "Running", "step": 12, "loss": 5.5}})
    table = api.get(TR, headers={"Accept": TABLE}).json()
    columns = kube_apiserver.resource_type("trainingruns").printer_columns or []
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", *[c["name"] for c in columns]]
    cells = dict(zip([c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"], strict=True))
    assert (
        cells["Name"] == "a" and cells["Phase"] == "Running" and cells["Step"] == 12 and cells["Loss"] == 5.5
    )
    assert cells["Age"].endswith("s")
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_request_log_names_verb_resource_and_subresource(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(TR, trainingrun("a"))
    api.patch(f"{TR}/a/status", {"status": {"phase": "Running"}})
    api.get(TR, params={"watch": "true", "timeoutSeconds": "0"})
    api.delete(f"{TR}/a")
    logged = [
        (r.verb, r.api_group, r.resource, r.subresource, r.namespace, r.code)
        for r in kube_apiserver.request_log
    ]
    assert logged == [
        ("create", "llmfab.dev", "trainingruns", None, "default", 201),
        ("patch", "llmfab.dev", "trainingruns", "status", "default", 200),
        ("watch", "llmfab.dev", "trainingruns", None, "default", 200),
        ("delete", "llmfab.dev", "trainingruns", None, "default", 200),
    ]


def test_kmock_reactions_answer_before_the_emulated_api(kube_apiserver: KubeAPIServer, api: KubeHTTP) -> None:
    kube_apiserver["patch", kube_apiserver.resource("llmfab.dev", "v1alpha1", "trainingruns")] << 503
    api.post(TR, trainingrun("a"))
    assert api.patch(f"{TR}/a", {"spec": {"maxSteps": 3}}).status_code == 503
    assert api.get(f"{TR}/a").status_code == 200


def test_the_kubernetes_client_works_through_the_kubeconfig(kubeconfig: Path) -> None:
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    namespaces = client.CoreV1Api(api_client).list_namespace()
    assert "default" in [n.metadata.name for n in namespaces.items]
    custom = client.CustomObjectsApi(api_client)
    custom.create_namespaced_custom_object(
        "llmfab.dev", "v1alpha1", "default", "trainingruns", trainingrun("a")
    )
    run = custom.get_namespaced_custom_object("llmfab.dev", "v1alpha1", "default", "trainingruns", "a")
    assert run["spec"]["objective"] == "pretrain"
    custom.patch_namespaced_custom_object_status(
        "llmfab.dev", "v1alpha1", "default", "trainingruns", "a", {"status": {"phase": "Running"}}
    )
    with pytest.raises(client.ApiException) as conflict:
        custom.create_namespaced_custom_object(
            "llmfab.dev", "v1alpha1", "default", "trainingruns", trainingrun("a")
        )
    assert conflict.value.status == 409
