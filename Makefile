# hybridlm: `make demo` sets everything up and runs the main job; `make test` sets up and runs the tests.
# On a CUDA machine pick the wheel you want: make test TORCH_SPEC='torch==2.13.0' PIP_EXTRA='--index-url ...'
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
PIP_EXTRA ?=
# test processes of `make test` (pytest-xdist); the tests marked serial run after them, alone
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
# glibc returns big freed blocks to the OS and re-zeroes them; measured to double a CPU training step
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296

.PHONY: demo test test-slow lint bench setup setup-test clean

demo: $(VENV)/.base
	$(BIN)/hybridlm demo

test: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 -m 'not slow and not serial'
	$(BIN)/python -m pytest -q -m 'serial and not slow'

test-slow: $(VENV)/.test
	$(BIN)/python -m pytest -q -m slow

lint: $(VENV)/.test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# the quick benchmark suite (a few minutes on 2 cores); docs/benchmarks.md has the full runs
bench: $(VENV)/.bench
	$(BIN)/hybridlm bench --quick

setup: $(VENV)/.base
setup-test: $(VENV)/.test

$(VENV)/.base: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "$(TORCH_SPEC)" $(PIP_EXTRA)
	$(BIN)/pip install -e ".[plot]" -c constraints.txt $(PIP_EXTRA)
	touch $@

$(VENV)/.test: $(VENV)/.base constraints.txt
	$(BIN)/pip install -e ".[dev,hf,analysis,plot,tensorboard,datasets,serve,eval,sweep]" -c constraints.txt $(PIP_EXTRA)
	touch $@

$(VENV)/.bench: $(VENV)/.test
	$(BIN)/pip install -e ".[bench]" -c constraints.txt $(PIP_EXTRA)
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
