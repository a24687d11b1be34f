# syntax=docker/dockerfile:1
# One image per service, all from this file:
#   docker build --build-arg SERVICE=generic-consumer -t generic-consumer:dev .
# The binary is /usr/local/bin/<SERVICE> (on PATH); run it by name:
#   docker run --rm generic-consumer:dev generic-consumer --help
# The charts set the command. `make images` builds all six.

# The toolchain rust-toolchain.toml pins.
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# rdkafka builds librdkafka from source (make, perl) against OpenSSL and zlib.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential=12.* libssl-dev=3.* zlib1g-dev=1:1.* perl=5.* pkg-config=1.* \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency graph alone: this layer changes only when a manifest or the lock does.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG SERVICE
RUN test -n "${SERVICE}" || { echo "--build-arg SERVICE=<binary> is required" >&2; exit 1; }
COPY --from=planner /src/recipe.json recipe.json
# The dependencies, cached until the recipe changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin "${SERVICE}"
COPY . .
RUN cargo build --release --locked --bin "${SERVICE}" \
    && install -D "target/release/${SERVICE}" "/out/${SERVICE}"

# glibc, libgcc, OpenSSL's runtime and CA certificates; no shell; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG SERVICE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://git.example.com/platform/platform
LABEL org.opencontainers.image.title="${SERVICE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ /usr/local/bin/
USER 65532:65532
