"""A Dataset on the cluster: a stage Job running ``llmfab data run`` (with ``engine: ray`` and an
address, that Job connects to the Ray cluster itself), or, with KubeRay and
``spec.engine.ray.cluster``, a ``RayJob`` submitted to that RayCluster.

A RayJob's entrypoint runs on the Ray head, where no spec ConfigMap is mounted: the spec travels in
the RayJob's runtime environment and the entrypoint writes it to a file first. The RayCluster's
pods need the llmfab trainer image and the artifact volume at ``/artifacts``."""

from __future__ import annotations

import shlex

import yaml

from llmfab.api.dataset import Dataset
from llmfab.operator.builders.common import (
    ARTIFACTS,
    Manifest,
    child_name,
    metadata,
    pod_resource,
    revision,
)
from llmfab.operator.builders.jobs import build_stage_job
from llmfab.operator.settings import OperatorSettings
from llmfab.stages import render_spec, stage_command

RAY_SPEC_FILE = "/tmp/llmfab-spec.yaml"


def uses_ray_job(res: Dataset) -> bool:
    return res.spec.engine.type == "ray" and res.spec.engine.ray.cluster is not None


def build_dataset_children(res: Dataset, settings: OperatorSettings) -> list[Manifest]:
    return [build_ray_job(res) if uses_ray_job(res) else build_stage_job(res, "data", settings)]


def build_ray_job(res: Dataset) -> Manifest:
    cluster = res.spec.engine.ray.cluster
    assert cluster is not None
    run = shlex.join(stage_command("data", RAY_SPEC_FILE))
    entrypoint = f'printf %s "$LLMFAB_SPEC" > {RAY_SPEC_FILE} && exec {run}'
    runtime_env = {
        "env_vars": {
            "LLMFAB_SPEC": render_spec(pod_resource(res)),
            "LLMFAB_HOME": ARTIFACTS,
            "LLMFAB_STATUS": "kubernetes",
            **{e.name: e.value for e in res.spec.pod.env},
        }
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": metadata(res, child_name(res, "data", revision(res)), "data"),
        "spec": {
            "entrypoint": f"bash -c {shlex.quote(entrypoint)}",
            "clusterSelector": {"ray.io/cluster": cluster},
            "runtimeEnvYAML": yaml.safe_dump(runtime_env, sort_keys=False),
            # No `suspend`: KubeRay refuses it for a RayJob on an existing cluster (clusterSelector);
            # a suspended Dataset only holds back a RayJob not yet created.
            "submissionMode": "K8sJobMode",
        },
    }
