"""The ``/scale`` subresource of a custom resource against what Kubernetes documents.

The API reference of ``CustomResourceSubresourceScale`` (apiextensions.k8s.io/v1,
kubernetes.io/docs/reference/kubernetes-api/extend-resources/custom-resource-definition-v1/):

- specReplicasPath "defines the JSON path inside of a custom resource that corresponds to Scale
  ``spec.replicas`` [...] If there is no value under the given path in the custom resource, the
  ``/scale`` subresource will return an error on GET."
- statusReplicasPath "[...] corresponds to Scale ``status.replicas`` [...] If there is no value
  under the given path in the custom resource, the ``status.replicas`` value in the ``/scale``
  subresource will default to 0."
- labelSelectorPath "[...] corresponds to Scale ``status.selector`` [...] If there is no value
  under the given path in the custom resource, the ``status.selector`` value in the ``/scale``
  subresource will default to the empty string."

And "Custom Resources / Scale subresource" (tasks/extend-kubernetes/custom-resources/
custom-resource-definitions/#scale-subresource): "The ``autoscaling/v1.Scale`` object is sent as
the payload for ``/scale``."
"""

from __future__ import annotations

from typing import Any

from .conftest import KubeHTTP

LIS = "/apis/llmfab.dev/v1alpha1/namespaces/default/inferenceservices"


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "llmfab.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
            "spec": {"model": {"path": "/models/tiny"}, "release": {"license": "apache-2.0"}, **spec}}


def test_get_scale_is_an_error_while_the_spec_replicas_field_is_missing(api: KubeHTTP) -> None:
    api.post(LIS, service("chat"))
    got = api.get(f"{LIS}/chat/scale")
    assert got.status_code == 500 and got.json()["reason"] == "InternalError"
    assert 'the spec replicas field ".spec.replicas" does not exist' in got.json()["message"]


def test_get_scale_is_an_autoscaling_v1_scale_with_status_defaults(api: KubeHTTP) -> None:
    created = api.post(LIS, service("chat", replicas=2)).json()
    scale = api.get(f"{LIS}/chat/scale").json()
    meta = created["metadata"]
    assert scale == {
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": "chat", "namespace": "default", "uid": meta["uid"],
                     "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": 2},
        "status": {"replicas": 0, "selector": ""},  # no status yet: 0 and the empty string
    }
    api.patch(f"{LIS}/chat/status", {"status": {"replicas": 2, "selector": "app.kubernetes.io/instance=chat"}})
    assert api.get(f"{LIS}/chat/scale").json()["status"] == {"replicas": 2,
                                                             "selector": "app.kubernetes.io/instance=chat"}


def test_patch_of_scale_sets_spec_replicas_of_the_resource(api: KubeHTTP) -> None:
    api.post(LIS, service("chat", replicas=2))
    answer = api.patch(f"{LIS}/chat/scale", {"spec": {"replicas": 0}})
    assert answer.status_code == 200 and answer.json()["kind"] == "Scale"
    assert answer.json()["spec"]["replicas"] == 0
    stored = api.get(f"{LIS}/chat").json()
    assert stored["spec"]["replicas"] == 0 and stored["metadata"]["generation"] == 2
    assert answer.json()["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


def test_patch_of_scale_can_set_a_missing_field_but_not_leave_it_unset(api: KubeHTTP) -> None:
    api.post(LIS, service("chat"))
    empty = api.patch(f"{LIS}/chat/scale", {"metadata": {"labels": {"a": "b"}}})
    assert empty.status_code == 400 and "cannot be empty" in empty.json()["message"]
    assert api.patch(f"{LIS}/chat/scale", {"spec": {"replicas": 3}}).json()["spec"]["replicas"] == 3
    assert api.get(f"{LIS}/chat").json()["spec"]["replicas"] == 3


def test_put_of_scale_honours_its_resource_version(api: KubeHTTP) -> None:
    api.post(LIS, service("chat", replicas=1))
    scale = api.get(f"{LIS}/chat/scale").json()
    api.patch(f"{LIS}/chat", {"metadata": {"labels": {"touched": "yes"}}})  # the resource moves on
    stale = api.put(f"{LIS}/chat/scale", {**scale, "spec": {"replicas": 4}})
    assert stale.status_code == 409 and stale.json()["reason"] == "Conflict"
    fresh = api.get(f"{LIS}/chat/scale").json()
    assert api.put(f"{LIS}/chat/scale", {**fresh, "spec": {"replicas": 4}}).json()["spec"]["replicas"] == 4


def test_a_scale_write_is_admitted_like_an_update_of_the_resource(api: KubeHTTP) -> None:
    """The CRD's CEL rules judge the resulting object: replicas beside autoscaling is refused."""
    api.post(LIS, service("chat", autoscaling={"minReplicas": 0, "maxReplicas": 2}))
    refused = api.patch(f"{LIS}/chat/scale", {"spec": {"replicas": 0}})
    assert refused.status_code == 422 and refused.json()["reason"] == "Invalid"
    assert "spec.replicas and spec.autoscaling exclude each other" in refused.json()["message"]
    assert "replicas" not in api.get(f"{LIS}/chat").json()["spec"]
    too_many = api.post(LIS, service("wide", replicas=1))
    assert too_many.status_code == 201
    assert api.patch(f"{LIS}/wide/scale", {"spec": {"replicas": 65}}).status_code == 422  # maximum 64


def test_discovery_names_the_scale_subresource_as_autoscaling_v1(api: KubeHTTP) -> None:
    resources = api.get("/apis/llmfab.dev/v1alpha1").json()["resources"]
    [entry] = [r for r in resources if r["name"] == "inferenceservices/scale"]
    assert (entry["group"], entry["version"], entry["kind"]) == ("autoscaling", "v1", "Scale")
    assert sorted(entry["verbs"]) == ["get", "patch", "update"]
    assert not [r for r in resources if r["name"] == "trainingruns/scale"]  # only where the CRD declares it
