"""Deletion, garbage collection and the Job controller stand-in, against kubernetes.io's documentation
("Finalizers", "Garbage Collection", "Jobs")."""

from __future__ import annotations

from typing import Any

from .apiserver import KubeAPIServer
from .conftest import KubeHTTP
from .objectstore import JOB_DELETE_WARNING

TR = "/apis/llmfab.dev/v1alpha1/namespaces/default/trainingruns"
CM = "/api/v1/namespaces/default/configmaps"
JOBS = "/apis/batch/v1/namespaces/default/jobs"
PODS = "/api/v1/namespaces/default/pods"


def owned_configmap(name: str, owner: dict[str, Any]) -> dict[str, Any]:
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [ref]}}


def job(name: str, **spec: Any) -> dict[str, Any]:
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "llmfab:test"}]}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": template, **spec},
    }


def trainingrun(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "llmfab.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {"dataset": {"name": "books"}, "release": {"license": "apache-2.0"}},
    }


# --- finalizers ---------------------------------------------------------------------------------


def test_finalizers_hold_a_deleted_object_until_they_are_removed(api: KubeHTTP) -> None:
    api.post(TR, {**trainingrun("a"), "metadata": {"name": "a", "finalizers": ["llmfab.dev/cleanup"]}})
    deleting = api.delete(f"{TR}/a")
    assert deleting.status_code == 202
    meta = api.get(f"{TR}/a").json()["metadata"]
    assert meta["deletionTimestamp"] and meta["generation"] == 2  # markAsDeleting bumps the generation
    assert api.delete(f"{TR}/a").status_code == 202  # deleting again changes nothing
    no_new = api.patch(f"{TR}/a", {"metadata": {"finalizers": ["llmfab.dev/cleanup", "other.dev/x"]}})
    assert no_new.status_code == 422 and "no new finalizers" in no_new.json()["message"]
    assert api.patch(f"{TR}/a", {"metadata": {"finalizers": None}}).status_code == 200
    assert api.get(f"{TR}/a").status_code == 404


# --- garbage collection -------------------------------------------------------------------------


def test_deleting_an_owner_deletes_its_dependents_in_the_background(api: KubeHTTP) -> None:
    owner = api.post(TR, trainingrun("a")).json()
    api.post(CM, owned_configmap("child", owner))
    grandchild_owner = api.get(f"{CM}/child").json()
    api.post(CM, owned_configmap("grandchild", grandchild_owner))
    api.post(CM, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "unrelated"}})
    assert api.delete(f"{TR}/a").status_code == 200
    assert [i["metadata"]["name"] for i in api.get(CM).json()["items"]] == ["unrelated"]


