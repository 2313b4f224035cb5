# The two commands a newcomer needs: `make demo` and `make test`.
# Both set everything up from a clean clone (virtualenv, package, services).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-oai bench-oai test lint bench bench-koha services browser venv

$(BIN)/shelfwork: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/shelfwork

venv: $(BIN)/shelfwork

services:
	bash scripts/services.sh

browser:
	bash scripts/browser.sh

demo: venv
	$(BIN)/shelfwork demo

bench-oai: venv
	$(BIN)/python bench/oai.py all

demo-oai: venv
	$(BIN)/shelfwork oai-demo

test: venv services browser
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest -q tests

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: venv services
	$(BIN)/python bench/engine.py

# Koha -> DSpace: cover rendering against pdf2image (needs Debian's poppler-utils), and
# end-to-end records/min against the sandbox.
bench-koha: venv
	command -v pdftoppm >/dev/null || apt-get install -y -q poppler-utils
	$(BIN)/python bench/cover.py
	$(BIN)/python bench/integrator.py
