# `make demo` and `make test` work on a fresh machine: they build .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck schemas docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/taps-post policy validate policies/examples
	$(VENV)/bin/taps-post policy explain https://video.example \
		--system policies/examples/system-corp-laptop.yaml \
		--app policies/examples/app-video.yaml --app-name video-player \
		--env policies/examples/env-laptop.yaml
	$(PY) -m taps_post.demo

test: $(STAMP) lint typecheck
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Regenerate the checked-in JSON Schemas and the generated docs tables.
schemas: $(STAMP)
	for s in policy env explain; do \
		$(VENV)/bin/taps-post policy schema $$s > schemas/$$s.schema.json; done
	$(PY) -m taps_post.docgen --run-examples

bench: $(STAMP)
	$(PY) bench/decide.py
	$(PY) bench/cli_startup.py
	$(PY) bench/runtime.py
	$(PY) bench/quic.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