def test_orphan_propagation_keeps_dependents_and_drops_their_reference(api: KubeHTTP) -> None:
    owner = api.post(TR, trainingrun("a")).json()
    api.post(CM, owned_configmap("child", owner))
    api.delete(f"{TR}/a", {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Orphan"})
    child = api.get(f"{CM}/child").json()
    assert "ownerReferences" not in child["metadata"]


def test_foreground_propagation_deletes_dependents_first(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    owner = api.post(TR, trainingrun("a")).json()
    api.post(CM, owned_configmap("child", owner))
    api.delete(f"{TR}/a", params={"propagationPolicy": "Foreground"})
    deleted = [
        (ev.key[1], ev.obj["metadata"]["name"]) for ev in kube_apiserver.store.events if ev.type == "DELETED"
    ]
    assert deleted == [("configmaps", "child"), ("trainingruns", "a")]


def test_a_dependent_keeps_living_while_another_owner_does(api: KubeHTTP) -> None:
    first = api.post(TR, trainingrun("a")).json()
    second = api.post(TR, trainingrun("b")).json()
    both = owned_configmap("shared", first)
    both["metadata"]["ownerReferences"].append(
        {**owned_configmap("x", second)["metadata"]["ownerReferences"][0], "controller": False}
    )
    api.post(CM, both)
    api.delete(f"{TR}/a")
    refs = api.get(f"{CM}/shared").json()["metadata"]["ownerReferences"]
    assert [r["name"] for r in refs] == ["b"]


def test_a_dependent_whose_owner_does_not_exist_is_collected(api: KubeHTTP) -> None:
    ghost = {
        "apiVersion": "llmfab.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "gone", "uid": "0000"},
    }
    assert api.post(CM, owned_configmap("dangling", ghost)).status_code == 201
    assert api.get(f"{CM}/dangling").status_code == 404


def test_deleting_a_namespace_deletes_its_contents(api: KubeHTTP) -> None:
    api.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    api.post(
        "/api/v1/namespaces/team/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
    )
    api.delete("/api/v1/namespaces/team")
    assert api.get("/api/v1/namespaces/team/configmaps/c").status_code == 404
    assert api.get("/api/v1/namespaces/team").status_code == 404


# --- the Job controller stand-in ----------------------------------------------------------------


def test_a_job_gets_its_selector_labels_and_pods(kube_apiserver: KubeAPIServer, api: KubeHTTP) -> None:
    created = api.post(JOBS, job("train", parallelism=2, completions=2)).json()
    uid = created["metadata"]["uid"]
    assert created["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert created["spec"]["backoffLimit"] == 6
    pods = kube_apiserver.items("pods", "default", labels=f"job-name=train,controller-uid={uid}")
    assert len(pods) == 2
    for pod in pods:
        assert (
            pod["metadata"]["name"].startswith("train-") and len(pod["metadata"]["name"]) == len("train-") + 5
        )
        assert pod["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "train"
        assert pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] == uid
        ref = pod["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Job", "train", uid, True)
        assert pod["status"]["phase"] == "Pending"
    status = api.get(f"{JOBS}/train").json()["status"]
    assert status["active"] == 2 and status["startTime"] and "succeeded" not in status


def test_an_indexed_job_names_and_annotates_pods_by_index(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(JOBS, job("ranks", completionMode="Indexed", completions=3, parallelism=3))
    pods = sorted(kube_apiserver.items("pods"), key=lambda p: p["metadata"]["name"])
    assert [p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods] == [
        "0",
        "1",
        "2",
    ]
    for i, pod in enumerate(pods):
        assert pod["metadata"]["name"].startswith(f"ranks-{i}-")
        assert pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == str(i)
        assert pod["spec"]["hostname"] == f"ranks-{i}"
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"].endswith(
            "job-completion-index']"
        )


def test_a_job_completes_when_its_pods_succeed(kube_apiserver: KubeAPIServer, api: KubeHTTP) -> None:
    api.post(JOBS, job("ranks", completionMode="Indexed", completions=2, parallelism=2))
    first, second = sorted(kube_apiserver.items("pods"), key=lambda p: p["metadata"]["name"])
    kube_apiserver.set_pod_phase(first, "Running")
    assert api.get(f"{JOBS}/ranks").json()["status"]["ready"] == 1
    kube_apiserver.set_pod_phase(first, "Succeeded")
    status = api.get(f"{JOBS}/ranks").json()["status"]
    assert (status["active"], status["succeeded"], status["completedIndexes"]) == (1, 1, "0")
    assert "conditions" not in status
    kube_apiserver.set_pod_phase(second, "Succeeded")
    status = api.get(f"{JOBS}/ranks").json()["status"]
    assert "active" not in status and status["succeeded"] == 2 and status["completedIndexes"] == "0,1"
    assert status["completionTime"]
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("SuccessCriteriaMet", "True", "CompletionsReached"),
        ("Complete", "True", "CompletionsReached"),
    ]


def test_a_job_replaces_failed_pods_then_fails_past_its_backoff_limit(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(JOBS, job("flaky", backoffLimit=1))
    [pod] = kube_apiserver.items("pods")
    kube_apiserver.set_pod_phase(pod, "Failed")
    status = api.get(f"{JOBS}/flaky").json()["status"]
    assert (status["failed"], status["active"]) == (1, 1) and "conditions" not in status
    replacement = next(p for p in kube_apiserver.items("pods") if p["status"]["phase"] == "Pending")
    kube_apiserver.set_pod_phase(replacement, "Failed", exit_code=137)
    status = api.get(f"{JOBS}/flaky").json()["status"]
    assert status["failed"] == 2 and "active" not in status and "completionTime" not in status
    assert [(c["type"], c["reason"]) for c in status["conditions"]] == [
        ("FailureTarget", "BackoffLimitExceeded"),
        ("Failed", "BackoffLimitExceeded"),
    ]
    terminated = api.get(f"{PODS}/{replacement['metadata']['name']}").json()["status"]["containerStatuses"][0]
    assert terminated["state"]["terminated"]["exitCode"] == 137


def test_job_validation_refuses_what_a_real_server_refuses(api: KubeHTTP) -> None:
    always = job("a")
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    refused = api.post(JOBS, always)
    assert (
        refused.status_code == 422
        and "spec.template.spec.restartPolicy: Required value" in refused.json()["message"]
    )
    indexed = api.post(JOBS, job("b", completionMode="Indexed", parallelism=2))
    assert indexed.status_code == 422 and "spec.completions" in indexed.json()["message"]
    api.post(JOBS, job("c"))
    changed = api.patch(
        f"{JOBS}/c", {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "other"}]}}}}
    )
    assert changed.status_code == 422 and "spec.template: Invalid value" in changed.json()["message"]


