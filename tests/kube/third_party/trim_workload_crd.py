"""Derive ``kueue-v0.19.2/kueue.x-k8s.io_workloads.yaml`` from Kueue's published Workload CRD.

The published file is 1.4 MB, nearly all of it the PodTemplate schema under each
``spec.podSets[].template`` (the whole core/v1 pod schema, twice). This keeps every version and
every other field, description and CEL rule as published and puts one line in place of that
schema: ``{type: object, x-kubernetes-preserve-unknown-fields: true}``.

    git -C KUEUE show v0.19.2:config/components/crd/bases/kueue.x-k8s.io_workloads.yaml \\
        | python tests/kube/third_party/trim_workload_crd.py > tests/kube/third_party/kueue-v0.19.2/kueue.x-k8s.io_workloads.yaml
"""

from __future__ import annotations

import sys

import yaml

TEMPLATE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
            "description": "The pod template (its schema trimmed from this copy: tests/kube/third_party/README.md)."}


def trim(crd: dict) -> dict:
    for version in crd["spec"]["versions"]:
        pod_set = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["podSets"]["items"]
        pod_set["properties"]["template"] = TEMPLATE
    return crd


if __name__ == "__main__":
    sys.stdout.write("# Derived from Kueue v0.19.2's CRD by tests/kube/third_party/trim_workload_crd.py.\n---\n")
    sys.stdout.write(yaml.safe_dump(trim(yaml.safe_load(sys.stdin)), sort_keys=False, width=120))
