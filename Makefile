# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing first (OS packages, kernel headers, .venv).
VENV := .venv
PY := $(VENV)/bin/python
CLUSTER ?= demo

# The image (Dockerfile, or `make image` with no registry: mmdebstrap and an OCI archive).
# It is made again only when what goes into it changed; `make test` runs it under containerd.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_ARCHIVE := build/shoal-$(VERSION).oci.tar
# Its inputs: the build context (the `!` lines of .dockerignore) and the build's own files.
IMAGE_CONTEXT := $(shell sed -n 's|^!\(.*[^/]\)/*$$|\1|p' .dockerignore)
IMAGE_INPUTS := $(shell find Dockerfile .dockerignore scripts/image $(IMAGE_CONTEXT) \
	-path bench/results -prune -o -name __pycache__ -prune -o -type f -print)

.PHONY: setup demo test down bench clean image

setup:
	@scripts/setup.sh

demo: setup
	@$(PY) -m shoal.local.demo --cluster $(CLUSTER)

# The image is built for the tests that run it under containerd, which need root; as
# another user those skip, and so does the build (mmdebstrap's root mode needs root too).
test: setup $(if $(filter 0,$(shell id -u)),image)
	@$(PY) -m pytest -q $(PYTEST_ARGS)

image: $(IMAGE_ARCHIVE)

$(IMAGE_ARCHIVE): $(IMAGE_INPUTS)
	@scripts/image/build.sh

down:
	@$(VENV)/bin/shoal local down --cluster $(CLUSTER)

bench: setup
	@$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
