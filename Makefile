# The README's two commands: `make demo` (main job on the embedded default) and `make test`.
# Each sets up .venv on first use, pinned by constraints.txt (torch CPU build on disk, triton 3.6).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= out/demo

.PHONY: demo test bench venv clean

$(STAMP): pyproject.toml setup.py constraints.txt csrc/tiler.cpp csrc/update.cpp
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel pybind11 -c constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,triton,ray]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mcgenref demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m pytest -q bench --benchmark-enable --benchmark-json=bench/last.json

clean:
	rm -rf $(VENV) build *.egg-info mcgenref_fast/_tiler*.so
