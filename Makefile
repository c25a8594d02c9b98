# The two commands: `make up` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The seed models and the embedded default GPU (a simulated RTX 3090).
SEED_MODELS := google/gemma-4-31B-it google/gemma-4-26B-A4B-it \
	cyankiwi/gemma-4-26B-A4B-it-AWQ-4bit Qwen/Qwen3.6-35B-A3B-FP8 \
	openai/whisper-large-v3 openvla/openvla-7b
DEFAULT_GPU := rtx-3090


.PHONY: up plan test test-fast lint typecheck unit integration gpu gpu-prepare bench-fit bench-exporter bench-twin bench-capacity bench-deploy bench-gateway bench-dashboard llama-server whisper-server system-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The lab on its embedded default (a simulated RTX 3090 serving one twin) until Ctrl-C.
up: $(STAMP)
	@$(BIN)/labctl up

# The memory plan of the seed models on the embedded default GPU.
plan: $(STAMP)
	@$(BIN)/labctl fit $(SEED_MODELS) --gpu $(DEFAULT_GPU)

# Debian packages the integration tests drive for real: Prometheus and promtool, Chromium
# for the dashboard's browser tests (driven by Playwright from .venv), systemd for
# `systemd-analyze verify` on the exported unit, and Podman (with runc, catatonit for
# `--init`, netavark and iptables for published ports, fuse-overlayfs for storage) for engines in
# containers. Installed once (as root, or through sudo); nothing happens when they are present.
SYSTEM_PACKAGES := prometheus chromium systemd podman runc catatonit netavark iptables fuse-overlayfs
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && \
		command -v chromium >/dev/null && command -v systemd-analyze >/dev/null && \
		command -v podman >/dev/null && command -v runc >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing Debian packages: $(SYSTEM_PACKAGES)"; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			$(SYSTEM_PACKAGES) >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) system-deps
	@bin=$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh) && \
		wbin=$$(PYTHON=$(BIN)/python scripts/build-whisper-server.sh) && \
		LABCTL_LLAMA_SERVER=$$bin LABCTL_WHISPER_SERVER=$$wbin $(BIN)/pytest tests/integration

# The GPU tier needs an NVIDIA GPU; it is not part of `make test`.
gpu: $(STAMP)
	$(BIN)/pytest -m gpu tests/gpu

# For a GPU machine that has PyTorch but no network: the wheels it lacks (the runtime
# dependencies that machine does not hold, at this .venv's versions) into .gpu/, with the
# script that runs the tier there (`bash .gpu/gpu-tier.sh run`, .gpu/ carried along).
GPU_EXTRA := json[-_]numpy uvloop soundfile cffi pycparser
SHARED ?= $(or $(LABCTL_SHARED),../shared)
gpu-prepare: $(STAMP)
	@pins=$$($(BIN)/python -m pip freeze | grep -i -E '^($(shell echo $(GPU_EXTRA) | tr ' ' '|'))=='); \
	[ $$(echo "$$pins" | wc -w) -eq $(words $(GPU_EXTRA)) ] || { \
		echo "gpu-prepare: .venv lacks one of $(GPU_EXTRA) (found: $$pins)" >&2; exit 1; }; \
	PYTHON=$(BIN)/python $(SHARED)/tools/gpu-tier.sh prepare $$pins

# A real whisper.cpp whisper-server for the speech tests, built once per machine and cached
# outside the repository (about 2 minutes on 2 cores the first time).
whisper-server: $(STAMP)
	@PYTHON=$(BIN)/python scripts/build-whisper-server.sh

# A real llama.cpp llama-server for the integration tests, built once per machine and cached
# outside the repository (about 8 minutes on 2 cores the first time).
llama-server: $(STAMP)
	@PYTHON=$(BIN)/python scripts/build-llama-server.sh

test: lint typecheck $(STAMP) system-deps
	@bin=$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh) && \
		wbin=$$(PYTHON=$(BIN)/python scripts/build-whisper-server.sh) && \
		LABCTL_LLAMA_SERVER=$$bin LABCTL_WHISPER_SERVER=$$wbin \
		$(BIN)/pytest tests/unit tests/integration -m "not gpu" --durations=15

# The same tests on two workers, one file per worker at a time: a quicker loop while working
# (12 min instead of 21 on 2 cores). Tests that wait on deadlines get half the CPU they
# get in `make test`, which stays serial and is what CI runs.
test-fast: lint typecheck $(STAMP) system-deps
	@bin=$$(PYTHON=$(BIN)/python scripts/build-llama-server.sh) && \
		wbin=$$(PYTHON=$(BIN)/python scripts/build-whisper-server.sh) && \
		LABCTL_LLAMA_SERVER=$$bin LABCTL_WHISPER_SERVER=$$wbin \
		$(BIN)/pytest tests/unit tests/integration -m "not gpu" -n 2 --dist loadfile

bench-fit: $(STAMP)
	$(BIN)/python benchmarks/fit_accuracy.py

bench-exporter: $(STAMP)
	$(BIN)/python benchmarks/exporter.py

bench-twin: $(STAMP)
	$(BIN)/python benchmarks/twin_fidelity.py
	$(BIN)/python benchmarks/twin_speed.py
	$(BIN)/python benchmarks/twin_speech.py --vllm-defaults
	$(BIN)/python benchmarks/twin_vla.py

bench-deploy: $(STAMP)
	$(BIN)/python benchmarks/deploy_overhead.py

bench-dashboard: $(STAMP) system-deps
	$(BIN)/python benchmarks/dashboard_cost.py

# GuideLLM, to compare against, in its own venv (not a labctl dependency). torch 2.13.0 is
# pinned so that pip takes the CPU build where one is at hand instead of several GB of CUDA.
GUIDELLM_VENV := .venv-guidellm
$(GUIDELLM_VENV)/bin/guidellm:
	test -x $(GUIDELLM_VENV)/bin/python || $(PYTHON) -m venv $(GUIDELLM_VENV)
	$(GUIDELLM_VENV)/bin/python -m pip install --quiet torch==2.13.0 guidellm==0.8.1

bench-capacity: $(STAMP) $(GUIDELLM_VENV)/bin/guidellm
	$(BIN)/python benchmarks/bench_capacity.py --guidellm $(GUIDELLM_VENV)/bin/guidellm

# LiteLLM's proxy, to compare the gateway against, in its own venv (not a labctl dependency).
LITELLM_VENV := .venv-litellm
$(LITELLM_VENV)/bin/litellm:
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]'

bench-gateway: $(STAMP) $(LITELLM_VENV)/bin/litellm
	$(BIN)/python benchmarks/gateway_overhead.py --litellm $(LITELLM_VENV)/bin/litellm

clean:
	rm -rf $(VENV) $(GUIDELLM_VENV) $(LITELLM_VENV) .pytest_cache .mypy_cache .ruff_cache