def test_deleting_a_job_orphans_its_pods_unless_told_otherwise(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(JOBS, job("a"))
    default = api.delete(f"{JOBS}/a")
    assert default.headers["Warning"] == f'299 - "{JOB_DELETE_WARNING}"'
    assert (
        len(kube_apiserver.items("pods")) == 1
        and "ownerReferences" not in kube_apiserver.items("pods")[0]["metadata"]
    )
    api.post(JOBS, job("b"))
    api.delete(f"{JOBS}/b", {"propagationPolicy": "Background"})
    assert len(kube_apiserver.items("pods")) == 1


def test_deleting_the_owner_of_a_job_deletes_the_job_and_its_pods(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    run = api.post(TR, trainingrun("tiny")).json()
    owned = job("tiny-train")
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": run["apiVersion"],
            "kind": "TrainingRun",
            "name": "tiny",
            "uid": run["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    api.post(JOBS, owned)
    assert len(kube_apiserver.items("pods")) == 1
    api.delete(f"{TR}/tiny")
    assert kube_apiserver.items("jobs") == [] and kube_apiserver.items("pods") == []


POLICY = {"rules": [
    {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [2]}},
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
]}


def test_suspending_a_running_job_deletes_its_pods_and_resuming_recreates_them(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(JOBS, job("ranks", completionMode="Indexed", completions=2, parallelism=2))
    assert len(kube_apiserver.items("pods")) == 2
    api.patch(f"{JOBS}/ranks", {"spec": {"suspend": True}})
    assert kube_apiserver.items("pods") == []
    status = api.get(f"{JOBS}/ranks").json()["status"]
    assert "active" not in status
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Suspended", "True", "JobSuspended")]
    api.patch(f"{JOBS}/ranks", {"spec": {"suspend": False}})
    assert len(kube_apiserver.items("pods")) == 2
    status = api.get(f"{JOBS}/ranks").json()["status"]
    assert status["active"] == 2
    assert ("Suspended", "False", "JobResumed") in [(c["type"], c["status"], c["reason"]) for c in status["conditions"]]


def test_a_pod_failure_policy_fails_the_job_at_once_on_a_matching_exit_code(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(JOBS, job("bad", completionMode="Indexed", completions=1, parallelism=1, backoffLimitPerIndex=3,
                       maxFailedIndexes=0, podFailurePolicy=POLICY))
    [pod] = kube_apiserver.items("pods")
    kube_apiserver.set_pod_phase(pod, "Failed", exit_code=2)
    status = api.get(f"{JOBS}/bad").json()["status"]
    assert [(c["type"], c["reason"]) for c in status["conditions"]] == [
        ("FailureTarget", "PodFailurePolicy"), ("Failed", "PodFailurePolicy")]
    assert len(kube_apiserver.items("pods")) == 1  # no retry


def test_backoff_limit_per_index_retries_each_index_then_fails_it(kube_apiserver: KubeAPIServer, api: KubeHTTP) -> None:
    api.post(JOBS, job("ranks", completionMode="Indexed", completions=2, parallelism=2, backoffLimitPerIndex=1,
                       maxFailedIndexes=0, podFailurePolicy=POLICY))

    def pod_of(index: str) -> dict[str, Any]:
        return next(p for p in kube_apiserver.items("pods", labels=f"batch.kubernetes.io/job-completion-index={index}")
                    if p["status"].get("phase") in (None, "Pending", "Running"))

    kube_apiserver.set_pod_phase(pod_of("1"), "Failed", exit_code=1)  # counted: index 1 retried once
    status = api.get(f"{JOBS}/ranks").json()["status"]
    assert status["active"] == 2 and "conditions" not in status
    disrupted = pod_of("1")
    disrupted_status = {"phase": "Failed", "conditions": [{"type": "DisruptionTarget", "status": "True"}],
                        "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 143}}}]}
    api.patch(f"{PODS}/{disrupted['metadata']['name']}/status", {"status": disrupted_status})
    status = api.get(f"{JOBS}/ranks").json()["status"]
    assert status["active"] == 2 and "failedIndexes" not in status  # a disruption does not count
    kube_apiserver.set_pod_phase(pod_of("1"), "Failed", exit_code=1)  # second counted failure of index 1
    status = api.get(f"{JOBS}/ranks").json()["status"]
    assert status["failedIndexes"] == "1"
    assert [(c["type"], c["reason"]) for c in status["conditions"]] == [
        ("FailureTarget", "MaxFailedIndexesExceeded"), ("Failed", "MaxFailedIndexesExceeded")]


# --- graceful pod deletion and foreground deletion ("Pod Lifecycle", "Garbage Collection") -------


def pod(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": "llmfab:test"}], **spec}}


def bind(api: KubeHTTP, name: str, node: str = "node-1") -> int:
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
               "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
    return api.post(f"{PODS}/{name}/binding", binding).status_code


def test_binding_assigns_a_pod_to_a_node_once(api: KubeHTTP) -> None:
    api.post(PODS, pod("p"))
    assert bind(api, "p") == 201
    assert api.get(f"{PODS}/p").json()["spec"]["nodeName"] == "node-1"
    again = api.post(f"{PODS}/p/binding", {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
                                           "target": {"kind": "Node", "name": "node-2"}})
    assert again.status_code == 409 and "already assigned to node" in again.json()["message"]


def test_a_running_pod_is_deleted_gracefully_and_goes_when_its_kubelet_deletes_it(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(PODS, pod("p", terminationGracePeriodSeconds=45))
    bind(api, "p")
    kube_apiserver.set_pod_phase("p", "Running")
    deleting = api.delete(f"{PODS}/p")
    assert deleting.status_code == 202
    meta = api.get(f"{PODS}/p").json()["metadata"]  # still there: its kubelet has to stop it first
    assert meta["deletionGracePeriodSeconds"] == 45 and meta["deletionTimestamp"] > meta["creationTimestamp"]
    api.delete(f"{PODS}/p", {"gracePeriodSeconds": 60})  # a longer period changes nothing
    assert api.get(f"{PODS}/p").json()["metadata"]["deletionGracePeriodSeconds"] == 45
    api.delete(f"{PODS}/p", params={"gracePeriodSeconds": "5"})  # a shorter one applies
    assert api.get(f"{PODS}/p").json()["metadata"]["deletionGracePeriodSeconds"] == 5
    kube_apiserver.set_pod_phase("p", "Failed", exit_code=143)
    assert api.delete(f"{PODS}/p", {"gracePeriodSeconds": 0}).status_code == 200  # the kubelet's last word
    assert api.get(f"{PODS}/p").status_code == 404


def test_an_unbound_or_finished_pod_is_deleted_at_once(kube_apiserver: KubeAPIServer, api: KubeHTTP) -> None:
    api.post(PODS, pod("unbound"))
    assert api.delete(f"{PODS}/unbound").status_code == 200
    assert api.get(f"{PODS}/unbound").status_code == 404
    api.post(PODS, pod("done"))
    bind(api, "done")
    kube_apiserver.set_pod_phase("done", "Succeeded")
    api.delete(f"{PODS}/done")
    assert api.get(f"{PODS}/done").status_code == 404


def test_foreground_deletion_of_a_job_lasts_until_its_pods_are_gone(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(JOBS, job("a", backoffLimit=3))
    [p] = kube_apiserver.items("pods")
    name = p["metadata"]["name"]
    bind(api, name)
    kube_apiserver.set_pod_phase(name, "Running")
    assert api.delete(f"{JOBS}/a", {"propagationPolicy": "Foreground"}).status_code == 202
    held = api.get(f"{JOBS}/a").json()
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["foregroundDeletion"]
    assert api.get(f"{PODS}/{name}").json()["metadata"]["deletionTimestamp"]
    kube_apiserver.set_pod_phase(name, "Failed", exit_code=143)  # SIGTERM ended it
    assert [q["metadata"]["name"] for q in kube_apiserver.items("pods")] == [name]  # no replacement
    assert api.get(f"{JOBS}/a").status_code == 200
    api.delete(f"{PODS}/{name}", {"gracePeriodSeconds": 0})
    assert api.get(f"{JOBS}/a").status_code == 404
    deleted = [(ev.key[1], ev.obj["metadata"]["name"]) for ev in kube_apiserver.store.events if ev.type == "DELETED"]
    assert deleted == [("pods", name), ("jobs", "a")]


# --- the Deployment controller stand-in ("Deployments": scaling, status) -------------------------

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def deployment(name: str, image: str = "llmfab:test", **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": labels}, **spec,
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "main", "image": image}]}}}}


def server_pods(kube_apiserver: KubeAPIServer, name: str = "d") -> list[dict[str, Any]]:
    return [p for p in kube_apiserver.items("pods", labels=f"app={name}") if not p["metadata"].get("deletionTimestamp")]


def test_a_deployment_keeps_its_replicas_and_reports_the_ready_ones(kube_apiserver: KubeAPIServer,
                                                                     api: KubeHTTP) -> None:
    api.post(DEPLOYMENTS, deployment("d"))  # no replicas: the server defaults 1
    [first] = server_pods(kube_apiserver)
    assert first["metadata"]["labels"]["pod-template-hash"] and first["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert api.get(f"{DEPLOYMENTS}/d").json()["status"] == {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}
    api.patch(f"{DEPLOYMENTS}/d", {"spec": {"replicas": 3}})
    pods = server_pods(kube_apiserver)
    assert len(pods) == 3
    for p in pods[:2]:
        kube_apiserver.set_pod_phase(p, "Running")
    status = api.get(f"{DEPLOYMENTS}/d").json()["status"]
    assert status == {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2,
                      "availableReplicas": 2}
    api.patch(f"{DEPLOYMENTS}/d", {"spec": {"replicas": 2}})  # the pod that is not ready goes first
    assert sorted(p["metadata"]["name"] for p in server_pods(kube_apiserver)) == sorted(
        p["metadata"]["name"] for p in pods[:2])
    api.patch(f"{DEPLOYMENTS}/d", {"spec": {"replicas": 0}})
    assert server_pods(kube_apiserver) == []
    assert api.get(f"{DEPLOYMENTS}/d").json()["status"] == {"observedGeneration": 4}


def test_a_new_template_replaces_the_pods_and_deleting_the_deployment_collects_them(
    kube_apiserver: KubeAPIServer, api: KubeHTTP
) -> None:
    api.post(DEPLOYMENTS, deployment("d", replicas=2))
    old = {p["metadata"]["name"] for p in server_pods(kube_apiserver)}
    api.patch(f"{DEPLOYMENTS}/d", {"spec": {"template": deployment("d", image="llmfab:new")["spec"]["template"]}})
    new = server_pods(kube_apiserver)
    assert len(new) == 2 and not old & {p["metadata"]["name"] for p in new}
    assert {p["spec"]["containers"][0]["image"] for p in new} == {"llmfab:new"}
    api.delete(f"{DEPLOYMENTS}/d")
    assert kube_apiserver.items("pods", labels="app=d") == []
