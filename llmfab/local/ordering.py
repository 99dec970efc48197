"""Order resources by their references: a pure function, so every error shows before anything runs."""

from __future__ import annotations

from collections.abc import Callable

from llmfab.api.common import Resource


class OrderingError(Exception):
    """A cycle or a dangling reference; the message names the resources involved."""


def order_resources(
    resources: list[Resource], exists_elsewhere: Callable[[str, str], bool] = lambda kind, name: False
) -> list[Resource]:
    """Topologically sort ``resources`` so each comes after the ones it references.

    A reference to a resource not in ``resources`` is fine if ``exists_elsewhere(kind, name)``
    (e.g. its artifact is already complete in the store); otherwise it is dangling. The order is
    stable: among resources that are ready at the same time, file order wins.
    """
    by_key = {(r.KIND, r.name): r for r in resources}
    deps: dict[tuple[str, str], list[tuple[str, str]]] = {}
    problems: list[str] = []
    for res in resources:
        key = (res.KIND, res.name)
        deps[key] = []
        for ref in res.references():
            if ref == key:
                problems.append(f"{res.key}: references itself")
            elif ref in by_key:
                deps[key].append(ref)
            elif not exists_elsewhere(*ref):
                problems.append(
                    f"{res.key}: references {ref[0]}/{ref[1]}, which is neither in these files nor "
                    "built in the artifact store; add it to the files or fix the name"
                )
    if problems:
        raise OrderingError("\n".join(problems))

    ordered: list[Resource] = []
    state: dict[tuple[str, str], str] = {}

    def visit(key: tuple[str, str], path: list[tuple[str, str]]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "active":
            cycle = [*path[path.index(key) :], key]
            raise OrderingError("reference cycle: " + " -> ".join(f"{k}/{n}" for k, n in cycle))
        state[key] = "active"
        for dep in deps[key]:
            visit(dep, [*path, key])
        state[key] = "done"
        ordered.append(by_key[key])

    for res in resources:
        visit((res.KIND, res.name), [])
    return ordered


def dependents(resources: list[Resource], failed: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Every resource that (transitively) references one in ``failed``."""
    blocked = set(failed)
    changed = True
    while changed:
        changed = False
        for res in resources:
            key = (res.KIND, res.name)
            if key not in blocked and any(ref in blocked for ref in res.references()):
                blocked.add(key)
                changed = True
    return blocked - failed
