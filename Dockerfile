# syntax=docker/dockerfile:1
# One image for every service: the `ridehail` binary, whose command picks the service
# (`edge`, `ride-worker`, `user-worker`, `topics apply`, `migrate up`, ...). docs/deployment.md.
#
# Stages: chef (toolchain + cargo-chef) -> planner (the dependency recipe) -> builder (dependencies
# cooked in a layer of their own, cached until Cargo.lock or a manifest changes; then the workspace)
# -> runtime (Debian slim, the binary, a non-root user; no compiler, no source, no secret).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
# rdkafka builds librdkafka (make, a C/C++ compiler) and links the system OpenSSL.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.71
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin ridehail
COPY . .
RUN cargo build --release --locked --bin ridehail \
    && cp target/release/ridehail /usr/local/bin/ridehail

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# libssl3 for Kafka TLS and SASL; CA certificates for every TLS connection. Versions come with the
# pinned Debian release (rebuild the image for security updates).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/ridehail --shell /usr/sbin/nologin ridehail \
    && mkdir -p /var/lib/ridehail \
    && chown ridehail:ridehail /var/lib/ridehail
COPY --from=builder /usr/local/bin/ridehail /usr/local/bin/ridehail
USER 10001:10001
WORKDIR /var/lib/ridehail
# Production unless told otherwise: no generated keys, JSON logs, TLS to other hosts required.
ENV RIDEHAIL__ENVIRONMENT=production \
    RIDEHAIL__DATA_DIR=/var/lib/ridehail \
    RIDEHAIL__HTTP__BIND=0.0.0.0:8080 \
    RIDEHAIL__HTTP__ADMIN_BIND=0.0.0.0:9090
# 8080: the edge (API, /health/*, /metrics); 9090: a worker's admin listener (/health/*, /metrics).
EXPOSE 8080 9090
# The services drain on SIGTERM (shutdown_grace_seconds), which is also Docker's default.
STOPSIGNAL SIGTERM
# `ridehail probe` GETs RIDEHAIL_PROBE_URL (the edge's liveness by default; a worker sets its admin
# port's) and exits 0 on a 2xx: the image needs no curl.
ENV RIDEHAIL_PROBE_URL=http://127.0.0.1:8080/health/live
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["ridehail", "probe"]
ENTRYPOINT ["ridehail"]
CMD ["edge"]
