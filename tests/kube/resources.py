"""The resource types the server serves: the bundled built-ins and the CRDs it was given or created."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import kmock

JSON = dict[str, Any]

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: frozenset[str] = frozenset()
    schema: JSON | None = None  # a CRD's openAPIV3Schema
    scale: JSON | None = None  # a CRD's subresources.scale: specReplicasPath, statusReplicasPath, labelSelectorPath
    printer_columns: list[JSON] | None = None  # a CRD's additionalPrinterColumns
    crd_name: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.group, self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def custom(self) -> bool:
        return self.schema is not None

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def kmock_resource(self) -> kmock.resource:
        return kmock.resource(self.group, self.version, self.plural)

    def discovery(self) -> list[JSON]:
        """APIResourceList entries: the resource and each subresource."""
        entries = [
            {
                "name": self.plural,
                "singularName": self.singular or self.kind.lower(),
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": sorted(self.verbs),
                **({"shortNames": list(self.short_names)} if self.short_names else {}),
                **({"categories": list(self.categories)} if self.categories else {}),
            }
        ]
        for sub in sorted(self.subresources):
            verbs = ["get", "patch", "update"] if sub in ("status", "scale") else ["get", "create"]
            entry = {
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": "Scale" if sub == "scale" else self.kind,
                "verbs": verbs,
            }
            if sub == "scale":  # served as autoscaling/v1, whatever the parent's group (kubectl scale reads it)
                entry |= {"group": "autoscaling", "version": "v1"}
            entries.append(entry)
        return entries


def _rank(version: str) -> tuple[int, int, int]:
    """Kubernetes version priority: GA over beta over alpha, then higher numbers first."""
    stage = 0 if "alpha" in version else 1 if "beta" in version else 2
    major, _, minor = version[1:].replace("alpha", "/").replace("beta", "/").partition("/")
    return stage, int(major or 0), int(minor or 0)


def preferred_first(versions: set[str]) -> list[str]:
    return sorted(versions, key=_rank, reverse=True)


@functools.cache
def bundled() -> tuple[ResourceType, ...]:
    """kmock's bundled discovery of a k3s cluster's built-in resources (one served version each)."""
    scaffold = kmock.KubernetesScaffold()
    with warnings.catch_warnings():  # kmock 0.8 reads its bundle with a deprecated importlib call
        warnings.simplefilter("ignore", DeprecationWarning)
        scaffold.resources.load_bundled()
    types = []
    for res in scaffold.resources:
        info = scaffold.resources[res]
        types.append(
            ResourceType(
                group=res.group or "",
                version=res.version or "v1",
                plural=res.plural or "",
                kind=info.kind or "",
                namespaced=bool(info.namespaced),
                singular=info.singular or "",
                short_names=tuple(sorted(info.shortnames)),
                categories=tuple(sorted(info.categories)),
                verbs=tuple(sorted(info.verbs)),
                subresources=frozenset(info.subresources),
            )
        )
    best = {}
    for rt in sorted(types, key=lambda t: _rank(t.version)):
        best[rt.key] = rt
    return tuple(best.values())


def from_crd(crd: JSON) -> list[ResourceType]:
    """One ResourceType per served version of a CustomResourceDefinition manifest."""
    spec = crd["spec"]
    names = spec["names"]
    types = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        types.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular") or names["kind"].lower(),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=frozenset((version.get("subresources") or {}).keys()),
                scale=(version.get("subresources") or {}).get("scale"),
                schema=(version.get("schema") or {}).get("openAPIV3Schema")
                or {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                printer_columns=version.get("additionalPrinterColumns")
                or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                crd_name=crd["metadata"]["name"],
            )
        )
    return types
