# Weft: `make test` is what CI runs; `make build` builds release binaries.
CARGO ?= cargo

.PHONY: all build test fmt-check lint unit clean

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

clean:
	$(CARGO) clean
