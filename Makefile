# Weft: `make test` is what CI runs; `make build` builds release binaries.
CARGO ?= cargo

.PHONY: all build test fmt-check lint unit crds clean

all: build

build:
	$(CARGO) build --workspace --release --bins

test: fmt-check lint unit

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
