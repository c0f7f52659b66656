# Image and infrastructure targets. The main Makefile includes this file after defining
# VENV, BIN and the `venv` target:
#
#   include infra/infra.mk
#
# Targets
#   infra-tools                 lint tools (checkov, hadolint, trivy, check-jsonschema) into .venv-infra
#   infra-deps                  test libraries (python-hcl2, jsonschema, docker) into .venv
#   infra-check                 infra/checks.sh + tests/test_infra.py + tests/test_dockerfile.py
#   docker-build-tabular        DOCKER_BUILDKIT=1 docker build -f Dockerfile.tabular, once per
#                               target of TABULAR_TARGETS (worker sync): $(TABULAR_IMAGE)-TARGET:TAG
#   docker-build-tabular-cache  the same with --cache-from $(TABULAR_IMAGE)-TARGET:latest, inline cache
#   image-test                  real build + run of both images on this machine (docker/image-test.sh)
#   bench-image                 build timings and image sizes (bench/image.py -> docs/benchmarks.md)
#
# `make test` gains infra-check, and image-test unless TABULAR_IMAGE_TEST=0.

INFRA_VENV ?= .venv-infra
INFRA_BIN := $(INFRA_VENV)/bin
INFRA_APT_PACKAGES := shellcheck
TABULAR_IMAGE ?= tabular
TABULAR_TAG ?= dev
TABULAR_TARGETS ?= worker sync
TABULAR_IMAGE_TEST ?= 1
# Debian's docker.io client where present: a newer client without buildx cannot use BuildKit.
DOCKER ?= $(shell test -x /usr/bin/docker && echo /usr/bin/docker || echo docker)
DOCKER_BUILD_ARGS ?=
INFRA_PY ?= python3

# Makes tests/test_infra.py fail (not skip) when a library of requirements-infra.lock is missing.
export TABULAR_INFRA_REQUIRED := 1

.PHONY: infra-tools infra-deps infra-apt infra-check docker-build-tabular \
	docker-build-tabular-cache image-test bench-image

$(INFRA_BIN)/python:
	$(INFRA_PY) -m venv $(INFRA_VENV)

$(INFRA_VENV)/.installed: $(INFRA_BIN)/python requirements-infra-tools.lock
	$(INFRA_BIN)/pip install -q -r requirements-infra-tools.lock
	touch $@

infra-tools: $(INFRA_VENV)/.installed infra-apt

infra-apt:
	@missing=""; for p in $(INFRA_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing" >&2; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@command -v terraform >/dev/null || { echo "terraform is not on PATH (needed for terraform fmt -check)" >&2; exit 1; }

$(VENV)/.infra-installed: $(VENV)/.installed requirements-infra.lock
	$(BIN)/pip install -q -c requirements.lock -r requirements-infra.lock
	touch $@

infra-deps: $(VENV)/.infra-installed

infra-check: infra-tools infra-deps
	INFRA_TOOLS_BIN=$(abspath $(INFRA_BIN)) infra/checks.sh
	$(BIN)/pytest -q -p no:cacheprovider tests/test_infra.py tests/test_dockerfile.py

docker-build-tabular:
	@for target in $(TABULAR_TARGETS); do \
	  DOCKER_BUILDKIT=1 $(DOCKER) build -f Dockerfile.tabular --target $$target \
	    -t $(TABULAR_IMAGE)-$$target:$(TABULAR_TAG) $(DOCKER_BUILD_ARGS) . || exit 1; \
	done

docker-build-tabular-cache:
	@for target in $(TABULAR_TARGETS); do \
	  DOCKER_BUILDKIT=1 $(DOCKER) build -f Dockerfile.tabular --target $$target \
	    --cache-from $(TABULAR_IMAGE)-$$target:latest --build-arg BUILDKIT_INLINE_CACHE=1 \
	    -t $(TABULAR_IMAGE)-$$target:$(TABULAR_TAG) -t $(TABULAR_IMAGE)-$$target:latest \
	    $(DOCKER_BUILD_ARGS) . || exit 1; \
	done

# Starts Debian's dockerd (vfs), makes the stand-in base, builds both images, syncs a model with
# the sync image and serves it with the worker image. With the Pub/Sub emulator installed it also
# sends embed and classify jobs through it (docker/image-test.sh).
image-test: infra-deps
	IMAGE_TEST_PYTHON=$(abspath $(BIN)/python) docker/image-test.sh image-test

bench-image: infra-deps
	$(BIN)/python bench/image.py --write docs/benchmarks.md

# `make test` runs the infra checks too; the pytest run needs the infra libraries.
pytest: infra-deps
test: infra-check
ifeq ($(TABULAR_IMAGE_TEST),1)
test: image-test
endif
