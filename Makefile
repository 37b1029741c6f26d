# Two commands: `make demo` (train, evaluate, MD on the shipped data) and `make test`.
# Each creates .venv with pinned dependencies (requirements*.lock) on first use.
# `make docs` builds the documentation site into site/ (offline; warnings are errors).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test docs install clean

$(STAMP): pyproject.toml requirements.lock requirements-docs.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -r requirements.lock -r requirements-docs.lock
	$(VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/so3krates demo --output demo_output

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -ra --durations=15 -n 2

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) demo_output site
