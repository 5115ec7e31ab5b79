# Two entry points, each creating or reusing the virtualenv in .venv:
#   make demo   score a folder of images and print/write a table
#   make test   run the whole test suite
# and, beside them: make test-fast (the tests not marked slow), make lint (ruff), make test-compat.
PYTHON ?= python3
VENV ?= .venv
IMAGES ?= examples/photos
OUT ?= demo-out/scores.csv
# Extra pytest arguments, e.g. PYTEST_ARGS='--durations=20' (CI) or PYTEST_ARGS='-x -k train'.
PYTEST_ARGS ?=
# CPU build of torch where there is no NVIDIA GPU; override, e.g. TORCH_SPEC='torch==2.13.0'.
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo torch; else echo torch==2.13.0; fi)

BIN := $(VENV)/bin
STAMP := $(VENV)/.realqa-installed

.PHONY: demo test test-fast lint test-compat install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test,all]"
	touch $(STAMP)

# --overwrite: a fresh table each time (without it `realqa score` resumes an existing --out).
demo: $(STAMP)
	$(BIN)/realqa score $(IMAGES) --out $(OUT) --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Everything but the tests marked slow (training runs, processes, Ray, video, the demo model).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff (installed by the test extra): the rules in pyproject.toml's [tool.ruff].
lint: $(STAMP)
	$(BIN)/ruff check .

# The oldest transformers release we support, in a second virtualenv, on the tests that touch the model.
COMPAT_VENV ?= .venv-compat
COMPAT_TRANSFORMERS ?= transformers==5.17.0
test-compat:
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(COMPAT_VENV)/bin/python -m pip install --quiet -e ".[test,all]" "$(COMPAT_TRANSFORMERS)"
	$(COMPAT_VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests/test_engine.py tests/test_train.py tests/test_end_to_end.py \
		tests/test_checkpoints.py tests/test_official_release.py tests/test_train_conversations.py tests/test_compat.py

clean:
	rm -rf $(VENV) $(COMPAT_VENV) demo-out
