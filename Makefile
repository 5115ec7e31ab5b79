# Two entry points, each creating or reusing the virtualenv in .venv:
#   make demo   score a folder of images and print/write a table
#   make test   run the whole test suite
PYTHON ?= python3
VENV ?= .venv
IMAGES ?= examples/photos
OUT ?= demo-out/scores.csv
# CPU build of torch where there is no NVIDIA GPU; override, e.g. TORCH_SPEC='torch==2.13.0'.
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo torch; else echo torch==2.13.0; fi)

BIN := $(VENV)/bin
STAMP := $(VENV)/.realqa-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/realqa score $(IMAGES) --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) demo-out
