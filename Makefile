# `make demo` and `make test` work on a fresh machine: they build .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint typecheck schemas docs bench clean

# The package is installed, not linked: tests import what `pip install` built (run with -P,
# so the working tree never shadows it), and `install` rebuilds it from the tree each run.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip hatchling
	$(PY) -m pip install -q '.[test]'
	touch $(STAMP)

install: $(STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation --force-reinstall .

demo: install
	$(VENV)/bin/taps-post policy validate policies/examples
	$(VENV)/bin/taps-post policy explain https://video.example \
		--system policies/examples/system-corp-laptop.yaml \
		--app policies/examples/app-video.yaml --app-name video-player \
		--env policies/examples/env-laptop.yaml
	$(PY) -P -m taps_post.demo

test: install lint typecheck
	$(PY) -P -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check taps_post tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Regenerate the checked-in JSON Schemas and the generated docs tables.
schemas: install
	for s in policy env explain; do \
		$(VENV)/bin/taps-post policy schema $$s > schemas/$$s.schema.json; done
	$(PY) -m taps_post.docgen --run-examples

bench: install
	$(PY) bench/decide.py
	$(PY) bench/cli_startup.py
	$(PY) bench/runtime.py
	$(PY) bench/quic.py
	$(PY) bench/validate.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
