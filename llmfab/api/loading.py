"""The one validation path: YAML documents → typed resources, or errors that name the field and the fix.

``llmfab validate``, ``llmfab up`` and every workload entrypoint call :func:`load_resources` /
:func:`parse_resource`, so a bad resource reads the same everywhere:
``TrainingRun/tiny: spec.model.hidden: 500 is not divisible by spec.model.heads (8); choose …``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, SequenceNode

from llmfab.api.common import GROUP_VERSION, Resource, reject_snake_case_keys
from llmfab.api.dataset import Dataset
from llmfab.api.inference_service import InferenceService
from llmfab.api.reward_model import RewardModel
from llmfab.api.training_run import TrainingRun

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls for cls in (Dataset, TrainingRun, RewardModel, InferenceService)
}


# A spec file is read whole and parsed by pure-Python PyYAML: its size bounds time and memory, and
# the values its aliases expand to bound what validation walks (a "billion laughs" file is a few
# hundred bytes that expand to 10^9 values). Kubernetes itself stores objects of at most ~1.5 MiB.
MAX_SPEC_FILE_BYTES = 2 << 20
MAX_EXPANDED_VALUES = 100_000
SHOWN_CHARS = 80


class ValidationFailed(Exception):
    """One or more resources are invalid; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _shown(value: Any) -> str:
    """``repr`` of a value from a spec, short: a value in an error message is a hint, not a dump."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past sys.get_int_max_str_digits(), a deep structure
        text = f"<{type(value).__name__}>"
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where a spec file could hide a mistake or exhaust the reader.

    A duplicate key is an error (PyYAML keeps the last silently: two ``sources:`` would drop one),
    and a value PyYAML's constructors refuse with a Python exception (a 5000-digit integer, the
    13th month of a timestamp) becomes a YAML error with its line.
    """

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as e:  # PyYAML's constructors raise what Python raises on odd input
            what = node.tag.rsplit(":", 1)[-1]
            if what == "int" and isinstance(node.value, str):  # past Python's 4300-digit conversion limit
                problem = f"an integer of {len(node.value)} characters; Kubernetes integers are 64-bit"
            else:
                problem = f"cannot read this {what} value: {e}"
            raise ConstructorError(None, None, problem, node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, MappingNode):  # `!!set .`: the base class says what it expected
            return super().construct_mapping(node, deep)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise ConstructorError("while reading a mapping", node.start_mark,
                                       f"found the key {_shown(key)} twice; keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _expanded_values(root: Node) -> int:
    """How many values a document holds once its aliases are expanded, counted without expanding.

    An alias is the same node object again, so the count of each node is memoised by identity and
    the walk visits each node once (iteratively: no recursion limit to hit). A node that contains
    itself (``&a [*a]``) expands without end: its count is past any limit.
    """
    endless = MAX_EXPANDED_VALUES + 1
    counts: dict[int, int] = {}
    open_nodes: set[int] = set()  # being counted: the ancestors of the node at hand
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in counts:
            continue
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            counts[id(node)] = 1
            continue
        if children_done:
            open_nodes.discard(id(node))
            counts[id(node)] = min(1 + sum(counts[id(c)] for c in children), endless)
            continue
        if id(node) in open_nodes or any(id(c) in open_nodes for c in children):
            return endless
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in counts)
    return counts[id(root)]


