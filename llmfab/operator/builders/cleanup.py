"""``spec.deletionPolicy: Delete``: a Job that removes a deleted resource's artifacts from the
shared volume (the operator itself does not mount it). It has no owner: the resource it cleans up
after is being deleted, and would take the Job with it. Its annotation names that resource's uid, so
that a clean-up Job left by an earlier resource of the same name is never taken for this one's.
The operator creates it only once no pod of the resource runs (llmfab/operator/deletion.py)."""

from __future__ import annotations

from llmfab.api.common import Resource
from llmfab.operator.builders.common import Manifest, child_name, labels, pod_spec
from llmfab.operator.settings import OperatorSettings

CLEANUP_COMPONENT = "cleanup"
OWNER_UID_ANNOTATION = "llmfab.dev/owner-uid"


def cleanup_job_name(res: Resource) -> str:
    return child_name(res, CLEANUP_COMPONENT)


def build_cleanup_job(res: Resource, settings: OperatorSettings) -> Manifest:
    spec = pod_spec(res, settings, "delete", settings.trainer_image, gpus=0, status="off")
    container = spec["containers"][0]
    container["command"] = ["python", "-m", "llmfab", "delete", res.KIND, res.name]
    container["resources"] = {}
    # No spec file to read: the ConfigMap goes with the resource.
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "spec"]
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "spec"]
    spec.pop("runtimeClassName", None)
    spec["restartPolicy"] = "OnFailure"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": cleanup_job_name(res), "namespace": res.metadata.namespace,
                     "labels": labels(res, CLEANUP_COMPONENT, with_revision=False),
                     "annotations": {OWNER_UID_ANNOTATION: res.metadata.uid or ""}},
        "spec": {"backoffLimit": 3, "ttlSecondsAfterFinished": 600,
                 "template": {"metadata": {"labels": labels(res, CLEANUP_COMPONENT, with_revision=False)}, "spec": spec}},
    }
