"""``python -m llmfab.training.launch --spec FILE [--force]``: what each torchrun worker runs when
``llmfab train run`` re-launches itself under torchrun; the same as ``llmfab train run``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from llmfab import signals
from llmfab.workload import run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmfab.training.launch")
    parser.add_argument("--spec", type=Path, required=True, help="TrainingRun YAML file")
    parser.add_argument("--force", action="store_true", help="train even if the run is complete")
    args = parser.parse_args(argv)
    if "LOCAL_RANK" in os.environ:  # a torchrun worker: once torchrun is gone, nothing reaps or stops it
        signals.die_with_parent(signal.SIGKILL)
    code = signals.main(lambda: run_stage("train", args.spec, force=args.force))
    from llmfab.training.components.distributed import exit_worker

    exit_worker(code)  # a failed rank must not wait for peers in the process group's destructor
    return code


if __name__ == "__main__":
    sys.exit(main())
