"""The checks' environment for ``scripts/gpu_check.py``: the GPU machine's CUDA torch plus llmfab's
dependencies, on a machine that may have no package index. Standard library only.

``.gpu-venv`` is a virtualenv over the machine python's packages (``--system-site-packages``; where
that python is itself a virtualenv, as on the lent GPU machines, a ``.pth`` file adds its
site-packages with ``site.addsitedir``, which ``--system-site-packages`` alone would not reach). pip
then installs into it what ``scripts/gpu_requirements.txt`` asks and the machine lacks, with
``--no-index`` from the wheels ``make gpu-wheels`` downloaded (``scripts/gpu_wheels.txt``). A
constraint pins torch to the version found, so pip can never replace the machine's CUDA build.

Should pip's resolver fail on something of the machine's own (an installed package whose
dependency is missing), the pinned wheels whose version the machine does not have are installed
without resolving instead; either way the packages the checks import are then imported once, so
a missing one fails here, by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "scripts" / "gpu_requirements.txt"
PINS = REPO / "scripts" / "gpu_wheels.txt"
IMPORTS = ("import llmfab.cli, llmfab.data.pipeline, llmfab.training.loop.trainer, llmfab.model.hf, "
           "transformers, pynvml")
# Prints the pins of gpu_wheels.txt whose version this python does not have, as JSON.
UNMET_PINS = """
import importlib.metadata as md, json, sys
pins = [l.split('#')[0].strip() for l in open(sys.argv[1]) if l.split('#')[0].strip()]
def have(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
print(json.dumps([p for p in pins if have(p.split('==')[0]) != p.split('==')[1]]))
"""


class EnvironmentFailed(Exception):
    """The checks' environment could not be made; the message names the step and its log."""


def prepare(base: str, venv: Path, wheels: Path, torch_version: str, log: Path) -> tuple[str, str]:
    """(the checks' interpreter, what was installed); the virtualenv is reused while its inputs
    (this python, its torch, the requirements, the wheels) are the same."""
    python = venv / "bin" / "python"
    stamp = venv / "gpu-check.stamp"
    listing = sorted(p.name for p in wheels.glob("*.whl")) if wheels.is_dir() else []
    key = hashlib.sha256(json.dumps([base, torch_version, REQUIREMENTS.read_text(), PINS.read_text(),
                                     listing]).encode()).hexdigest()
    if python.exists() and stamp.is_file() and stamp.read_text() == key:
        return str(python), "reused"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        summary = _build(base, venv, python, wheels, torch_version, out, log)
    stamp.write_text(key)
    return str(python), summary


def _build(base: str, venv: Path, python: Path, wheels: Path, torch_version: str, out: IO[str], log: Path) -> str:
    def step(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=_clean_env())
        out.write(done.stdout + done.stderr)
        out.flush()
        if check and done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise EnvironmentFailed(f"`{' '.join(cmd[:4])} ...` exited {done.returncode}: {last[0][:300]}; log: {log}")
        return done

    def json_of(cmd: list[str]) -> Any:
        return json.loads(step(cmd).stdout.strip().splitlines()[-1])

    step([base, "-m", "venv", "--clear", "--system-site-packages", "--without-pip", str(venv)])
    outer = json_of([base, "-c", "import json, site, sys; print(json.dumps("
                     "{'venv': sys.prefix != sys.base_prefix, 'site': site.getsitepackages()}))"])
    if outer["venv"]:
        site = Path(json_of([str(python), "-c", "import json, sysconfig; "
                             "print(json.dumps(sysconfig.get_paths()['purelib']))"]))
        (site / "gpu-check-outer.pth").write_text(
            "".join(f"import site; site.addsitedir({d!r})\n" for d in outer["site"]))
    if step([str(python), "-c", "import pip"], check=False).returncode != 0:
        step([str(python), "-m", "ensurepip", "--default-pip"])  # offline: its wheel ships with python
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={torch_version}\n")
    # pip runs under the new interpreter: it installs into the virtualenv and counts the outer
    # packages as installed, so only what they lack comes from the wheels.
    pip = [str(python), "-m", "pip", "install", "--isolated", "--no-index", "--find-links", str(wheels),
           "--constraint", str(constraints), "--no-input", "--disable-pip-version-check"]
    resolved = step([*pip, "--requirement", str(REQUIREMENTS)], check=False)
    how = ""
    if resolved.returncode != 0 and not (wheels.is_dir() and any(wheels.glob("*.whl"))):
        raise EnvironmentFailed(f"this python lacks some of {REQUIREMENTS.name} and there are no wheels in {wheels}: "
                                f"run `make gpu-wheels` where PyPI is reachable and bring the folder; log: {log}")
    if resolved.returncode != 0:
        unmet = json_of([str(python), "-c", UNMET_PINS, str(PINS)])
        last = (resolved.stderr or resolved.stdout).strip().splitlines()[-1:] or [""]
        how = f" (pip's resolver failed: {last[0][:200]}; the pins the machine lacks installed without it)"
        if unmet:
            step([*pip, "--no-deps", *unmet])
    step([str(python), "-c", IMPORTS])
    installed = [line.split("Successfully installed ", 1)[1] for line in log.read_text().splitlines()
                 if line.startswith("Successfully installed ")]
    return ("; ".join(installed) or "nothing") + how


def _clean_env() -> dict[str, str]:
    """This environment without what would point pip or python elsewhere; llmfab from this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH", "VIRTUAL_ENV"))}
    return {**env, "PYTHONPATH": str(REPO)}
