# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv on first use and (re)installs the project whenever pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= demo_output

.PHONY: demo test test-all lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vreid synth --out $(DEMO)/city --ids 40 --cameras 4 --seed 0 --preview --overwrite
	$(VENV)/bin/vreid data summary --dataset aic21 --root $(DEMO)/city
	rm -rf $(DEMO)/train $(DEMO)/test
	$(VENV)/bin/vreid train --config-file configs/demo/city.yml DATASETS.ROOT_DIR $(DEMO)/city OUTPUT_DIR $(DEMO)/train
	$(VENV)/bin/vreid test --config-file configs/demo/city.yml DATASETS.ROOT_DIR $(DEMO)/city \
		TEST.WEIGHT $(DEMO)/train/model_final.pth OUTPUT_DIR $(DEMO)/test
	@cat $(DEMO)/test/metrics.json
	@echo "demo done: $(DEMO)/city/preview.png (the data), $(DEMO)/test/ranklist.png (query + top-10, green = same vehicle)"

test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --config .importlinter

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
