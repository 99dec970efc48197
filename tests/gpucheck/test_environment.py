"""``scripts/gpu_check_env.py``: the checks' virtualenv over another virtualenv (as on the lent GPU
machines), pip with no index taking from the wheels only what that python lacks, torch left as it
is. The outer python here is the test suite's own, which has all of ``scripts/gpu_requirements.txt``;
the requirements are extended by a stand-in distribution it lacks, whose wheel is made here (no
download in a test)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load_env_module() -> object:
    spec = importlib.util.spec_from_file_location("gpu_check_env", SCRIPTS / "gpu_check_env.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wheel(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel (PEP 427) holding ``files``."""
    dist = f"{name.replace('-', '_')}-{version}"
    contents = {**files,
                f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
                f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},sha256={digest(text)},{len(text.encode())}\n" for path, text in contents.items())
    path = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for name_, text in {**contents, f"{dist}.dist-info/RECORD": record + f"{dist}.dist-info/RECORD,,\n"}.items():
            whl.writestr(name_, text)
    return path


STAND_IN = "llmfab-gpucheck-standin"


def _env_module(requirements: Path | None = None) -> object:
    """The module, its requirements extended by :data:`STAND_IN` (written to ``requirements``)."""
    module = _load_env_module()
    if requirements is not None:
        requirements.write_text(module.REQUIREMENTS.read_text() + f"{STAND_IN}==1.0\n")  # type: ignore[attr-defined]
        module.REQUIREMENTS = requirements  # type: ignore[attr-defined]
    return module


def _torch_version() -> str:
    import torch

    return torch.__version__


@pytest.mark.slow
def test_the_virtualenv_adds_only_what_the_outer_python_lacks_and_keeps_its_torch(tmp_path: Path) -> None:
    env = _env_module(tmp_path / "requirements.txt")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, STAND_IN, "1.0", {"llmfab_gpucheck_standin.py": "STAND_IN = True\n"})
    venv = tmp_path / "venv"
    python, installed = env.prepare(sys.executable, venv, wheels, _torch_version(), tmp_path / "env.log")  # type: ignore[attr-defined]
    assert installed == f"{STAND_IN}-1.0"
    where = subprocess.run([python, "-c", "import torch, pydantic, llmfab_gpucheck_standin as s; print(torch.__file__); "
                            "print(pydantic.__file__); print(s.STAND_IN)"],
                           capture_output=True, text=True, check=True).stdout.split()
    outer = str(Path(sys.prefix))
    assert where[0].startswith(outer) and where[1].startswith(outer)  # the outer python's, not copies
    assert where[2] == "True" and not list(venv.rglob("torch/__init__.py"))
    assert (venv / "constraints.txt").read_text() == f"torch=={_torch_version()}\n"
    assert env.prepare(sys.executable, venv, wheels, _torch_version(), tmp_path / "env.log") == (python, "reused")  # type: ignore[attr-defined]


@pytest.mark.slow
def test_without_wheels_it_says_to_make_them(tmp_path: Path) -> None:
    env = _env_module(tmp_path / "requirements.txt")
    with pytest.raises(env.EnvironmentFailed, match=r"there are no wheels in .*run `make gpu-wheels`"):  # type: ignore[attr-defined]
        env.prepare(sys.executable, tmp_path / "venv", tmp_path / "none", _torch_version(), tmp_path / "env.log")  # type: ignore[attr-defined]
