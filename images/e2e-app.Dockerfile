# syntax=docker/dockerfile:1
#
# The sample application of the real-cluster suite (e2e/tests/cluster.rs):
# `weft-e2e-app`, distroless, non-root. `make images-e2e` builds it.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p weft-e2e --bin weft-e2e-app \
    && install -D -m 0755 target/release/weft-e2e-app /out/weft-e2e-app

FROM ${RUNTIME_IMAGE} AS app
COPY --from=build /out/weft-e2e-app /usr/local/bin/weft-e2e-app
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/weft-e2e-app"]
