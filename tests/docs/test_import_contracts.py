"""The layering written in pyproject.toml ([tool.importlinter]) holds, and it would catch the import
circle the training package once had, even written inside a function."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the llmfab package under ``tree`` with the project's contracts."""
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, timeout=120)


def test_the_import_contracts_are_kept() -> None:
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_function_level_import_of_an_objective_by_the_loop_breaks_two_contracts(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "llmfab", tree / "llmfab", ignore=shutil.ignore_patterns("__pycache__"))
    trainer = tree / "llmfab" / "training" / "loop" / "trainer.py"
    # What trainer.py once did: reach into the distill objective from inside train().
    trainer.write_text(trainer.read_text() + "\n\ndef _report(module):\n"
                       "    from llmfab.training.objectives import distill\n\n    return distill.step_metrics\n")
    out = _lint(tree)
    assert out.returncode != 0
    broken = out.stdout[out.stdout.index("Broken contracts"):]
    assert "The training loop and its components import no objective" in broken
    assert "No import cycle anywhere in llmfab" in broken
    assert "llmfab.training.loop.trainer -> llmfab.training.objectives.distill" in broken
