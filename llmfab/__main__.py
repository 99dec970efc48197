"""``python -m llmfab`` is the ``llmfab`` command (torchrun launches the workload this way)."""

from llmfab.cli import app

app(prog_name="llmfab")
