# The few commands people need. Each one sets up what it needs first (deployments/setup.sh).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test test-fast bench bench-chaos bench-viewer lint i18n lock clean

run:            ## set up and start the service on embedded defaults (SQLite, local Prefect, local storage, demo PACS)
	@deployments/setup.sh run
	@$(VENV)/bin/studypub run

test:           ## set up everything the tests need, then run the whole suite (slow end-to-end tests included)
	@deployments/setup.sh test
	@$(PY) -m pytest -p no:cacheprovider

test-fast:      ## the suite without the slow end-to-end tests
	@deployments/setup.sh test
	@$(PY) -m pytest -p no:cacheprovider -m "not slow"

bench:          ## benchmarks (print numbers; not tests)
	@deployments/setup.sh test
	@$(PY) -m bench.publish
	@$(PY) -m bench.api_latency
	@$(PY) -m bench.published_list

bench-viewer:   ## the in-browser viewers on a 500-slice CT: first image, all slices, bytes (Chromium); ~10 min
	@deployments/setup.sh test
	@$(PY) -m bench.viewer

bench-chaos:    ## self-healing under faults (kills, restarts, outages of 90 s) and a burst of 100 requests; ~20 min
	@deployments/setup.sh test
	@$(PY) -m bench.chaos

lint:
	@deployments/setup.sh test
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy

i18n:           ## messages of the code and templates into the five catalogs (.po), compiled (.mo); lists what needs translating
	@deployments/setup.sh test
	@$(PY) -m studypub.i18n.catalogs update

lock:           ## refresh constraints.txt from the current virtualenv
	@$(VENV)/bin/pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
