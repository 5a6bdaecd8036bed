# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing first (OS packages, kernel headers, .venv).
VENV := .venv
PY := $(VENV)/bin/python
CLUSTER ?= demo

.PHONY: setup demo test down bench clean

setup:
	@scripts/setup.sh

demo: setup
	@$(PY) -m shoal.local.demo --cluster $(CLUSTER)

test: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS)

down:
	@$(VENV)/bin/shoal local down --cluster $(CLUSTER)

bench: setup
	@$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