def read_yaml_documents(path: Path) -> list[Any]:
    """Every YAML document of a spec file, or :class:`ValidationFailed` naming the file, line and fix.

    Bounded whatever the file holds: its size, its nesting (PyYAML recurses per level) and what
    its aliases expand to are capped, and only the safe loader's plain types are built.
    """
    try:
        with path.open("rb") as f:
            # st_size is 0 for a pipe (`-f <(...)`) or /dev/zero, and a file may grow: the read is capped too.
            size = os.fstat(f.fileno()).st_size
            raw = f.read(MAX_SPEC_FILE_BYTES + 1) if size <= MAX_SPEC_FILE_BYTES else b""
    except OSError as e:
        raise ValidationFailed([f"{path}: cannot read it ({e.strerror or e})"]) from None
    if size > MAX_SPEC_FILE_BYTES or len(raw) > MAX_SPEC_FILE_BYTES:
        shown = size if size > MAX_SPEC_FILE_BYTES else f"more than {MAX_SPEC_FILE_BYTES}"
        raise ValidationFailed([f"{path}: {shown} bytes; a spec file is at most {MAX_SPEC_FILE_BYTES} bytes "
                                "(a Kubernetes object at most ~1.5 MiB): split it, or point large data at "
                                "files the spec names"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValidationFailed([f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start}); a spec file is "
                                "UTF-8 YAML or JSON"]) from None
    docs: list[Any] = []
    try:
        loader = SpecLoader(text)  # checks the characters: a NUL is a YAMLError here
    except yaml.YAMLError as e:
        raise ValidationFailed([f"{path}: not valid YAML: {e}"]) from None
    loader.name = str(path)  # marks ("in FILE, line L, column C") name the file
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            if _expanded_values(node) > MAX_EXPANDED_VALUES:
                line = node.start_mark.line + 1
                raise ValidationFailed([f"{path}:{line}: the document expands to more than {MAX_EXPANDED_VALUES} "
                                        "values through its aliases (&anchor/*alias); write it out plainly"])
            docs.append(loader.construct_document(node))
    except yaml.YAMLError as e:
        raise ValidationFailed([f"{path}: not valid YAML: {e}"]) from None
    except RecursionError:
        raise ValidationFailed([f"{path}: nested too deeply (past line {loader.line + 1}); a spec is a few "
                                "levels of mappings and lists"]) from None
    except Exception as e:  # a PyYAML constructor's odd exception outside construct_object (generators)
        raise ValidationFailed([f"{path}: not valid YAML near line {loader.line + 1}: {e}"]) from None
    finally:
        loader.dispose()
    return docs


def resource_class(kind: str) -> type[Resource]:
    """The model class of ``kind``; accepts the kind, its plural or a short name, any case."""
    wanted = kind.lower()
    for cls in KINDS.values():
        if wanted in (cls.KIND.lower(), cls.PLURAL, *cls.SHORT_NAMES):
            return cls
    raise ValidationFailed([f"unknown kind '{kind}'; llmfab kinds are {', '.join(KINDS)}"])


def _location(loc: tuple[int | str, ...], model_cls: type[Any]) -> str:
    """Turn pydantic's loc (python names, list indexes) into the YAML path (camelCase, [i])."""
    from pydantic.alias_generators import to_camel

    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not isinstance(item, str):  # a dict key of another type
            parts.append(f"[{_shown(item)}]")
        elif item.startswith(("function-", "tagged-union")) or item in ("is-instance",):
            continue
        else:
            parts.append(("." if parts else "") + to_camel(item))
    return "".join(parts)


