# `make demo` and `make test` work on a fresh machine: they build .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-uvloop install lint typecheck schemas docs bench clean fuzz stress

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

# The same suite on uvloop (tests/conftest.py: --loop); CI runs it after `make test`.
test-uvloop: install
	$(PY) -P -m pytest -q --loop uvloop

# The fuzz targets of tests/fuzz run bounded under `make test` (profile taps-ci); here with
# TAPS_FUZZ=1, FUZZ_FACTOR times the examples (minutes), then atheris' coverage-guided runs
# of the same contracts for FUZZ_SECONDS each when atheris installs (hypothesis-only if not).
FUZZ_FACTOR  ?= 100
FUZZ_SECONDS ?= 60
FUZZ_ART     := .hypothesis/atheris
fuzz: install
	TAPS_FUZZ=1 TAPS_FUZZ_FACTOR=$(FUZZ_FACTOR) $(PY) -P -m pytest -q tests/fuzz \
		--hypothesis-show-statistics
	@if $(PY) -m pip install -q atheris >/dev/null 2>&1; then \
		mkdir -p $(FUZZ_ART) && for t in framing policy env target; do \
			echo "atheris: $$t, $(FUZZ_SECONDS) s"; \
			$(PY) -P tests/fuzz/atheris_targets.py $$t -max_total_time=$(FUZZ_SECONDS) \
				-artifact_prefix=$(FUZZ_ART)/$$t- -print_final_stats=1 2>&1 \
				| grep -E '^(Done|stat::number_of_executed_units|==|SUMMARY)|Error' \
				|| true; \
			if ls $(FUZZ_ART)/$$t-* >/dev/null 2>&1; then \
				echo "atheris: $$t crashed; inputs in $(FUZZ_ART)/"; exit 1; fi; \
		done; \
	else echo "atheris did not install: hypothesis targets only"; fi

# The fault and load suite at its large size (tests/stress/sizing.py reads TAPS_STRESS).
stress: install
	TAPS_STRESS=1 $(PY) -P -m pytest -q tests/stress

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
	$(PY) bench/imports.py
	$(PY) bench/runtime.py
	$(PY) bench/runtime.py --loop uvloop
	$(PY) bench/quic.py
	$(PY) bench/quic.py --loop uvloop
	$(PY) bench/validate.py
	$(PY) bench/httpx_transport.py
	@if [ "$$(id -u)" = 0 ]; then $(PY) bench/multipath.py; \
	else echo "bench/multipath.py needs root (network namespaces): skipped"; fi
	@if [ "$$(id -u)" = 0 ]; then $(PY) bench/resolution.py; \
	else echo "bench/resolution.py needs root (network namespaces): skipped"; fi
	@if [ "$$(id -u)" = 0 ]; then $(PY) bench/rendezvous.py; \
	else echo "bench/rendezvous.py needs root (network namespaces): skipped"; fi

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