def _format_error(err: Any, model_cls: type[Any]) -> str:
    path = _location(tuple(err["loc"]), model_cls)
    msg: str = err["msg"]
    kind = err["type"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        # Cross-field rules already name their fields.
        if msg.startswith(("spec.", "metadata.")) or not path:
            return msg
        return f"{path}: {msg}" if not msg.startswith(path) else msg
    if kind == "extra_forbidden":
        return f"{path}: unknown field; remove it or check its spelling (see `llmfab explain`)"
    if kind == "missing":
        return f"{path}: required field is missing"
    if kind == "string_pattern_mismatch" and path.endswith("name"):
        return (
            f"{path}: {_shown(err.get('input'))} is not a valid name; use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (DNS-1123 label)"
        )
    given = err.get("input")
    shown = f" (got {_shown(given)})" if given is not None and not isinstance(given, dict | list) else ""
    return f"{path}: {msg}{shown}"


INT64 = (-(2**63), 2**63 - 1)


def _reject_out_of_range_integers(data: Any, path: str) -> None:
    """Kubernetes integers are 64-bit: a larger one would validate here and be refused at apply."""
    stack: list[tuple[Any, str]] = [(data, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"{where}: {value.bit_length()}-bit integer is out of range; Kubernetes integers "
                             "are 64-bit (at most 9223372036854775807)")


def parse_resource(doc: dict[str, Any], origin: str = "") -> Resource:
    """Validate one YAML document into its kind's model; raise :class:`ValidationFailed`."""
    where = f"{origin}: " if origin else ""
    if not isinstance(doc, dict):
        raise ValidationFailed([f"{where}expected a mapping with apiVersion/kind/metadata/spec"])
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
    name = name if isinstance(name, str) and len(name) <= SHOWN_CHARS else _shown(name)
    if doc.get("apiVersion") != GROUP_VERSION:
        shown_kind = kind if isinstance(kind, str) and kind and len(kind) <= SHOWN_CHARS else _shown(kind or "?")
        raise ValidationFailed(
            [f"{where}{shown_kind}/{name}: apiVersion: {_shown(doc.get('apiVersion'))}; write '{GROUP_VERSION}'"]
        )
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValidationFailed(
            [f"{where}kind: {_shown(kind)} is not an llmfab kind; use one of {', '.join(KINDS)}"]
        )
    cls = KINDS[kind]
    try:
        reject_snake_case_keys(doc.get("spec"), "spec.")
        _reject_out_of_range_integers(doc, "")
    except ValueError as e:
        raise ValidationFailed([f"{where}{kind}/{name}: {e}"]) from None
    except RecursionError:
        raise ValidationFailed([f"{where}{kind}/{name}: spec is nested too deeply"]) from None
    try:
        return cls.model_validate(doc)
    except ValidationError as e:
        errors = [f"{where}{kind}/{name}: {_format_error(err, cls)}" for err in e.errors()]
        raise ValidationFailed(errors) from None
    except RecursionError:
        raise ValidationFailed([f"{where}{kind}/{name}: nested too deeply"]) from None


def _yaml_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml")))
        elif p.exists():
            files.append(p)
        else:
            raise ValidationFailed([f"{p}: no such file or directory"])
    return files


def load_resources(paths: Iterable[str | Path]) -> list[Resource]:
    """Read every resource in the given files/directories; collect all errors before raising.

    Relative source paths in a Dataset are resolved against the directory of the file that names
    them, so a pipeline file works from any working directory.
    """
    resources: list[Resource] = []
    errors: list[str] = []
    for path in _yaml_files(paths):
        try:
            docs = read_yaml_documents(path)
        except ValidationFailed as e:
            errors.extend(e.errors)
            continue
        for number, doc in enumerate(docs, 1):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                errors.append(f"{path}: document {number}: expected a mapping with apiVersion/kind/metadata/spec, "
                              f"found a {type(doc).__name__}")
                continue
            try:
                res = parse_resource(doc, str(path))
            except ValidationFailed as e:
                errors.extend(e.errors)
                continue
            res.metadata.annotations.setdefault("llmfab.dev/source-dir", str(path.parent.resolve()))
            resources.append(res)
    seen: dict[tuple[str, str], int] = {}
    for res in resources:
        key = (res.KIND, res.name)
        seen[key] = seen.get(key, 0) + 1
    errors.extend(
        f"{k}/{n}: defined {c} times; names are unique per kind" for (k, n), c in seen.items() if c > 1
    )
    if errors:
        raise ValidationFailed(errors)
    return resources


def dump_resource(res: Resource) -> dict[str, Any]:
    """The resource as camelCase YAML-ready data: defaults included, status left out.

    Explicit nulls in the spec are kept (``prometheusPort: null`` means "off", and dropping it
    would bring back the default on the next load); unset server fields of metadata are dropped.
    """
    data: dict[str, Any] = res.model_dump(mode="json", by_alias=True, exclude={"status"})
    data["metadata"] = {k: v for k, v in data["metadata"].items() if v not in (None, [], {})}
    return data
